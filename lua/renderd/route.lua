-- renderd.route: the key the router hashes to pick a cache node
-- (`renderd-py nginx-conf --router`, nginx/router.tmpl).
--
--   init_by_lua_block { require("renderd.route").init("/path/route.json") }
--   set_by_lua_block $rpy_route { return require("renderd.route").key(ngx.var.request_uri) }
--
-- route.json: {"layers": [...]}, the layers of the runtime JSON (name,
-- minzoom, maxzoom, metatile, ext, keys). A tile's key is its metatile,
-- "TILESET/Z/X0/Y0", so every tile of a metatile goes to the same node
-- (an OGC API tile URL too: it names the same tile as its /tiles/ URL);
-- anything else (TileJSON, documents, malformed paths) is keyed by its path
-- without the query string, and the node answers it as usual.

local cjson = require "cjson.safe"
local path = require "renderd.path"

local find = string.find
local sub = string.sub
local match = string.match
local concat = table.concat
local decode_args = ngx.decode_args

local OGC_TILE = "^/ogcapi/collections/([%w_%-]+)/map/tiles/WebMercatorQuad/(%d+)/(%d+)/(%d+)"

local _M = { _VERSION = "0.1.0" }

local layers

function _M.init(file)
    local f, err = io.open(file, "rb")
    if not f then
        error("renderd.route: cannot read " .. file .. ": " .. tostring(err))
    end
    local text = f:read("*a")
    f:close()
    local c = cjson.decode(text)
    if type(c) ~= "table" or type(c.layers) ~= "table" then
        error("renderd.route: " .. file .. " is not a route file (no layers)")
    end
    layers = {}
    for _, l in ipairs(c.layers) do
        layers[l.name] = l
    end
end

-- the /tiles/ path of an OGC API tile URL, or nil
local function ogc_path(uri)
    local name, z, row, col = match(uri, OGC_TILE)
    local layer = name and layers[name]
    if not layer then
        return nil
    end
    local parts = { "/tiles/", name }
    if #layer.keys > 0 then
        local q = match(uri, "%?(.*)$")
        local args = q and decode_args(q, path.MAX_KEYS + 8) or {}
        for _, k in ipairs(layer.keys) do
            if type(args[k]) ~= "string" then
                return nil
            end
            parts[#parts + 1] = "/" .. args[k]
        end
    end
    parts[#parts + 1] = "/" .. z .. "/" .. col .. "/" .. row .. "." .. layer.ext
    return concat(parts)
end

function _M.key(uri)
    local t = path.parse(uri, layers)
    if not t then
        local tiles = ogc_path(uri)
        t = tiles and path.parse(tiles, layers)
    end
    if t then
        return t.tileset .. "/" .. t.z .. "/" .. t.x0 .. "/" .. t.y0
    end
    local q = find(uri, "?", 1, true)
    return q and sub(uri, 1, q - 1) or uri
end

return _M
