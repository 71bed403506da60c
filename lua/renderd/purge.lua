-- renderd.purge: tell the hot cache that metatiles changed in the store.
--
--   # in the loopback-only metrics server:
--   location = /purge {
--       client_max_body_size 16m;
--       client_body_buffer_size 1m;
--       content_by_lua_block { require("renderd.purge").serve() }
--   }
--
-- POST /purge?layer=NAME&mode=dirty|delete with a body of "z/x/y" lines
-- (NAME: a tile set, LAYER/VALUE/... for a layer with keys)
-- (the expiry list format of osm2pgsql and mod_tile): each line stands for
-- the metatile holding that tile. "dirty" (the default) marks the hot
-- copies of those metatiles stale: they are served at once as X-Cache:
-- STALE and the first request queues a re-render; "delete" drops them, so
-- the next request reads the store (or renders). `renderd-py expire` and
-- `seed` call it after changing the store (docs/http.md, docs/tools.md).
--
-- From another host (the metrics server listens beyond loopback only with
-- [http] purge_token set), the request must carry that token in the
-- X-Purge-Token header; else 403.
--
-- Answers 200 with JSON {"metatiles": distinct metatiles named,
-- "tiles": hot-cache entries marked or dropped, "malformed": lines that
-- are not a tile of the layer's grid}; 400 for an unknown layer or mode,
-- 405 for another method.

local runtime = require "renderd.runtime"
local cache = require "renderd.cache"
local fill = require "renderd.fill"
local catalog = require "renderd.catalog"
local path = require "renderd.path"

local ngx_header = ngx.header
local ngx_print = ngx.print
local ngx_exit = ngx.exit
local ngx_sleep = ngx.sleep
local update_time = ngx.update_time
local get_method = ngx.req.get_method
local get_uri_args = ngx.req.get_uri_args
local read_body = ngx.req.read_body
local get_body_data = ngx.req.get_body_data
local get_body_file = ngx.req.get_body_file
local io_open = io.open
local gmatch = string.gmatch
local match = string.match
local gsub = string.gsub
local find = string.find
local byte = string.byte
local bit = require "bit"
local bor = bit.bor
local bxor = bit.bxor
local select = select
local tonumber = tonumber
local type = type

local _M = { _VERSION = "0.1.0" }

--- Metatiles purged between two yields to the worker's other requests.
_M.BATCH = 200

local function answer(status, body)
    ngx.status = status
    ngx_header["Content-Type"] = status == 200 and "application/json" or "text/plain; charset=utf-8"
    ngx_header["Cache-Control"] = "no-store"
    ngx_print(body)
    return ngx_exit(200)
end

local function loopback(addr)
    return addr == nil or addr == "unix:" or find(addr, "^127%.") ~= nil or addr == "::1"
end

-- the token, compared over its whole length whatever the first difference
local function same(a, b)
    if type(a) ~= "string" or #a ~= #b then
        return false
    end
    local diff = 0
    for i = 1, #a do
        diff = bor(diff, bxor(byte(a, i), byte(b, i)))
    end
    return diff == 0
end

local function body_text()
    read_body()
    local data = get_body_data()
    if data then
        return data
    end
    local file = get_body_file()
    if not file then
        return ""
    end
    local f = io_open(file, "rb")
    if not f then
        return ""
    end
    data = f:read("*a") or ""
    f:close()
    return data
end

--- content_by_lua of `location = /purge`.
function _M.serve()
    if get_method() ~= "POST" then
        ngx_header["Allow"] = "POST"
        return answer(405, "POST a list of z/x/y lines\n")
    end
    local rt, layers = runtime.get()
    if not rt then
        return answer(500, "renderd.front.init() was not called\n")
    end
    if not loopback(ngx.var.remote_addr) and
            (rt.purge_token == "" or not same(ngx.req.get_headers()["X-Purge-Token"], rt.purge_token)) then
        return answer(403, "a purge from another host needs [http] purge_token in X-Purge-Token\n")
    end
    local args = get_uri_args()
    -- a tile set: the layer's name, and for a layer with keys its values
    local name = type(args.layer) == "string" and args.layer or ""
    local base, nvalues = match(name, "^([^/@]*)"), select(2, gsub(name, "/", ""))
    local layer = layers[base]
    local scale = tonumber(match(name, "^[^/@]*@(%d)x"))
    if not layer or nvalues ~= #layer.keys or not path.is_tileset(name)
            or (scale and not layer.scale_set[scale]) then
        return answer(400, "unknown layer\n")
    end
    catalog.changed(base)   -- (an ingest purges too: its layer's key combinations are asked for again)
    local mode = args.mode or "dirty"
    if mode ~= "dirty" and mode ~= "delete" then
        return answer(400, "mode must be dirty or delete\n")
    end
    local seen, metatiles, tiles, malformed = {}, 0, 0, 0
    update_time()
    for line in gmatch(body_text(), "[^\r\n]+") do
        local zs, xs, ys = match(line, "^%s*(%d+)%s*/%s*(%d+)%s*/%s*(%d+)%s*$")
        local z, x, y = tonumber(zs), tonumber(xs), tonumber(ys)
        if not z or z > path.MAX_ZOOM or x >= 2 ^ z or y >= 2 ^ z then
            malformed = malformed + 1
        elseif z >= layer.minzoom and z <= layer.maxzoom then
            local n, x0, y0 = path.metatile(z, x, y, layer.metatile)
            local key = name .. "/" .. z .. "/" .. x0 .. "/" .. y0
            if not seen[key] then
                seen[key] = true
                metatiles = metatiles + 1
                tiles = tiles + cache.purge_metatile(name, z, x0, y0, n, mode)
                fill.forget(name, z, x0, y0)
                if metatiles % _M.BATCH == 0 then
                    ngx_sleep(0)
                end
            end
        end
    end
    return answer(200, '{"metatiles": ' .. metatiles .. ', "tiles": ' .. tiles
                  .. ', "malformed": ' .. malformed .. '}\n')
end

return _M
