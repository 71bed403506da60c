-- renderd.runtime: the runtime config JSON that `renderd-py nginx-conf`
-- writes (renderd/nginx/runtime_json.py): read once in init_by_lua,
-- checked, and handed to every module. Every value comes from a
-- configuration option (docs/configuration.md); nothing here has a
-- default of its own, so a missing or mistyped key stops nginx with its name.
--
--   local runtime = require "renderd.runtime"
--   runtime.init("/path/renderd-py.json")   -- error() on a bad file
--   local rt, layers = runtime.get()        -- the checked config, layers by name
--
-- The JSON (seconds unless said otherwise):
--   {"broker": "tcp://127.0.0.1:5555" | "ipc:///path/broker.sock",
--    "timeout": 30,                  -- [http] timeout: a missing tile's wait
--    "hot_ttl": 300, "retry_after": 5, "log_interval": 10, "metrics_interval": 1,
--    "broker_connect_timeout": 2, "broker_retry": 1, "status_timeout": 2,
--    "store_timeout": 1, "store_retry": 2,          -- Redis, per reply / after a failure
--    "catalog_ttl": 10,              -- seconds a layer's key combinations are kept
--    "render_rate": 0, "render_burst": 20,   -- renders a client may start per second
--                                    -- (0: no limit) and ahead of that rate
--    "cors": "*",                    -- "" for no Access-Control-Allow-Origin
--    "purge_token": "",              -- what /purge asks of other hosts ("": loopback only)
--    "dicts": {"tiles": "rpy_tiles", "locks": "rpy_locks", "metrics": "rpy_metrics"},
--    "store": {"kind": "disk", "path": "/var/cache/renderd-py"}
--           | {"kind": "redis", "host": "127.0.0.1", "port": 6379, "db": 0,
--              "password": null, "prefix": "rpy", "socket": null,
--              "meta_script": "..."},
--    "layers": [{"name": "world", "minzoom": 0, "maxzoom": 12, "metatile": 8,
--                "ext": "png", "content_type": "image/png",
--                "cache_control": "public, max-age=3600", "cors": "*",
--                "tile_size": 256, "keys": [],        -- a raster layer's URL keys
--                "scales": [1, 2]}],                  -- HiDPI: /tiles/.../{y}@2x.{ext}
--    "docs_dir": "/path"}            -- the WMTS and OGC API documents (renderd.standards)

local cjson = require "cjson.safe"
local path = require "renderd.path"
local zmtp = require "renderd.zmtp"
local cache = require "renderd.cache"
local store = require "renderd.store"
local client = require "renderd.client"
local render = require "renderd.render"
local throttle = require "renderd.throttle"
local fill = require "renderd.fill"
local reply = require "renderd.reply"
local catalog = require "renderd.catalog"
local metrics = require "renderd.metrics"
local log = require "renderd.log"

local ngx_shared = ngx.shared
local io_open = io.open
local find = string.find
local gsub = string.gsub
local floor = math.floor
local type = type
local tostring = tostring
local ipairs = ipairs
local pairs = pairs
local error = error

local _M = { _VERSION = "0.1.0" }

local NULL = cjson.null
local rt
local layers = {}

local function need(cond, msg)
    if not cond then
        error("renderd.front: runtime config: " .. msg, 0)
    end
end

-- JSON null as nil, in objects (the runtime config has none in arrays)
local function nulls_to_nil(v)
    if type(v) == "table" then
        for k, x in pairs(v) do
            if x == NULL then
                v[k] = nil
            else
                nulls_to_nil(x)
            end
        end
    end
    return v
end

-- t[key] is a number (above lo, or at least lo with `inclusive`, whole with `int`)
local function number(t, key, where, lo, inclusive, int)
    local v = t[key]
    local name = where .. key
    need(v ~= nil, name .. " missing")
    need(type(v) == "number", name .. " must be a number")
    need(v > lo or (inclusive and v == lo),
         name .. " must be " .. (inclusive and "at least " or "above ") .. lo)
    need(not int or v == floor(v), name .. " must be a whole number")
    return v
end

local function string_(t, key, where)
    local v = t[key]
    need(v ~= nil, where .. key .. " missing")
    need(type(v) == "string", where .. key .. " must be a string")
    return v
end

local function shared(name, what)
    local d = ngx_shared[name]
    if not d then
        error("renderd.front: lua_shared_dict " .. tostring(name) .. " (" .. what .. ") is not declared", 0)
    end
    return d
end

local function check_layer(l, i)
    local where = "layers[" .. i .. "]"
    need(type(l) == "table", where .. " is not an object")
    where = where .. "."
    local name = string_(l, "name", where)
    need(find(name, "^[A-Za-z0-9_%-]+$") and #name <= 64, where .. "name must be letters, digits, _ or -")
    local lo = number(l, "minzoom", where, 0, true, true)
    local hi = number(l, "maxzoom", where, 0, true, true)
    need(lo <= hi and hi <= path.MAX_ZOOM, where .. "minzoom, maxzoom: zooms outside 0.." .. path.MAX_ZOOM)
    local m = number(l, "metatile", where, 1, true, true)
    need(m <= 64, where .. "metatile must be at most 64")
    for _, key in ipairs({ "ext", "content_type", "cache_control", "cors" }) do
        string_(l, key, where)
    end
    need(type(l.keys) == "table" and #l.keys <= path.MAX_KEYS, where .. "keys must be a list of key names")
    for k = 1, #l.keys do
        need(type(l.keys[k]) == "string", where .. "keys must be a list of key names")
    end
    -- the HiDPI scales served (1 alone when not given)
    need(l.scales == nil or type(l.scales) == "table", where .. "scales must be a list of scales")
    l.scale_set = {}
    for _, n in ipairs(l.scales or { 1 }) do
        need(n == 1 or n == 2 or n == 3 or n == 4, where .. "scales must be among 1, 2, 3, 4")
        l.scale_set[n] = true
    end
    return name
end

local function check(c)
    need(type(c) == "table", "not a JSON object")
    local broker = string_(c, "broker", "")
    local ok, err = zmtp.parse_endpoint(broker)
    need(ok, "broker: " .. tostring(err))
    number(c, "timeout", "", 0)
    for _, key in ipairs({ "hot_ttl", "log_interval", "metrics_interval", "broker_connect_timeout",
                           "broker_retry", "status_timeout", "store_timeout", "store_retry",
                           "catalog_ttl" }) do
        number(c, key, "", 0)
    end
    number(c, "render_rate", "", 0, true)
    number(c, "render_burst", "", 0, true, true)
    number(c, "retry_after", "", 0, true, true)
    string_(c, "cors", "")
    string_(c, "purge_token", "")
    need(c.docs_dir == nil or type(c.docs_dir) == "string", "docs_dir must be a string")
    need(type(c.dicts) == "table", "dicts missing")
    local dicts = {}
    for _, key in ipairs({ "tiles", "locks", "metrics" }) do
        dicts[key] = shared(string_(c.dicts, key, "dicts."), key)
    end
    need(type(c.store) == "table", "store missing")
    string_(c.store, "kind", "store.")
    need(type(c.layers) == "table" and #c.layers > 0, "layers missing")
    local by_name = {}
    for i, l in ipairs(c.layers) do
        local name = check_layer(l, i)
        need(not by_name[name], "layer " .. name .. " twice")
        by_name[name] = l
    end
    return by_name, dicts
end

--- Check a decoded runtime config and set every module up with it.
function _M.setup(c)
    local by_name, dicts = check(c)
    local locks = dicts.locks
    local ok, err = store.configure(c, locks)
    need(ok, tostring(err))
    log.configure(locks, c.log_interval)
    -- (a purge is remembered for as long as a fill may be under way)
    cache.configure(dicts.tiles, c.hot_ttl, c.timeout + 10)
    client.configure(c.broker, locks, { connect_timeout = c.broker_connect_timeout * 1000,
                                        retry = c.broker_retry })
    metrics.configure(dicts.metrics, c.dicts, c.metrics_interval, c.status_timeout * 1000)
    fill.configure(locks)
    render.configure({ locks = locks, timeout = c.timeout })
    throttle.configure(locks, c.render_rate, c.render_burst)
    reply.configure({ cors = c.cors, retry_after = c.retry_after })
    catalog.configure({ ttl = c.catalog_ttl, locks = locks, timeout_ms = c.status_timeout * 1000,
                        layers = by_name })
    rt, layers = c, by_name
    return true
end

--- Read the runtime config JSON at `file` and apply it (init_by_lua).
function _M.init(file)
    local f, err = io_open(file, "rb")
    if not f then
        error("renderd.front: cannot read runtime config: " .. tostring(err), 0)
    end
    local text = f:read("*a")
    f:close()
    local c
    c, err = cjson.decode(text)
    if c == nil then
        -- (the decoder's "character" is a byte offset)
        error("renderd.front: runtime config " .. file .. ": not JSON: "
              .. gsub(tostring(err), "at character", "at byte"), 0)
    end
    return _M.setup(nulls_to_nil(c))
end

--- The checked runtime config and its layers by name (nil before init).
function _M.get()
    return rt, layers
end

return _M
