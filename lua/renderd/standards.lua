-- renderd.standards: the WMTS 1.0.0 (RESTful) and OGC API - Tiles
-- interfaces, over the same tiles and cache as /tiles/.
--
--   location = /wmts/1.0.0/WMTSCapabilities.xml {
--       content_by_lua_block { require("renderd.standards").wmts() } }
--   location /ogcapi/ { content_by_lua_block { require("renderd.standards").ogcapi() } }
--
-- The documents are written by `renderd-py nginx-conf` into the runtime
-- config's `docs_dir` (renderd/nginx/standards.py): they depend on the
-- configuration only, except the values of a raster layer's keys in the
-- WMTS capabilities (its Dimensions), which are filled in per request from
-- the catalog's key combinations (renderd.catalog: kept catalog_ttl
-- seconds, asked again at once after an ingest's purge). A layer with keys
-- of which the catalog holds no tile set is left out of the capabilities.
--
-- OGC API tiles, /ogcapi/collections/{layer}/map/tiles/WebMercatorQuad/
-- {tileMatrix}/{tileRow}/{tileCol}[?KEY=VALUE&...] (a value for each of the
-- layer's keys), are the tiles /tiles/{layer}/{v1}/.../{z}/{x}/{y}.{ext},
-- checked by renderd.path and answered by renderd.front (same statuses).

local runtime = require "renderd.runtime"
local path = require "renderd.path"
local catalog = require "renderd.catalog"
local front = require "renderd.front"
local reply = require "renderd.reply"

local ngx_var = ngx.var
local ngx_header = ngx.header
local get_method = ngx.req.get_method
local get_uri_args = ngx.req.get_uri_args
local io_open = io.open
local match = string.match
local gmatch = string.gmatch
local find = string.find
local gsub = string.gsub
local sub = string.sub
local concat = table.concat
local sort = table.sort
local type = type
local tostring = tostring
local tonumber = tonumber
local ipairs = ipairs

local _M = { _VERSION = "0.1.0" }

local WMTS_CAPABILITIES = "/wmts/1.0.0/WMTSCapabilities.xml"
local MATRIX_SET = "WebMercatorQuad"
local OPENAPI = "application/vnd.oai.openapi+json;version=3.0"   -- /ogcapi/api
local docs = {}        -- per worker: file below docs_dir -> its text (found ones only)

-- the text of a document written by nginx-conf, or nil
local function document(rel)
    local text = docs[rel]
    if text then
        return text
    end
    local rt = runtime.get()
    if not rt or not rt.docs_dir or rt.docs_dir == "" then
        return nil
    end
    local f = io_open(rt.docs_dir .. rel, "rb")
    if not f then
        return nil
    end
    text = f:read("*a")
    f:close()
    docs[rel] = text
    return text
end

local function get_only()
    local method = get_method()
    if method ~= "GET" and method ~= "HEAD" then
        ngx_header["Allow"] = "GET, HEAD"
        reply.plain(405, "method not allowed")
        return false
    end
    return true
end

-- the distinct values of key i among the combinations, sorted
local function values_of(list, i)
    local seen, out = {}, {}
    for _, values in ipairs(list) do
        local v = values[i]
        if v and not seen[v] then
            seen[v] = true
            out[#out + 1] = v
        end
    end
    sort(out)
    return out
end

--- content_by_lua of /wmts/1.0.0/WMTSCapabilities.xml.
function _M.wmts()
    if not get_only() then
        return
    end
    local text = document(WMTS_CAPABILITIES)
    if not text then
        return reply.plain(404, "no WMTS capabilities (run renderd-py nginx-conf)")
    end
    -- each layer with keys: its Dimensions' values, or left out (asked
    -- first: a gsub callback cannot wait for the daemon)
    local combos = {}
    for name in gmatch(text, "<!%-%-@RPY_LAYER:([%w_%-]+)@%-%->") do
        local list, err = catalog.combinations(name)
        if not list then
            ngx_header["Retry-After"] = tostring(runtime.get().retry_after)
            return reply.plain(503, "catalog unavailable: " .. tostring(err))
        end
        combos[name] = list
    end
    text = gsub(text, "<!%-%-@RPY_LAYER:([%w_%-]+)@%-%->(.-)<!%-%-@RPY_END:%1@%-%->", function(name, layer)
        local list = combos[name]
        if #list == 0 then
            return ""
        end
        local last = list[#list]
        layer = gsub(layer, "<Default>@RPY_DEFAULT:[%w_%-]+:(%d+)@</Default>", function(i)
            return "<Default>" .. tostring(last[tonumber(i)]) .. "</Default>"
        end)
        return (gsub(layer, "<Value>@RPY_VALUES:[%w_%-]+:(%d+)@</Value>", function(i)
            return "<Value>" .. concat(values_of(list, tonumber(i)), "</Value><Value>") .. "</Value>"
        end))
    end)
    return reply.document(reply.with_base(text), "application/xml")
end

-- an OGC API tile: the same tile as /tiles/...
local function ogc_tile(name, set, zs, rows, cols)
    local rt, layers = runtime.get()
    local layer = layers[name]
    if not layer or layer.tile_size ~= 256 then
        return reply.plain(404, "unknown collection")
    end
    if set ~= MATRIX_SET then
        return reply.plain(404, "unknown tile matrix set", nil, layer)
    end
    local uri = { "/tiles/", name }
    if #layer.keys > 0 then
        local args = get_uri_args(path.MAX_KEYS + 8)
        for _, key in ipairs(layer.keys) do
            local v = args[key]
            if type(v) ~= "string" then
                return reply.plain(400, "give the key " .. key .. "=VALUE", nil, layer)
            end
            uri[#uri + 1] = "/" .. v
        end
    end
    uri[#uri + 1] = "/" .. zs .. "/" .. cols .. "/" .. rows .. "." .. layer.ext
    local t, status, msg = path.parse(concat(uri), layers)
    if not t then
        return reply.plain(status, msg, nil, layer)
    end
    return front.answer(t, rt)
end

--- content_by_lua of /ogcapi/: the documents, and tiles.
function _M.ogcapi()
    if not get_only() then
        return
    end
    local p = match(ngx_var.request_uri, "^[^?]*")
    if #p > path.MAX_URI then
        return reply.plain(400, "URI too long")
    end
    local name, set, zs, rows, cols = match(p,
        "^/ogcapi/collections/([^/]+)/map/tiles/([^/]+)/([^/]+)/([^/]+)/([^/]+)$")
    if name then
        if find(zs .. rows .. cols, "%D") then
            return reply.plain(400, "malformed tile path")
        end
        return ogc_tile(name, set, zs, rows, cols)
    end
    if find(p, "[^A-Za-z0-9_%-/]") or find(p, "//", 1, true) then
        return reply.plain(404, "not found")
    end
    local rel = sub(p, #"/ogcapi/" + 1)
    if rel == "" then
        rel = "index"
    end
    rel = gsub(rel, "/$", "")
    local text = document("/ogcapi/" .. rel .. ".json")
    if not text then
        return reply.plain(404, "not found")
    end
    return reply.document(reply.with_base(text), rel == "api" and OPENAPI or "application/json")
end

return _M
