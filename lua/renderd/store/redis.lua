-- renderd.store.redis: the Redis store's backend of renderd.store
-- (docs/storage.md, renderd/store/redis.py).
--
-- Keys: {prefix}:idx:{layer}:{z}:{mx}:{my} (the metatile index,
-- renderd.index), {prefix}:blob:{hash} (a tile's bytes), {prefix}:ref:{hash}
-- (how many indexes name the blob). The commands go over two pipelined
-- connections per nginx worker (renderd.pipeline): one for the requests'
-- reads, one for the hot-cache fills, whose replies (a whole metatile)
-- would otherwise hold up the small replies queued behind them:
--
--   read_tile      GETRANGE of the index up to the tile's entry (its header
--                  and hash), then GET of the blob and its reference count,
--                  unless the worker keeps that blob: blobs two or more
--                  indexes name (sea, empty land) are what most requests
--                  ask for, and a hash's bytes never change
--   read_metatile  the index and every distinct blob in one round trip: the
--                  script the runtime config holds (store "meta_script",
--                  renderd/store/redis_scripts.py's META_SCRIPT), by EVALSHA, EVAL
--                  when Redis does not know it yet
--
-- Concurrent reads of one tile or metatile in a worker share one round
-- trip. After a failure (connect, timeout, closed) Redis is skipped for
-- `retry` seconds in every worker (renderd.conn's breaker), so an outage
-- costs one timeout, not one per request.

local pipeline = require "renderd.pipeline"
local index = require "renderd.index"
local conn = require "renderd.conn"
local coalesce = require "renderd.coalesce"
local lrucache = require "resty.lrucache"

local sub = string.sub
local byte = string.byte
local format = string.format
local gsub = string.gsub
local find = string.find
local type = type
local tostring = tostring
local tonumber = tonumber
local sha1_bin = ngx.sha1_bin

local _M = { _VERSION = "0.1.0" }

--- A rendered metatile is read back from the store for the hot cache; the
-- broker's reply carries the asked tile only.
_M.META_IN_REPLY = false

-- blobs kept per worker (see above)
local BLOB_CACHE_ITEMS = 2048
local BLOB_CACHE_MAX_BYTES = 16384   -- a larger blob is not kept
local blob_cache = lrucache.new(BLOB_CACHE_ITEMS)

-- parsed index headers by their 64 bytes, per worker (the tiles of a
-- metatile share theirs; the stale flag and times are part of the bytes)
local HEADERS_MAX = 4096
local headers, nheaders = {}, 0

local HEADER_SIZE, ENTRY_SIZE, EMPTY = index.HEADER_SIZE, index.ENTRY_SIZE, index.EMPTY
local HASH_HEX = #EMPTY
local GETRANGE = pipeline.command({ "GETRANGE" }, 4)
local GET = pipeline.command({ "GET" }, 2)
local EVALSHA = pipeline.command({ "EVALSHA" }, 5)
local EVAL = pipeline.command({ "EVAL" }, 5)
local arg = pipeline.arg

local prefix, idx_prefix, blob_prefix, ref_prefix
local wait_seconds      -- how long a request waits for a concurrent read
local down              -- the breaker
local reads, fills      -- the two connections

local function hex(s)
    return (gsub(s, ".", function(c) return format("%02x", byte(c)) end))
end

--- c: the runtime config's "store" table (host, port, socket, password,
-- db, prefix, meta_script); timeout: seconds per reply; retry: seconds
-- Redis is skipped after a failure; shm: a shared dict for the breaker.
function _M.configure(c, timeout, retry, shm)
    if type(c.meta_script) ~= "string" or c.meta_script == "" then
        return nil, "store.meta_script missing for a Redis store"
    end
    if type(c.prefix) ~= "string" or c.prefix == "" then
        return nil, "store.prefix missing for a Redis store"
    end
    local sock = type(c.socket) == "string" and c.socket ~= "" and c.socket or nil
    if not sock and (type(c.host) ~= "string" or type(c.port) ~= "number") then
        return nil, "store.host and store.port (or store.socket) missing for a Redis store"
    end
    if type(c.db) ~= "number" then
        return nil, "store.db missing for a Redis store"
    end
    prefix = c.prefix
    idx_prefix, blob_prefix, ref_prefix = prefix .. ":idx:", prefix .. ":blob:", prefix .. ":ref:"
    _M.META_SCRIPT = c.meta_script
    _M.META_SHA = hex(sha1_bin(c.meta_script))
    wait_seconds = 2 * timeout + 0.5
    down = conn.breaker(shm, "redis", retry)
    local where = { host = c.host, port = c.port, socket = sock, db = c.db, timeout_ms = timeout * 1000,
                    password = type(c.password) == "string" and c.password ~= "" and c.password or nil }
    reads, fills = pipeline.new(where), pipeline.new(where)
    return true
end

-- commands over a pipelined connection: the reply (a list of n replies
-- with n), or nil, err; a failure that says Redis is down trips the breaker
local function call(red, req, n)
    if down:tripped() then
        return nil, "redis marked down after a recent failure"
    end
    local res, err = red:call(req, nil, n)
    if res == nil then
        err = tostring(err)
        if find(err, "redis connect", 1, true) or find(err, "timeout", 1, true) or conn.dropped(err) then
            down:trip()
        end
        return nil, find(err, "^redis") and err or "redis: " .. err
    end
    return res
end

-- fn(...) once for concurrent callers of the same read in this worker
local function once(key, fn, ...)
    local a, b, c = coalesce.run(key, wait_seconds, fn, ...)
    if a == nil and b and not c then
        b = find(b, "^redis") and b or "redis: " .. b
    end
    return a, b, c
end

local function index_key(t)
    return idx_prefix .. t.tileset .. ":" .. t.z .. ":" .. t.mx .. ":" .. t.my
end

local function header(head, t)
    local h = headers[head]
    if h and h.z == t.z and h.x0 == t.x0 and h.y0 == t.y0 and h.n == t.n then
        return h
    end
    local err
    h, err = index.check(head, t.z, t.x0, t.y0, t.n, true)
    if not h then
        return nil, "redis index " .. t.tileset .. "/" .. t.z .. "/" .. t.mx .. "/" .. t.my .. ": " .. err
    end
    if nheaders >= HEADERS_MAX then
        headers, nheaders = {}, 0
    end
    headers[head] = h
    nheaders = nheaders + 1
    return h
end

-- the tile's blob: its bytes, false if it is gone, or nil, err
local function blob_of(hash)
    local blob = blob_cache:get(hash)
    if blob then
        return blob
    end
    local pair, err = call(reads, GET .. arg(blob_prefix .. hash) .. GET .. arg(ref_prefix .. hash), 2)
    if not pair then
        return nil, err
    end
    blob = pair[1]
    if type(blob) ~= "string" then
        return false
    end
    if (tonumber(pair[2]) or 0) >= 2 and #blob <= BLOB_CACHE_MAX_BYTES then
        blob_cache:set(hash, blob)
    end
    return blob
end

-- (the shape once() passes on: a table {hash, blob, header}, false, or nil, err)
local function read_entry(key, i, t)
    local last = HEADER_SIZE + ENTRY_SIZE * i + HASH_HEX - 1
    local range = GETRANGE .. arg(key) .. arg(0) .. arg(last)
    local hash, h
    -- a blob gone between the two reads (the metatile was just replaced)
    -- makes the index be read once more
    for _ = 1, 2 do
        local res, err = call(reads, range)
        if not res then
            return nil, err
        end
        if res == "" then
            return false
        end
        if type(res) ~= "string" or #res ~= last + 1 then
            return nil, "redis: index " .. key .. " is too short for entry " .. i
        end
        h, err = header(sub(res, 1, HEADER_SIZE), t)
        if not h then
            return nil, err
        end
        hash = index.entry(res, i)
        if not hash then
            if sub(res, -HASH_HEX) == EMPTY then
                return { hash = EMPTY, blob = "", header = h }
            end
            return nil, "redis: index " .. key .. " has a corrupt entry " .. i
        end
        local blob
        blob, err = blob_of(hash)
        if blob then
            return { hash = hash, blob = blob, header = h }
        end
        if blob == nil then
            return nil, err
        end
    end
    return nil, "redis: blob " .. hash .. " of " .. t.tileset .. "/" .. t.z .. "/" .. t.x .. "/" .. t.y
        .. " is missing"
end

--- See renderd.store.read_tile.
function _M.read_tile(t)
    local key = index_key(t)
    local r, err = once(key .. "#" .. t.i, read_entry, key, t.i, t)
    if not r then
        return r, err
    end
    local h = r.header
    return r.hash, r.blob, h.rendered, h.stale
end

-- (the shape once() passes on: raw index, header, blobs; false; or nil, err)
local function read_meta(key, t)
    local tail = arg(1) .. arg(key) .. arg(prefix)
    local res, err = call(fills, EVALSHA .. arg(_M.META_SHA) .. tail)
    if not res and find(tostring(err), "NOSCRIPT", 1, true) then
        res, err = call(fills, EVAL .. arg(_M.META_SCRIPT) .. tail)
    end
    if not res then
        return nil, err
    end
    if type(res) ~= "table" then
        return false    -- (a nil reply: not stored)
    end
    local raw = res[1]
    local h
    h, err = index.check(raw, t.z, t.x0, t.y0, t.n)
    if not h then
        return nil, "redis: index " .. key .. ": " .. err
    end
    local blobs = {}
    local hashes = index.unique(raw, h.n)
    for i = 1, #hashes do
        local b = res[i + 1]
        if type(b) == "string" and b ~= "" then
            blobs[hashes[i]] = b
        end
    end
    return raw, h, blobs
end

--- See renderd.store.read_metatile.
function _M.read_metatile(t)
    local key = index_key(t)
    return once("m|" .. key, read_meta, key, t)
end

return _M
