-- renderd.front: the tile handler of the nginx front.
--
-- Interface with `renderd-py nginx-conf` (renderd/nginx.py). http level:
--
--   lua_package_path "{lua_dir}/?.lua;/usr/share/lua/5.1/?.lua;;";
--   lua_shared_dict rpy_tiles 64m;     # hot tiles (size to taste)
--   lua_shared_dict rpy_locks 1m;      # render locks, outcomes, flags, log limits
--   lua_shared_dict rpy_metrics 1m;    # counters
--   lua_socket_log_errors off;         # else every refused connect is an [error] line
--   resolver ...;                      # only if broker or Redis is a host name
--   init_by_lua_block { require("renderd.front").init("/path/runtime.json") }
--
-- server level:
--   location /tiles/ { content_by_lua_block { require("renderd.front").serve() } }
--   location ~ ^/tiles/([A-Za-z0-9_-]+)\.json$ {    # TileJSON files
--       header_filter_by_lua_block { require("renderd.front").tilejson_header_filter() }
--   }
--   # loopback-only server:
--   location = /metrics { content_by_lua_block { require("renderd.metrics").serve() } }
--   location = /purge { content_by_lua_block { require("renderd.purge").serve() } }
--
-- The runtime config JSON (written by nginx-conf):
--   {"broker": "tcp://127.0.0.1:5555" | "ipc:///path/broker.sock",
--    "timeout": 30,                       -- seconds a missing tile waits
--    "store": {"kind": "disk", "path": "/var/cache/renderd-py"}
--           | {"kind": "redis", "host": "127.0.0.1", "port": 6379, "db": 0,
--              "password": null, "prefix": "rpy", "socket": null,
--              "meta_script": "..."},
--    "layers": [{"name": "world", "minzoom": 0, "maxzoom": 12, "metatile": 8,
--                "ext": "png", "content_type": "image/png",
--                "cache_control": "public, max-age=3600", "tile_size": 256}],
--    "dicts": {"tiles": "rpy_tiles", "locks": "rpy_locks", "metrics": "rpy_metrics"}}
-- Optional keys (defaults): "hot_ttl" 300 (seconds a hot-cache entry counts
-- as fresh; afterwards it is only a fallback when store and broker fail),
-- "retry_after" 5 (the 503's Retry-After), "log_interval" 10 (seconds
-- between two error-log lines of one cause), store "timeout" 1 (seconds per
-- Redis operation), store "retry" 2 (seconds Redis is skipped after a
-- failure), "broker_retry" 1 (the same for the broker's connect), "cors"
-- "*" (Access-Control-Allow-Origin of tiles and errors, "" for none; a
-- layer's own "cors" wins), "metrics_interval" 1 (seconds between two
-- flushes of a worker's counters into the metrics dict).
--
-- Redis dict misses: the index up to the tile's entry, then the tile's blob
-- unless the worker keeps it (plain commands on the worker's pipelined
-- connection, renderd.pipeline) answer the request; the whole metatile goes
-- into the hot cache afterwards, from a timer, once across workers (lock
-- "f|layer/z/x0/y0", as for disk), with the script the runtime config holds
-- (store "meta_script", renderd/store/redis.py's META_SCRIPT).
--
-- Request path: validate (renderd.path; 400/404/405 before any I/O) ->
-- hot cache (X-Cache: HIT) -> store (STORE, or STALE plus a background
-- re-render at priority 1) -> one RENDER per metatile (RENDER) -> on BUSY,
-- FAIL, timeout or errors: an expired hot-cache copy (STALE) or 503 with
-- Retry-After. Disk hits: the metatile's pack file is read here (renderd.pack:
-- its header, the tile's entry and record, the bytes if kept in the pack)
-- and, for a tile in the shared pool, its pool file; a pool file gone
-- meanwhile (the pack was replaced and the file collected) makes the pack be
-- read once more, then the tile is rendered. A pack of an earlier format
-- counts as absent (a warning, rate-limited). An empty entry (no tile there:
-- 32 zeros in an index, 0 in a pack) is a 404 "no tile" with the layer's
-- Cache-Control.

local json = require "renderd.json"
local path = require "renderd.path"
local index = require "renderd.index"
local pack = require "renderd.pack"
local cache = require "renderd.cache"
local store = require "renderd.store"
local client = require "renderd.client"
local render = require "renderd.render"
local metrics = require "renderd.metrics"
local log = require "renderd.log"

local ngx_var = ngx.var
local ngx_header = ngx.header
local ngx_print = ngx.print
local ngx_exit = ngx.exit
local send_headers = ngx.send_headers
local HTTP_OK = ngx.HTTP_OK
local get_method = ngx.req.get_method
local req_start = ngx.req.start_time
local http_time = ngx.http_time
local parse_http_time = ngx.parse_http_time
local timer_at = ngx.timer.at
local ngx_shared = ngx.shared
local ERR = ngx.ERR
local WARN = ngx.WARN
local io_open = io.open
local find = string.find
local sub = string.sub
local type = type
local tostring = tostring
local tonumber = tonumber
local ipairs = ipairs
local error = error
local pcall = pcall
local pairs = pairs

local _M = { _VERSION = "0.1.0" }

local cfg
local layers = {}
local locks
local fill_from_redis     -- (below, with the Redis store)

local CONTENT_TYPES = { png = "image/png", jpg = "image/jpeg", jpeg = "image/jpeg", webp = "image/webp" }

-- config ------------------------------------------------------------------------

local function need(cond, msg)
    if not cond then
        error("renderd.front: runtime config: " .. msg, 3)
    end
end

local function shared(name, what)
    local d = ngx_shared[name]
    if not d then
        error("renderd.front: lua_shared_dict " .. tostring(name) .. " (" .. what .. ") is not declared", 3)
    end
    return d
end

--- Validate a decoded runtime config and set every module up.
function _M.setup(c)
    need(type(c) == "table", "not a JSON object")
    need(type(c.broker) == "string", "broker missing")
    local ok, err = pcall(client.configure, c.broker, nil)
    need(ok, "broker: " .. tostring(err))
    c.timeout = tonumber(json.value(c.timeout)) or 30
    need(c.timeout > 0, "timeout must be positive")
    c.hot_ttl = tonumber(json.value(c.hot_ttl)) or 300
    c.retry_after = tonumber(json.value(c.retry_after)) or 5
    c.log_interval = tonumber(json.value(c.log_interval)) or 10
    c.cors = json.value(c.cors) or "*"
    need(type(c.cors) == "string", "cors must be a string")
    c.metrics_interval = tonumber(json.value(c.metrics_interval)) or 1
    need(c.metrics_interval > 0, "metrics_interval must be positive")
    local d = json.value(c.dicts) or {}
    c.dicts = { tiles = d.tiles or "rpy_tiles", locks = d.locks or "rpy_locks",
                metrics = d.metrics or "rpy_metrics" }
    need(type(c.store) == "table", "store missing")
    for k, v in pairs(c.store) do
        c.store[k] = json.value(v)
    end
    need(type(c.layers) == "table" and #c.layers > 0, "layers missing")
    local by_name = {}
    for i, l in ipairs(c.layers) do
        local where = "layers[" .. i .. "]"
        need(type(l) == "table", where .. " is not an object")
        need(type(l.name) == "string" and find(l.name, "^[A-Za-z0-9_%-]+$") and #l.name <= 64,
             where .. ".name must be letters, digits, _ or -")
        l.minzoom = tonumber(json.value(l.minzoom)) or 0
        l.maxzoom = tonumber(json.value(l.maxzoom)) or 19
        need(l.minzoom >= 0 and l.maxzoom <= path.MAX_ZOOM and l.minzoom <= l.maxzoom, where .. " zooms")
        l.metatile = tonumber(json.value(l.metatile)) or 8
        need(l.metatile >= 1 and l.metatile <= 64, where .. ".metatile")
        l.ext = json.value(l.ext) or "png"
        l.content_type = json.value(l.content_type) or CONTENT_TYPES[l.ext] or "application/octet-stream"
        l.cache_control = json.value(l.cache_control)
        l.cors = json.value(l.cors) or c.cors
        need(type(l.cors) == "string", where .. ".cors must be a string")
        need(not by_name[l.name], "layer " .. l.name .. " twice")
        by_name[l.name] = l
    end
    local tiles = shared(c.dicts.tiles, "tiles")
    locks = shared(c.dicts.locks, "locks")
    local m = shared(c.dicts.metrics, "metrics")
    log.configure(locks, c.log_interval)
    -- (a purge is remembered for as long as a fill may be under way)
    cache.configure(tiles, c.hot_ttl, c.timeout + 10)
    store.configure(c.store, locks)
    client.configure(c.broker, locks, { retry = tonumber(json.value(c.broker_retry)) or 1 })
    metrics.configure(m, c.dicts, c.metrics_interval)
    render.configure({
        locks = locks, timeout = c.timeout,
        on_render = metrics.observe_render,
        on_evict = function(n) metrics.incr("renderd_cache_evictions_total", nil, n) end,
        -- Redis: a rendered metatile is read back from the store for the hot
        -- cache, after the answer (a smaller reply from the broker)
        fill = store.kind == "redis" and function(t) return fill_from_redis(false, t) end or nil,
    })
    cfg, layers = c, by_name
    return true
end

--- init_by_lua: read and apply the runtime config JSON at `file`.
function _M.init(file)
    local f, err = io_open(file, "rb")
    if not f then
        error("renderd.front: cannot read runtime config: " .. tostring(err), 2)
    end
    local text = f:read("*a")
    f:close()
    local c
    c, err = json.decode(text)
    if not c then
        error("renderd.front: runtime config " .. file .. ": " .. err, 2)
    end
    return _M.setup(c)
end

function _M.config()
    return cfg, layers
end

-- responses -------------------------------------------------------------------

-- send status and body (none for HEAD and 304) with the headers set so far;
-- never ngx.exit(status >= 300), which would replace them with nginx's own
local function finish(status, body)
    if status ~= HTTP_OK then
        ngx.status = status
    end
    if body and status ~= 304 then
        ngx_header["Content-Length"] = #body
        if get_method() ~= "HEAD" then
            ngx_print(body)
            return ngx_exit(HTTP_OK)
        end
    end
    send_headers()
    return ngx_exit(HTTP_OK)
end

-- Access-Control-Allow-Origin of a layer's responses (of the [http]
-- setting when the layer is not known); "" sends none
local function allow_origin(layer)
    local v = layer and layer.cors or cfg.cors
    if v ~= "" then
        ngx_header["Access-Control-Allow-Origin"] = v
    end
end

local function plain(status, msg, xcache, layer)
    metrics.request(status, xcache)
    ngx_header["Content-Type"] = "text/plain; charset=utf-8"
    ngx_header["Cache-Control"] = "no-store"
    allow_origin(layer)
    if xcache then
        ngx_header["X-Cache"] = xcache
    end
    return finish(status, msg .. "\n")
end

-- Last-Modified values, per worker (a metatile's tiles share theirs)
local dates, ndates = {}, 0

local function http_date(rendered)
    local d = dates[rendered]
    if not d then
        if ndates >= 4096 then
            dates, ndates = {}, 0
        end
        d = http_time(rendered)
        dates[rendered] = d
        ndates = ndates + 1
    end
    return d
end

local function tile_headers(layer, hash, rendered, xcache)
    ngx_header["Content-Type"] = layer.content_type
    if layer.cache_control then
        ngx_header["Cache-Control"] = layer.cache_control
    end
    if hash then
        ngx_header["ETag"] = '"' .. hash .. '"'
    end
    if rendered and rendered > 0 then
        ngx_header["Last-Modified"] = http_date(rendered)
    end
    if layer.cors ~= "" then
        ngx_header["Access-Control-Allow-Origin"] = layer.cors
    end
    ngx_header["X-Cache"] = xcache
end

-- the request's validators match this tile? (nginx 1.22's $http_ variables
-- hold the first of repeated headers only: a second If-None-Match line is
-- not looked at, so such a request gets a 200)
local function not_modified(hash, rendered)
    local inm = ngx_var.http_if_none_match
    if inm then
        return inm == "*" or (hash ~= nil and find(inm, '"' .. hash .. '"', 1, true) ~= nil)
    end
    local ims = ngx_var.http_if_modified_since
    if ims and rendered and rendered > 0 then
        local t = parse_http_time(ims)
        return t ~= nil and t >= rendered
    end
    return false
end

local function empty(t, rendered, xcache)
    -- the renderer stored no tile here (an "EMPTY" index entry)
    local l = t.layer
    metrics.request(404, xcache)
    ngx_header["Content-Type"] = "text/plain; charset=utf-8"
    if l.cache_control then
        ngx_header["Cache-Control"] = l.cache_control
    end
    allow_origin(l)
    ngx_header["X-Cache"] = xcache
    if rendered and rendered > 0 then
        ngx_header["Last-Modified"] = http_date(rendered)
    end
    return finish(404, "no tile\n")
end

--- header_filter_by_lua of the TileJSON location (`^/tiles/(NAME)\.json$`):
-- the layer's Access-Control-Allow-Origin.
function _M.tilejson_header_filter()
    allow_origin(layers[ngx_var[1] or ""])
end

local function send(t, hash, body, rendered, xcache)
    if not hash then
        return empty(t, rendered, xcache)
    end
    tile_headers(t.layer, hash, rendered, xcache)
    if not_modified(hash, rendered) then
        metrics.request(304, xcache)
        return finish(304)
    end
    metrics.request(200, xcache)
    return finish(HTTP_OK, body)
end

local function unavailable(t, why)
    ngx_header["Retry-After"] = tostring(cfg.retry_after)
    return plain(503, "tile " .. t.z .. "/" .. t.x .. "/" .. t.y .. " unavailable: " .. why, nil, t.layer)
end

-- store -----------------------------------------------------------------------

local function pack_error(t, err)
    return "disk pack " .. t.layer.name .. "/" .. t.z .. "/" .. t.mx .. "/" .. t.my .. ": " .. err
end

-- a metatile read from the store into the hot cache
local function put_metatile(t, raw_index, h, blobs)
    local evicted = cache.put_metatile(t.layer.name, raw_index, h, blobs)
    if evicted > 0 then
        metrics.incr("renderd_cache_evictions_total", nil, evicted)
    end
end

-- fill(premature, t) from a timer, after this response: once across the
-- workers for a metatile within 5 s (purge.lua drops the lock)
local function fill_later(t, fill)
    if locks:add("f|" .. t.layer.name .. "/" .. t.z .. "/" .. t.x0 .. "/" .. t.y0, true, 5) then
        timer_at(0, fill, t)
    end
end

-- the whole metatile into the hot cache (disk), after the response
local function fill_from_disk(premature, t)
    if premature then
        return
    end
    local raw = store.read_pack(t.layer.name, t.z, t.mx, t.my)
    local h = raw and pack.header(raw, t.z, t.x0, t.y0, t.n)
    local idx, blobs, pooled
    if h then
        idx, blobs, pooled = pack.decode(raw, h)
    end
    if not idx then
        return
    end
    for i = 1, #pooled do
        local data = store.read_pool(pooled[i])
        if data then
            blobs[pooled[i]] = data
        end
    end
    put_metatile(t, idx, h, blobs)
end

-- the first bytes of a pack read at once: the whole head of a metatile of
-- 8 x 8 (64 + 2 * 64 + 24 * 64 bytes at most), and often its tiles too
local HEAD_READ = 4096

-- t's header, hash and bytes from its pack (bytes false: in the pool), or
-- nil, err, earlier; false if the metatile is not stored. Reads the head,
-- then only the tile's bytes.
local function read_from_pack(t)
    local f, err = store.open_pack(t.layer.name, t.z, t.mx, t.my)
    if not f then
        if err then
            return nil, err
        end
        return false
    end
    local raw = f:read(HEAD_READ) or ""
    local size = f:seek("end")
    local h, earlier
    h, err, earlier = pack.header(raw, t.z, t.x0, t.y0, t.n, size)
    if h and #raw < h.head then
        f:seek("set", #raw)
        raw = raw .. (f:read(h.head - #raw) or "")
    end
    local hash, off, len
    if h then
        hash, off, len = pack.locate(raw, h, t.i)
        err = off
    end
    local body = off
    if hash and off then
        if off + len <= #raw then
            body = sub(raw, off + 1, off + len)
        else
            f:seek("set", off)
            body = f:read(len)
            if not body or #body ~= len then
                hash, err = nil, "short read of a tile"
            end
        end
    end
    f:close()
    if not h or hash == nil then
        return nil, err, earlier
    end
    return h, hash, body
end

-- the disk store: t's pack, and its pool file if the tile is in the pool
local function from_disk(t, xcache)
    local h, hash, body, err
    for attempt = 1, 2 do
        local second, third
        h, second, third = read_from_pack(t)
        if h == false then
            return false
        end
        if not h then
            if third then -- an earlier format, not converted: render it again
                log.once(WARN, "pack-earlier", pack_error(t, second),
                         "; such packs count as absent and are rendered again")
                return false
            end
            return false, pack_error(t, second)
        end
        hash, body = second, third
        if not hash or body then
            break
        end
        body, err = store.read_pool(hash)
        if body or err then
            break
        end
        if attempt == 1 then
            log.once(WARN, "blob-missing", "pool blob ", hash,
                     " named by a metatile pack is missing; reading the store again")
        end
    end
    if hash and not body then
        return false, err -- its pool blob is gone: render it again
    end
    if h.stale then
        xcache = "STALE"
        render.refresh(t)
    end
    fill_later(t, fill_from_disk)
    return send(t, hash, body, h.rendered, xcache)
end

-- fill the hot cache with a stored metatile (Redis), after the response
function fill_from_redis(premature, t)
    if premature then
        return
    end
    local name = t.layer.name
    local raw, blobs, err = store.read_metatile(name, t.z, t.mx, t.my)
    if not raw then
        if err then
            metrics.incr("renderd_store_errors_total")
            log.once(WARN, "store-fill", "cannot fill the hot cache: ", err)
        end
        return
    end
    local h = index.check(raw, t.z, t.x0, t.y0, t.n)
    if h then
        put_metatile(t, raw, h, blobs)
    end
end

-- parsed index headers by their 64 bytes, per worker (the tiles of a
-- metatile share theirs; the stale flag and times are part of the bytes)
local headers, nheaders = {}, 0

local function redis_header(head, t)
    local h = headers[head]
    if h and h.z == t.z and h.x0 == t.x0 and h.y0 == t.y0 and h.n == t.n then
        return h
    end
    local err
    h, err = index.check(head, t.z, t.x0, t.y0, t.n, true)
    if h then
        if nheaders >= 4096 then
            headers, nheaders = {}, 0
        end
        headers[head] = h
        nheaders = nheaders + 1
    end
    return h, err
end

-- the Redis store: t's entry, blob and index header (store.read_tile); the
-- whole metatile goes into the hot cache from a timer (once across workers)
local function from_redis(t, xcache)
    local name = t.layer.name
    local r, err = store.read_tile(name, t.z, t.mx, t.my, t.i)
    if not r then
        return false, err
    end
    local h
    h, err = redis_header(r.header, t)
    if not h then
        return false, "redis index " .. name .. "/" .. t.z .. "/" .. t.mx .. "/" .. t.my .. ": " .. err
    end
    if h.stale then
        xcache = "STALE"
        render.refresh(t)
    end
    fill_later(t, fill_from_redis)
    local hash = r.hash
    if not hash then
        return empty(t, h.rendered, xcache)
    end
    if r.blob == "" then
        return false, "redis: blob " .. hash .. " of " .. name .. "/" .. t.z .. "/" .. t.x .. "/" .. t.y
            .. " is missing"
    end
    return send(t, hash, r.blob, h.rendered, xcache)
end

-- read t from the store and answer; returns only if nothing was sent:
-- false (not stored) or false, err (store failed)
local function from_store(t, xcache)
    if store.kind == "disk" then
        return from_disk(t, xcache)
    end
    return from_redis(t, xcache)
end

local function serve_expired(t)
    local e = cache.get(t.layer.name, t.z, t.x, t.y, true)
    if e then
        return send(t, e.hash, e.body, e.rendered, "STALE")
    end
end

-- handlers --------------------------------------------------------------------

--- content_by_lua of `location /tiles/`.
function _M.serve()
    if not cfg then
        error("renderd.front.init() was not called (init_by_lua)", 2)
    end
    local method = get_method()
    if method ~= "GET" and method ~= "HEAD" then
        ngx_header["Allow"] = "GET, HEAD"
        return plain(405, "method not allowed")
    end
    local t, status, msg = path.parse(ngx_var.request_uri, layers)
    if not t then
        return plain(status, msg)
    end
    local name = t.layer.name

    -- 1. hot cache
    local e = cache.get(name, t.z, t.x, t.y)
    if e then
        metrics.incr("renderd_cache_hits_total")
        if e.stale then
            render.refresh(t)
            return send(t, e.hash, e.body, e.rendered, "STALE")
        end
        return send(t, e.hash, e.body, e.rendered, "HIT")
    end
    metrics.incr("renderd_cache_misses_total")

    -- 2. store
    local _, err = from_store(t, "STORE")
    if err then
        metrics.incr("renderd_store_errors_total")
        log.once(ERR, "store", "tile store unavailable, serving stale or rendering: ", err)
        serve_expired(t)
    end

    -- 3. render (one RENDER per metatile across all workers)
    local res = render.fetch(t, req_start() + cfg.timeout)
    if res.status == "OK" then
        local tile = render.tile(res, t)
        if tile then
            return send(t, tile.hash, tile.body, tile.rendered, "RENDER")
        end
        -- rendered by another worker and already gone from the hot cache
        _, err = from_store(t, "RENDER")
        res = { status = "ERROR", reason = err or "rendered tile not found in the store" }
    end
    local level = (res.status == "BUSY" or res.status == "TIMEOUT") and WARN or ERR
    log.once(level, "render-" .. res.status, "render of ", name, "/", t.z, "/", t.x, "/", t.y,
             " failed: ", res.status, " ", tostring(res.reason))
    serve_expired(t)
    return unavailable(t, res.status == "BUSY" and "render queue full" or "render failed or timed out")
end

return _M
