-- renderd.front: the tile handler of the nginx front.
--
-- Interface with `renderd-py nginx-conf` (renderd/nginx/). http level:
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
-- The runtime config (what init reads) is described in renderd.runtime.
--
-- A tile request, serve():
--   1. renderd.path validates it: 400/404/405 before any I/O; a tile set of
--      a layer with keys must be a key combination the catalog holds
--      (renderd.catalog; 404, never a render);
--   2. the hot cache (renderd.cache): X-Cache: HIT, or STALE (a tile marked
--      stale: served, and a re-render queued at priority 1);
--   3. the store (renderd.store, whichever backend): STORE, or STALE as
--      above; the whole metatile then goes into the hot cache from a timer
--      (renderd.fill);
--   4. one RENDER per metatile however many requests miss it
--      (renderd.render): RENDER; the hot cache gets the metatile after the
--      answer; a request that would start a render counts against its
--      client's render rate (renderd.throttle): over it, an expired copy
--      (STALE) or 429 with Retry-After;
--   5. on BUSY, FAIL, timeout or store errors: an expired hot-cache copy
--      (STALE), else 503 with Retry-After (renderd.reply).
-- An empty tile (the renderer stored none there) is a 404 "no tile" with
-- the layer's Cache-Control.

local runtime = require "renderd.runtime"
local path = require "renderd.path"
local cache = require "renderd.cache"
local store = require "renderd.store"
local render = require "renderd.render"
local throttle = require "renderd.throttle"
local fill = require "renderd.fill"
local catalog = require "renderd.catalog"
local reply = require "renderd.reply"
local metrics = require "renderd.metrics"
local log = require "renderd.log"

local ngx_var = ngx.var
local ngx_header = ngx.header
local get_method = ngx.req.get_method
local req_start = ngx.req.start_time
local ERR = ngx.ERR
local WARN = ngx.WARN
local tostring = tostring
local find = string.find
local error = error

local _M = { _VERSION = "0.1.0" }

--- init_by_lua: read and apply the runtime config JSON at `file`.
_M.init = runtime.init

--- header_filter_by_lua of the TileJSON location (`^/tiles/(NAME)\.json$`):
-- the layer's Access-Control-Allow-Origin.
function _M.tilejson_header_filter()
    local _, layers = runtime.get()
    reply.allow_origin(layers[ngx_var[1] or ""])
end

-- t from the store, answered (stale: a re-render queued; the metatile into
-- the hot cache after the answer); returns only if nothing was sent:
-- false (not stored) or nil, err
local function from_store(t, xcache)
    local hash, body, rendered, stale = store.read_tile(t)
    if not hash then
        return hash, body
    end
    if stale then
        xcache = "STALE"
        render.refresh(t)
    end
    fill.later(t)
    return reply.tile(t, hash, body, rendered, xcache)
end

-- an expired hot-cache copy, when nothing better answers
local function serve_expired(t)
    local e = cache.get(t.tileset, t.z, t.x, t.y, true)
    if e then
        return reply.tile(t, e.hash, e.body, e.rendered, "STALE")
    end
end

--- Answer with tile t (a checked path.parse result; rt: the runtime
-- config): steps 1 (the key combination) to 5 of the module comment.
local function answer(t, rt)
    if #t.values > 0 then
        local ok, status, msg = catalog.check(t)
        if not ok then
            if status == 503 then
                ngx_header["Retry-After"] = tostring(rt.retry_after)
            end
            return reply.plain(status, msg, nil, t.layer)
        end
    end

    local e = cache.get(t.tileset, t.z, t.x, t.y)
    if e then
        metrics.incr("renderd_cache_hits_total")
        if e.stale then
            render.refresh(t)
            return reply.tile(t, e.hash, e.body, e.rendered, "STALE")
        end
        return reply.tile(t, e.hash, e.body, e.rendered, "HIT")
    end
    metrics.incr("renderd_cache_misses_total")

    local _, err = from_store(t, "STORE")
    if err then
        metrics.incr("renderd_store_errors_total")
        log.once(ERR, "store", "tile store unavailable, serving stale or rendering: ", err)
        serve_expired(t)
    end

    if not render.pending(t) then
        local wait = throttle.take(ngx_var.binary_remote_addr)
        if wait then
            metrics.incr("renderd_throttled_total")
            serve_expired(t)
            return reply.throttled(t, wait)
        end
    end
    local res = render.fetch(t, req_start() + rt.timeout)
    if res.status == "OK" then
        local tile = render.tile(res, t)
        if tile then
            return reply.tile(t, tile.hash, tile.body, tile.rendered, "RENDER")
        end
        -- rendered by another worker and already gone from the hot cache
        _, err = from_store(t, "RENDER")
        res = { status = "ERROR", reason = err or "rendered tile not found in the store" }
    end
    log.once((res.status == "BUSY" or res.status == "TIMEOUT") and WARN or ERR, "render-" .. res.status,
             "render of ", t.tileset, "/", t.z, "/", t.x, "/", t.y, " failed: ", res.status, " ",
             tostring(res.reason))
    serve_expired(t)
    return reply.unavailable(t, res.status == "BUSY" and "render queue full" or "render failed or timed out")
end

_M.answer = answer

--- content_by_lua of `location /tiles/`.
function _M.serve()
    local rt, layers = runtime.get()
    if not rt then
        error("renderd.front.init() was not called (init_by_lua)", 2)
    end
    local method = get_method()
    if method ~= "GET" and method ~= "HEAD" then
        ngx_header["Allow"] = "GET, HEAD"
        return reply.plain(405, "method not allowed")
    end
    local t, status, msg = path.parse(ngx_var.request_uri, layers)
    if not t then
        if status == 400 and find(ngx_var.uri, "%.json$") then
            return catalog.serve()    -- a tile set's TileJSON
        end
        return reply.plain(status, msg)
    end
    return answer(t, rt)
end

return _M
