-- renderd.store: read a metatile from the tile store (docs/storage.md).
--
--   local store = require "renderd.store"
--   store.configure(cfg.store, ngx.shared.rpy_locks)
--   -- disk: the metatile's pack file (renderd.pack reads it), a pool tile
--   local raw, err = store.read_pack(layer, z, mx, my)    -- nil, nil = absent
--   local f, err = store.open_pack(layer, z, mx, my)      -- the same, as an open file
--   local bytes, err = store.read_pool(hash)               -- nil, nil = absent
--   -- redis: one tile, its hash and its index's header (plain commands)
--   local r, err = store.read_tile(layer, z, mx, my, i)
--   -- redis: index and every distinct blob in one round trip (the metatile
--   -- script, whose text comes in the runtime config from nginx-conf)
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
local lrucache = require "resty.lrucache"

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

local function hex(s)
    return (gsub(s, ".", function(c) return format("%02x", byte(c)) end))
end

-- Repeated tiles' bytes by content hash, per worker: blobs that two or more
-- indexes name (sea, empty land) are what most requests ask for, and a
-- hash's bytes never change, so they can be kept without going stale.
local BLOB_CACHE_ITEMS = 2048
local BLOB_CACHE_MAX_BYTES = 16384   -- a larger blob is not kept
local blob_cache = lrucache.new(BLOB_CACHE_ITEMS)

local cfg            -- the "store" table of the runtime config
local flags          -- shared dict for the "redis is down" flag
local GETRANGE = pipeline.command({ "GETRANGE" }, 4)
local GET = pipeline.command({ "GET" }, 2)
local arg = pipeline.arg
local blob_prefix, ref_prefix   -- "{prefix}:blob:", "{prefix}:ref:"
local HEADER_SIZE, ENTRY_SIZE, EMPTY = index.HEADER_SIZE, index.ENTRY_SIZE, index.EMPTY
local HASH_HEX = #EMPTY
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
        if type(cfg.meta_script) ~= "string" or cfg.meta_script == "" then
            error("store.meta_script missing for a Redis store", 2)
        end
        blob_prefix, ref_prefix = cfg.prefix .. ":blob:", cfg.prefix .. ":ref:"
        _M.META_SCRIPT = cfg.meta_script
        _M.META_SHA = hex(sha1_bin(cfg.meta_script))
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

-- commands over the worker's pipelined connection (reads on the request
-- path): the reply (a list of n replies with n), or nil, err
local function call(req, n)
    if flags and flags:get("down|redis") then
        return nil, "redis marked down after a recent failure"
    end
    local res, err = pipeline.call(req, nil, n)
    if res == nil then
        err = tostring(err)
        if flags and (find(err, "redis connect", 1, true) or find(err, "timeout", 1, true)
                      or find(err, "closed", 1, true)) then
            flags:set("down|redis", true, cfg.retry)
        end
        return nil, find(err, "^redis") and err or "redis: " .. err
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

-- (the tile, nil, err: the shape once() passes on). First the index up to
-- entry i (GETRANGE: its header and the tile's hash), then, unless the
-- worker keeps that blob, the blob and its reference count (GET, GET): a
-- blob two or more indexes name is kept. A blob gone between the two reads
-- (the metatile was just replaced) makes the index be read once more.
local function read_tile(key, i)
    local last = HEADER_SIZE + ENTRY_SIZE * i + HASH_HEX - 1
    local range = GETRANGE .. arg(key) .. arg(0) .. arg(last)
    local r
    for _ = 1, 2 do
        local res, err = call(range)
        if not res then
            return nil, nil, err
        end
        if res == "" then
            return nil
        end
        if type(res) ~= "string" or #res ~= last + 1 then
            return nil, nil, "redis: index " .. key .. " is too short for entry " .. i
        end
        r = { header = sub(res, 1, HEADER_SIZE), blob = "" }
        local hash = index.entry(res, i)
        if not hash then
            if sub(res, -HASH_HEX) == EMPTY then
                return r
            end
            return nil, nil, "redis: index " .. key .. " has a corrupt entry " .. i
        end
        r.hash = hash
        local blob = blob_cache:get(hash)
        if blob then
            r.blob = blob
            return r
        end
        local pair
        pair, err = call(GET .. arg(blob_prefix .. hash) .. GET .. arg(ref_prefix .. hash), 2)
        if not pair then
            return nil, nil, err
        end
        blob = pair[1]
        if type(blob) == "string" then
            if (tonumber(pair[2]) or 0) >= 2 and #blob <= BLOB_CACHE_MAX_BYTES then
                blob_cache:set(hash, blob)
            end
            r.blob = blob
            return r
        end
    end
    return r
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

--- Redis: entry i of a metatile: { hash (nil: no tile there), blob (""
-- if the blob is missing), header (the index's first 64 bytes, for
-- index.check(..., true)) }; nil if the metatile is not stored; nil, err
-- on failure. One round trip for a tile whose blob the worker keeps, else
-- two. Concurrent reads of one tile in a worker share them.
function _M.read_tile(layer, z, mx, my, i)
    local key = index_key(layer, z, mx, my)
    local r, _, err = once(key .. "#" .. i, read_tile, key, i)
    return r, err
end

return _M
