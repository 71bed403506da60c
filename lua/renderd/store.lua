-- renderd.store: read a metatile from the tile store (docs/storage.md).
--
--   local store = require "renderd.store"
--   store.configure(cfg.store, ngx.shared.rpy_locks)
--   -- disk: the metatile's pack file (renderd.pack reads it), a pool tile
--   local raw, err = store.read_pack(layer, z, mx, my)    -- nil, nil = absent
--   local f, err = store.open_pack(layer, z, mx, my)      -- the same, as an open file
--   local bytes, err = store.read_pool(hash)               -- nil, nil = absent
--   -- redis: one tile and its index's header in one round trip (TILE_SCRIPT)
--   local r, err = store.read_tile(layer, z, mx, my, i)
--   -- redis: index and every distinct blob in one round trip (META_SCRIPT)
--   local raw, blobs, err, leader = store.read_metatile(layer, z, mx, my)
--
-- Disk layout: {path}/tiles/{layer}/{z}/{mx >> 5}/{my >> 5}/{mx}_{my}.pack and
-- the pool, {path}/blobs/{h[0:2]}/{h}. Redis keys: {prefix}:idx:{layer}:{z}:{mx}:{my},
-- {prefix}:blob:{hash}. read_tile (the request path) goes over the worker's
-- pipelined connection (renderd.pipeline); read_metatile (hot-cache fills)
-- over connections from the cosocket pool; after a connection failure Redis
-- is not tried again for `retry` seconds (a shared-dict flag), so an outage
-- costs one timeout, not one per request.

local redis = require "nginx.redis"
local index = require "renderd.index"
local semaphore = require "ngx.semaphore"
local rshift = require("bit").rshift
local pipeline = require "renderd.pipeline"

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

-- The same text as renderd/store/redis.py's LUA_SIZE, LUA_DISTINCT,
-- TILE_SCRIPT and META_SCRIPT, so the SHAs are the ones the Python side
-- loads too (docs/storage.md; a test compares them).
local SIZE = [[
local EMPTY = string.rep('0', 32)
local function size(raw)
  if type(raw) ~= 'string' or #raw < 64 or string.sub(raw, 1, 6) ~= 'RPYI1 ' then return nil end
  local n = tonumber(string.sub(raw, 28, 29))
  if not n or #raw ~= 64 + n * n * 33 then return nil end
  return n
end
]]

local DISTINCT = SIZE .. [[
local function distinct(raw)
  local n = size(raw)
  if not n then return nil end
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
]]

-- KEYS[1] index key, ARGV[1] prefix, ARGV[2] entry; nil if no index, else
-- the index's 64-byte header .. the entry (32 hex digits, zeros: no tile)
-- .. the tile's bytes (none if empty or missing)
_M.TILE_SCRIPT = SIZE .. [[
local raw = redis.call('GET', KEYS[1])
local n = size(raw)
if not n then return nil end
local i = tonumber(ARGV[2])
if not i or i < 0 or i >= n * n or i % 1 ~= 0 then
  return redis.error_reply('ERR entry ' .. tostring(ARGV[2]) .. ' is outside the index')
end
local p = 65 + i * 33
local h = string.sub(raw, p, p + 31)
local blob = ''
if h ~= EMPTY then blob = redis.call('GET', ARGV[1] .. ':blob:' .. h) or '' end
return string.sub(raw, 1, 64) .. h .. blob
]]

-- KEYS[1] index key, ARGV[1] prefix; nil if no index, else {index, blob...}:
-- one blob per distinct non-empty hash in order of first appearance ('' if
-- missing)
_M.META_SCRIPT = DISTINCT .. [[
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
_M.TILE_SHA = hex(sha1_bin(_M.TILE_SCRIPT))

local cfg            -- the "store" table of the runtime config
local flags          -- shared dict for the "redis is down" flag
local tile_cmd       -- the tile script's command up to its key (Redis protocol)
local prefix_arg     -- the key prefix as a command argument
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
        tile_cmd = pipeline.command({ "EVALSHA", _M.TILE_SHA, 1 }, 6)
        prefix_arg = pipeline.arg(cfg.prefix)
        pipeline.configure({ host = cfg.host, port = cfg.port, db = cfg.db, timeout_ms = cfg.timeout_ms,
                             socket = type(cfg.socket) == "string" and cfg.socket ~= "" and cfg.socket or nil,
                             password = type(cfg.password) == "string" and cfg.password ~= ""
                                        and cfg.password or nil })
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

-- {z}/{block x}/{block y}/{mx}_{my}.pack, blocks of 32 x 32 metatiles
local function pack_path(layer, z, mx, my)
    return cfg.path .. "/tiles/" .. layer .. "/" .. z .. "/" .. rshift(mx, 5) .. "/"
        .. rshift(my, 5) .. "/" .. mx .. "_" .. my .. ".pack"
end

--- Disk: the bytes of a metatile's pack; nil (no error) if it is not stored.
function _M.read_pack(layer, z, mx, my)
    return read_file(pack_path(layer, z, mx, my))
end

--- Disk: a metatile's pack opened for reading (the caller closes it); nil
-- (no error) if it is not stored.
function _M.open_pack(layer, z, mx, my)
    local f, err = io_open(pack_path(layer, z, mx, my), "rb")
    if not f and find(err, "No such file", 1, true) then
        return nil
    end
    return f, err
end

function _M.read_pool(hash)
    return read_file(cfg.path .. "/blobs/" .. sub(hash, 1, 2) .. "/" .. hash)
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

-- run a reader script: EVALSHA, and EVAL if Redis does not know it yet;
-- the reply (nil if it is nil) or nil, err
local function run(sha, script, key, ...)
    local red, res, err
    for _ = 1, 2 do
        red, err = connect()
        if not red then
            return nil, err
        end
        local reused = red:get_reused_times() or 0
        res, err = red:evalsha(sha, 1, key, cfg.prefix, ...)
        if not res and err and find(err, "NOSCRIPT", 1, true) then
            res, err = red:eval(script, 1, key, cfg.prefix, ...)
        end
        if res or not err then
            break
        end
        red:close()
        -- a pooled connection the server closed (restart, CLIENT KILL): once more on a new one
        if reused == 0 or not (find(err, "closed", 1, true) or find(err, "reset", 1, true)) then
            break
        end
    end
    if not res and err then
        if flags and (find(err, "timeout", 1, true) or find(err, "closed", 1, true)) then
            flags:set("down|redis", true, cfg.retry)
        end
        return nil, "redis: " .. err
    end
    red:set_keepalive(60000, cfg.pool_size)
    if res == null then
        return nil
    end
    return res
end

-- the tile script over the worker's pipelined connection (reads on the
-- request path; falls back to run() when Redis does not know the script)
local function run_tile(key, i)
    if flags and flags:get("down|redis") then
        return nil, "redis marked down after a recent failure"
    end
    local res, err = pipeline.call(tile_cmd .. pipeline.arg(key) .. prefix_arg .. pipeline.arg(i))
    if res == nil then
        if err and find(err, "NOSCRIPT", 1, true) then
            return run(_M.TILE_SHA, _M.TILE_SCRIPT, key, i)
        end
        err = tostring(err)
        if flags and (find(err, "redis connect", 1, true) or find(err, "timeout", 1, true)
                      or find(err, "closed", 1, true)) then
            flags:set("down|redis", true, cfg.retry)
        end
        return nil, find(err, "^redis") and err or "redis: " .. err
    end
    if res == null then
        return nil
    end
    return res
end

local function index_key(layer, z, mx, my)
    return cfg.prefix .. ":idx:" .. layer .. ":" .. z .. ":" .. mx .. ":" .. my
end

local function read_metatile(layer, z, mx, my)
    local key = index_key(layer, z, mx, my)
    local res, err = run(_M.META_SHA, _M.META_SCRIPT, key)
    if not res then
        return nil, nil, err
    end
    local raw = type(res) == "table" and res[1]
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

-- (the tile, nil, err: the shape once() passes on)
local function read_tile(layer, z, mx, my, i)
    local res, err = run_tile(index_key(layer, z, mx, my), i)
    if not res then
        return nil, nil, err
    end
    if type(res) ~= "string" or #res < 96 then
        return nil, nil, "redis: unexpected reply to the tile script"
    end
    local hash = sub(res, 65, 96)
    return { hash = hash ~= index.EMPTY and hash or nil, blob = sub(res, 97), header = sub(res, 1, 64) }
end

local reading = {}   -- per worker: read key -> { sema, waiting, done, results }

-- fn(...) once for concurrent callers with the same key in this worker: the
-- first caller runs it, the others wait for its three results; a fourth
-- result is true for the caller that ran it. (The semaphore is made by the
-- first caller that has to wait: most reads have no company.)
local function once(key, fn, ...)
    local e = reading[key]
    if e then
        e.waiting = e.waiting + 1
        e.sema = e.sema or semaphore.new()
        local ok = e.sema:wait(2 * cfg.timeout_ms / 1000 + 0.5)
        if not ok or not e.done then
            return nil, nil, "redis: timeout waiting for a concurrent read", false
        end
        return e[1], e[2], e[3], false
    end
    e = { waiting = 0 }
    reading[key] = e
    local ok, a, b, c = pcall(fn, ...)
    if not ok then
        a, b, c = nil, nil, "redis read raised: " .. tostring(a)
    end
    e[1], e[2], e[3], e.done = a, b, c, true
    reading[key] = nil
    if e.waiting > 0 then
        e.sema:post(e.waiting)
    end
    return a, b, c, true
end

--- Redis: raw index and {hash = bytes} of its distinct blobs in one round
-- trip; nil, nil if the metatile is not stored; nil, nil, err on failure.
-- Concurrent reads of one metatile in a worker share one round trip; the
-- fourth value is true only for the request that made it.
function _M.read_metatile(layer, z, mx, my)
    return once("m|" .. layer .. "/" .. z .. "/" .. mx .. "/" .. my, read_metatile, layer, z, mx, my)
end

--- Redis: entry i of a metatile in one round trip: { hash (nil: no tile
-- there), blob ("" if the blob is missing), header (the index's first 64
-- bytes, for index.check(..., true)) }; nil if the
-- metatile is not stored; nil, err on failure. Concurrent reads of one
-- tile in a worker share one round trip.
function _M.read_tile(layer, z, mx, my, i)
    local r, _, err = once("t|" .. layer .. "/" .. z .. "/" .. mx .. "/" .. my .. "/" .. i,
                           read_tile, layer, z, mx, my, i)
    return r, err
end

return _M
