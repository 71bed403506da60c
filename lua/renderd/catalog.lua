-- renderd.catalog: what the catalog holds for raster layers, asked of the
-- daemon (protocol CATALOG, renderd/catalog/service.py): nginx reads no
-- database itself.
--
--   local catalog = require "renderd.catalog"
--   catalog.configure({ ttl = 10, locks = shm, timeout_ms = 2000, layers = by_name })
--   local ok, status, msg = catalog.check(t)  -- a tile set of a layer with keys:
--       -- true if the catalog holds that key combination; else nil, 404
--       -- (it does not) or nil, 503 (the daemon cannot say and nothing is known)
--   local list, err = catalog.combinations(name)  -- { {v1, ..., vn}, ... } as check knows them
--   catalog.changed(layer)   -- an ingest changed the layer's datasets (purge)
--   catalog.serve()          -- GET /datasets/{layer}.json[?KEY=VALUE&limit=N&page=P],
--                            -- /metadata/{layer}/{v1}/.../{vn}.json,
--                            -- /tiles/{layer}/{v1}/.../{vn}.json (TileJSON)
--
-- Key combinations are kept per nginx worker and asked for again after
-- `ttl` seconds, or at once after a purge of the layer (a shared-dict
-- stamp); while the daemon does not answer, the last ones known stay in
-- use. The documents are asked for on each request: an ingest shows at
-- once, without a restart.

local cjson = require "cjson.safe"
local client = require "renderd.client"
local coalesce = require "renderd.coalesce"
local path = require "renderd.path"
local reply = require "renderd.reply"

local ngx_var = ngx.var
local ngx_header = ngx.header
local now = ngx.now
local update_time = ngx.update_time
local get_method = ngx.req.get_method
local get_uri_args = ngx.req.get_uri_args
local match = string.match
local gmatch = string.gmatch
local concat = table.concat
local type = type
local tonumber = tonumber
local tostring = tostring
local pairs = pairs
local ipairs = ipairs

local _M = { _VERSION = "0.1.0" }

local ttl, locks, timeout_ms, layers
local known = {}     -- per worker: layer name -> { set = { ["v1/v2"] = true }, at = seconds }

function _M.configure(opts)
    ttl, locks, timeout_ms, layers = opts.ttl, opts.locks, opts.timeout_ms, opts.layers
end

-- the daemon's answer to a question: the decoded JSON, or nil, err
local function ask(question)
    local reply_frames, err = client.call("CATALOG", { cjson.encode(question) }, timeout_ms)
    if not reply_frames then
        return nil, err
    end
    if reply_frames[2] ~= "OK" then
        return nil, "CATALOG answered " .. tostring(reply_frames[2]) .. " " .. tostring(reply_frames[4])
    end
    local doc = cjson.decode(reply_frames[4] or "")
    if type(doc) ~= "table" then
        return nil, "CATALOG answer is not JSON"
    end
    return doc, reply_frames[4]
end

local function fetch_keys(layer)
    local doc, err = ask({ op = "keys", layer = layer })
    if not doc then
        return nil, err
    end
    local set, list = {}, {}
    for _, values in ipairs(type(doc.values) == "table" and doc.values or {}) do
        if type(values) == "table" then
            set[concat(values, "/")] = true
            list[#list + 1] = values
        end
    end
    update_time()
    return { set = set, list = list, at = now() }
end

-- what is known of a layer's key combinations, asked again when old or
-- purged; or nil, err when the daemon cannot say and nothing is known
local function combinations(layer)
    local k = known[layer]
    update_time()
    local stamp = locks:get("cv|" .. layer)
    if not k or now() - k.at > ttl or (stamp and stamp >= k.at) then
        local got, err = coalesce.run("cat|" .. layer, timeout_ms / 1000 + 0.5, fetch_keys, layer)
        if got then
            known[layer], k = got, got
        elseif not k then
            return nil, "the catalog cannot be asked: " .. tostring(err)
        end
    end
    return k
end

--- See the module comment.
function _M.check(t)
    local k, err = combinations(t.layer.name)
    if not k then
        return nil, 503, err
    end
    if k.set[concat(t.values, "/")] then
        return true
    end
    return nil, 404, "unknown key combination"
end

--- The key combinations the catalog holds for a layer with keys: a list of
-- lists of values (in the catalog's order), or nil, err (as check's 503).
function _M.combinations(layer)
    local k, err = combinations(layer)
    return k and k.list, err
end

--- See the module comment.
function _M.changed(layer)
    update_time()
    locks:set("cv|" .. layer, now())
end

local function answer_doc(question, layer, base)
    local doc, text = ask(question)
    if not doc then
        return reply.plain(503, "catalog unavailable", nil, layer)
    end
    if doc.status == 404 then
        return reply.plain(404, tostring(doc.error or "not found"), nil, layer)
    end
    if base then
        text = reply.with_base(text)
    end
    return reply.json(text, layer)
end

local function datasets(layer)
    local args = get_uri_args(32)
    local where, q = {}, { op = "datasets", layer = layer }
    for key, v in pairs(args) do
        if key == "limit" or key == "page" then
            q[key] = tonumber(v)
            if not q[key] then
                return reply.plain(400, key .. " must be a number")
            end
        elseif type(v) ~= "string" or not path.is_tileset("x/" .. key) or not path.is_tileset("x/" .. v) then
            return reply.plain(400, "malformed KEY=VALUE")
        else
            where[key] = v
        end
    end
    q.where = where
    return answer_doc(q, layers[layer])
end

--- content_by_lua of /datasets/ and /metadata/, and of /tiles/ for a
-- tile set's TileJSON.
function _M.serve()
    local method = get_method()
    if method ~= "GET" and method ~= "HEAD" then
        ngx_header["Allow"] = "GET, HEAD"
        return reply.plain(405, "method not allowed")
    end
    local uri = ngx_var.uri
    local kind, name = match(uri, "^/(%a+)/(.+)%.json$")
    if not kind or not path.is_tileset(name) then
        return reply.plain(400, "malformed path")
    end
    local base, rest = match(name, "^([^/]+)(.*)$")
    local layer = layers[base]
    if not layer then
        return reply.plain(404, "unknown layer")
    end
    if kind == "datasets" and rest == "" then
        return datasets(base)
    end
    local values = {}
    for v in gmatch(rest, "/([^/]+)") do
        values[#values + 1] = v
    end
    if (kind ~= "metadata" and kind ~= "tiles") or #values ~= #layer.keys then
        return reply.plain(404, "no such document")
    end
    return answer_doc({ op = kind == "tiles" and "tilejson" or "metadata", layer = base, values = values },
                      layer, kind == "tiles")
end

return _M
