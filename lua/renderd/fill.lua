-- renderd.fill: whole metatiles into the hot cache (renderd.cache), from a
-- render's reply or read from the store, after the response that needed
-- them (a metatile's neighbours are usually asked for next).
--
--   local fill = require "renderd.fill"
--   fill.configure(ngx.shared.rpy_locks)
--   fill.put(t, raw_index, header, blobs)   -- a metatile at hand
--   fill.from_store(t)                      -- read it from the store now
--   fill.later(t)       -- from_store from a timer, once across the workers
--                       -- for a metatile within FILL_SECONDS
--   fill.forget(layer, z, x0, y0)           -- a purge: the next miss fills again
--
-- Errors are counted (renderd_store_errors_total) and logged once per
-- interval; a fill never fails a request.

local cache = require "renderd.cache"
local store = require "renderd.store"
local metrics = require "renderd.metrics"
local log = require "renderd.log"

local timer_at = ngx.timer.at
local WARN = ngx.WARN

local _M = { _VERSION = "0.1.0" }

--- Seconds in which a metatile read from the store fills the hot cache once.
_M.FILL_SECONDS = 5

local locks

function _M.configure(shm)
    locks = shm
end

local function lock_key(layer, z, x0, y0)
    return "f|" .. layer .. "/" .. z .. "/" .. x0 .. "/" .. y0
end

--- Put t's metatile into the hot cache.
function _M.put(t, raw, h, blobs)
    local evicted = cache.put_metatile(t.tileset, raw, h, blobs)
    if evicted > 0 then
        metrics.incr("renderd_cache_evictions_total", nil, evicted)
    end
end

--- Read t's metatile from the store and put it into the hot cache.
function _M.from_store(t)
    local raw, h, blobs = store.read_metatile(t)
    if raw then
        return _M.put(t, raw, h, blobs)
    end
    if raw == nil then
        metrics.incr("renderd_store_errors_total")
        log.once(WARN, "store-fill", "cannot fill the hot cache: ", h)
    end
end

local function on_timer(premature, t)
    if not premature then
        _M.from_store(t)
    end
end

--- from_store(t) from a timer, after this response; once across the
-- workers for a metatile within FILL_SECONDS (or until a purge).
function _M.later(t)
    if locks:add(lock_key(t.tileset, t.z, t.x0, t.y0), true, _M.FILL_SECONDS) then
        timer_at(0, on_timer, t)
    end
end

--- A purge changed the metatile: the next request reads the store again,
-- however recently it was filled.
function _M.forget(layer, z, x0, y0)
    locks:delete(lock_key(layer, z, x0, y0))
end

return _M
