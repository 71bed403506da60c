-- renderd.store: read a metatile from the tile store (docs/storage.md).
--
--   local store = require "renderd.store"
--   store.configure(cfg.store, ngx.shared.rpy_locks)
--   -- disk: the metatile's pack file (renderd.pack reads it), a pool tile
--   local raw, err = store.read_pack(layer, z, mx, my)    -- nil, nil = absent
--   local bytes, err = store.read_pool(hash)               -- nil, nil = absent
--   -- redis: index and every distinct blob in one round trip (META_SCRIPT)
--   local raw, blobs, err, leader = store.read_metatile(layer, z, mx, my)
--
-- Disk layout: {path}/tiles/{layer}/{z}/{mx}/{my}.pack and the pool,
-- {path}/blobs/{h[0:2]}/{h[2:4]}/{h}. Redis keys: {prefix}:idx:{layer}:{z}:{mx}:{my},
-- {prefix}:blob:{hash}. Redis connections come from the cosocket pool; after
-- a connection failure Redis is not tried again for `retry` seconds
-- (a shared-dict flag), so an outage costs one timeout, not one per request.

local redis = require "nginx.redis"
local index = require "renderd.index"
local semaphore = require "ngx.semaphore"

local io_open = io.open
local sub = string.sub
local byte = string.byte
local format = string.format
local gsub = string.gsub
local find = string.find
local type = type
local error = error
local tostring = tostring
local tonumber = tonumber
local null = ngx.null
local pcall = pcall
local sha1_bin = ngx.sha1_bin

local _M = { _VERSION = "0.1.0" }

-- Same text as renderd/store/redis.py LUA_DISTINCT + META_SCRIPT, so the
-- SHA is the one the Python side loads too. KEYS[1] index key, ARGV[1]
-- prefix; nil if no index, else {index, blob...}: one blob per distinct
-- non-empty hash in order of first appearance ('' if missing).
_M.META_SCRIPT = [[
local EMPTY = string.rep('0', 32)
local function distinct(raw)
  if type(raw) ~= 'string' or #raw < 64 or string.sub(raw, 1, 6) ~= 'RPYI1 ' then return nil end
  local n = tonumber(string.sub(raw, 28, 29))
  if not n or #raw ~= 64 + n * n * 33 then return nil end
  local out, seen = {}, {}
  for i = 0, n * n - 1 do
    local p = 65 + i * 33
    local h = string.sub(raw, p, p + 31)
    if h ~= EMPTY and not seen[h] then
      seen[h] = true
      out[#out + 1] = h
    end
  end
  return out
end
local raw = redis.call('GET', KEYS[1])
local hashes = distinct(raw)
if not hashes then return nil end
local out = {raw}
for _, h in ipairs(hashes) do out[#out + 1] = redis.call('GET', ARGV[1] .. ':blob:' .. h) or '' end
return out
]]

local function hex(s)
    return (gsub(s, ".", function(c) return format("%02x", byte(c)) end))
end

_M.META_SHA = hex(sha1_bin(_M.META_SCRIPT))

local cfg            -- the "store" table of the runtime config
local flags          -- shared dict for the "redis is down" flag
_M.kind = nil

--- cfg: the runtime config's "store" table. shm: a shared dict for flags.
function _M.configure(store_cfg, shm)
    if type(store_cfg) ~= "table" then
        error("store config missing", 2)
    end
    cfg = store_cfg
    flags = shm
    _M.kind = cfg.kind
    if cfg.kind == "disk" then
        if type(cfg.path) ~= "string" or cfg.path == "" then
            error("store.path missing for a disk store", 2)
        end
        cfg.path = gsub(cfg.path, "/+$", "")
    elseif cfg.kind == "redis" then
        cfg.prefix = cfg.prefix or "rpy"
        cfg.db = tonumber(cfg.db) or 0
        cfg.timeout_ms = (tonumber(cfg.timeout) or 1) * 1000
        cfg.retry = tonumber(cfg.retry) or 2
        if type(cfg.socket) == "string" and cfg.socket ~= "" then
            cfg.pool = "rpy-redis:unix:" .. cfg.socket .. ":" .. cfg.db
        else
            cfg.host = cfg.host or "127.0.0.1"
            cfg.port = tonumber(cfg.port) or 6379
            cfg.pool = "rpy-redis:" .. cfg.host .. ":" .. cfg.port .. ":" .. cfg.db
        end
        cfg.pool_size = tonumber(cfg.pool_size) or 32
    else
        error("unknown store kind " .. tostring(cfg.kind), 2)
    end
end

-- disk ------------------------------------------------------------------------

local function read_file(path)
    local f, err = io_open(path, "rb")
    if not f then
        if find(err, "No such file", 1, true) then
            return nil
        end
        return nil, err
    end
    local data = f:read("*a")
    f:close()
    if not data then
        return nil, "cannot read " .. path
    end
    return data
end

--- Disk: the bytes of a metatile's pack; nil (no error) if it is not stored.
function _M.read_pack(layer, z, mx, my)
    return read_file(cfg.path .. "/tiles/" .. layer .. "/" .. z .. "/" .. mx .. "/" .. my .. ".pack")
end

--- Disk: the bytes of a tile in the shared pool; nil (no error) if it is not there.
function _M.read_pool(hash)
    return read_file(cfg.path .. "/blobs/" .. sub(hash, 1, 2) .. "/" .. sub(hash, 3, 4) .. "/" .. hash)
end

-- redis -----------------------------------------------------------------------

local function connect()
    if flags and flags:get("down|redis") then
        return nil, "redis marked down after a recent failure"
    end
    local red = redis:new()
    red:set_timeout(cfg.timeout_ms)
    local ok, err
    if cfg.socket and cfg.socket ~= null and cfg.socket ~= "" then
        ok, err = red:connect("unix:" .. cfg.socket, { pool = cfg.pool })
    else
        ok, err = red:connect(cfg.host, cfg.port, { pool = cfg.pool })
    end
    if not ok then
        if flags then
            flags:set("down|redis", true, cfg.retry)
        end
        return nil, "redis connect: " .. err
    end
    if (red:get_reused_times() or 0) == 0 then
        if type(cfg.password) == "string" and cfg.password ~= "" then
            ok, err = red:auth(cfg.password)
            if not ok then
                red:close()
                return nil, "redis auth: " .. err
            end
        end
        if cfg.db ~= 0 then
            ok, err = red:select(cfg.db)
            if not ok then
                red:close()
                return nil, "redis select: " .. err
            end
        end
    end
    return red
end

local function read_metatile(layer, z, mx, my)
    local red, err = connect()
    if not red then
        return nil, nil, err
    end
    local key = cfg.prefix .. ":idx:" .. layer .. ":" .. z .. ":" .. mx .. ":" .. my
    local res
    res, err = red:evalsha(_M.META_SHA, 1, key, cfg.prefix)
    if not res and err and find(err, "NOSCRIPT", 1, true) then
        res, err = red:eval(_M.META_SCRIPT, 1, key, cfg.prefix)
    end
    if not res and err then
        red:close()
        if flags and (find(err, "timeout", 1, true) or find(err, "closed", 1, true)) then
            flags:set("down|redis", true, cfg.retry)
        end
        return nil, nil, "redis: " .. err
    end
    red:set_keepalive(60000, cfg.pool_size)
    if res == null or type(res) ~= "table" then
        return nil
    end
    local raw = res[1]
    local h = index.header(raw)
    if not h then
        return nil, nil, "redis: corrupt index at " .. key
    end
    local blobs = {}
    local hashes = index.unique(raw, h.n)
    for i = 1, #hashes do
        local b = res[i + 1]
        if type(b) == "string" and b ~= "" then
            blobs[hashes[i]] = b
        end
    end
    return raw, blobs
end

local reading = {}   -- per worker: metatile key -> { sema, waiting, result }

--- Redis: raw index and {hash = bytes} of its distinct blobs in one round
-- trip; nil, nil if the metatile is not stored; nil, nil, err on failure.
-- Concurrent reads of one metatile in a worker share one round trip; the
-- fourth value is true only for the request that made it (the one that
-- should fill the hot cache).
function _M.read_metatile(layer, z, mx, my)
    local key = layer .. "/" .. z .. "/" .. mx .. "/" .. my
    local e = reading[key]
    if e then
        e.waiting = e.waiting + 1
        local ok = e.sema:wait(2 * cfg.timeout_ms / 1000 + 0.5)
        if not ok or not e.done then
            return nil, nil, "redis: timeout waiting for a concurrent read"
        end
        return e.raw, e.blobs, e.err, false
    end
    e = { sema = semaphore.new(), waiting = 0 }
    reading[key] = e
    local ok, raw, blobs, err = pcall(read_metatile, layer, z, mx, my)
    if not ok then
        raw, blobs, err = nil, nil, "redis read raised: " .. tostring(raw)
    end
    e.raw, e.blobs, e.err, e.done = raw, blobs, err, true
    reading[key] = nil
    if e.waiting > 0 then
        e.sema:post(e.waiting)
    end
    return raw, blobs, err, true
end

return _M

