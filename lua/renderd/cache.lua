-- renderd.cache: the hot tile cache in a lua_shared_dict, filled a whole
-- metatile at a time (its neighbours are usually asked for next).
--
-- Keys:  "t|layer/z/x/y" -> 32-hex hash .. stale flag ("0"/"1") .. rendered
--        (expires after `ttl` seconds; get_stale keeps it as a fallback)
--        "b|hash"        -> the tile's bytes, once per distinct hash, no
--        expiry (content-addressed, so never wrong; LRU evicts it)
--        "p|layer/z/x0/y0" -> when the metatile was purged (user flag 1:
--        delete, 0: dirty), kept `linger` seconds
-- A hit reads one small key and the tile's bytes: no more is copied, no I/O.
--
--   local cache = require "renderd.cache"
--   cache.configure(ngx.shared.rpy_tiles, 300, 40)
--   local e = cache.get(layer, z, x, y [, allow_expired])
--   -- e = { hash = "..." or nil (empty tile), body = bytes or "",
--   --       stale = bool, rendered = unix, expired = bool }
--   local evicted = cache.put_metatile(layer, raw_index, header, blobs)
--   local n = cache.purge_metatile(layer, z, x0, y0, n, "dirty" | "delete")
--
-- Purges (the store's metatile was marked stale or deleted, see
-- renderd.purge): "dirty" marks the metatile's tiles stale (served at
-- once, a re-render queued), "delete" drops them. A fill that read the
-- store before the change may end after the purge: put_metatile treats an
-- index rendered before the second of a purge of its metatile (within
-- `linger` seconds) as stale, or leaves it out after a delete. (Times come
-- from the workers' clocks and nginx's: they must agree to the second.)

local index = require "renderd.index"

local sub = string.sub
local tonumber = tonumber
local floor = math.floor
local now = ngx.now
local error = error
local pairs = pairs

local _M = { _VERSION = "0.1.0" }

local dict
local ttl             -- seconds an entry counts as fresh
local linger          -- seconds a purge is remembered
local EMPTY = index.EMPTY

function _M.configure(shm, seconds, purge_seconds)
    if not shm or not seconds or not purge_seconds then
        error("cache.configure needs a shared dict, the ttl and the purge's linger", 2)
    end
    dict = shm
    ttl = seconds
    linger = purge_seconds
end

local function purge_key(layer, z, x0, y0)
    return "p|" .. layer .. "/" .. z .. "/" .. x0 .. "/" .. y0
end

local function tile_key(layer, z, x, y)
    return "t|" .. layer .. "/" .. z .. "/" .. x .. "/" .. y
end

--- A cached tile, or nil. With allow_expired an expired entry is returned
-- too (e.expired = true), for serving stale when nothing better answers.
function _M.get(layer, z, x, y, allow_expired)
    local key = tile_key(layer, z, x, y)
    local v = dict:get(key)
    local expired = false
    if not v then
        if not allow_expired then
            return nil
        end
        v = dict:get_stale(key)
        if not v then
            return nil
        end
        expired = true
    end
    local hash = sub(v, 1, 32)
    local body = ""
    if hash == EMPTY then
        hash = nil
    else
        body = dict:get("b|" .. hash)
        if not body then
            return nil
        end
    end
    return {
        hash = hash, body = body, stale = sub(v, 33, 33) == "1",
        rendered = tonumber(sub(v, 34)) or 0, expired = expired,
    }
end

--- Put a whole metatile: its distinct blobs (a map hash -> bytes) and one
-- key per tile. Tiles whose blob is missing are left out. Returns how many
-- times the dict had to evict live entries (for the metrics).
function _M.put_metatile(layer, raw, h, blobs)
    local evicted = 0
    local stale = h.stale
    local purged, deleted = dict:get(purge_key(layer, h.z, h.x0, h.y0))
    -- (rendered is in whole seconds: a render in the second of the purge counts as newer)
    if purged and h.rendered < floor(purged) then
        if deleted == 1 then
            return 0
        end
        stale = true
    end
    local have = {}
    for hash, bytes in pairs(blobs) do
        local ok, err, forcible = dict:add("b|" .. hash, bytes)
        if ok or err == "exists" then
            have[hash] = true
        end
        if forcible then
            evicted = evicted + 1
        end
    end
    local n = h.n
    local tail = (stale and "1" or "0") .. h.rendered
    for i = 0, n * n - 1 do
        local hash = index.entry(raw, i)
        if not hash or have[hash] then
            local x = h.x0 + floor(i / n)
            local y = h.y0 + i % n
            local ok, _, forcible = dict:set(tile_key(layer, h.z, x, y), (hash or EMPTY) .. tail, ttl)
            if forcible then
                evicted = evicted + 1
            end
            if not ok then
                break
            end
        end
    end
    return evicted
end

--- Mark a metatile's tiles stale ("dirty") or drop them ("delete"), and
-- remember the purge for fills under way. Returns how many tiles were
-- in the cache.
function _M.purge_metatile(layer, z, x0, y0, n, mode)
    local delete = mode == "delete"
    dict:set(purge_key(layer, z, x0, y0), now(), linger, delete and 1 or 0)
    local found = 0
    for x = x0, x0 + n - 1 do
        for y = y0, y0 + n - 1 do
            local key = tile_key(layer, z, x, y)
            if delete then
                if dict:get_stale(key) then
                    found = found + 1
                    dict:delete(key)
                end
            else
                local v = dict:get(key)
                if v then
                    found = found + 1
                    if sub(v, 33, 33) ~= "1" then
                        local left = dict:ttl(key)
                        left = left and left > 0 and left or ttl
                        dict:replace(key, sub(v, 1, 32) .. "1" .. sub(v, 34), left)
                    end
                end
            end
        end
    end
    return found
end

--- Capacity numbers for the metrics.
function _M.dict()
    return dict
end

return _M
