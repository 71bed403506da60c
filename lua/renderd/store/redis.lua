-- renderd.store.redis: the Redis store's backend of renderd.store
-- (docs/storage.md, renderd/store/redis.py).
--
-- Keys: {prefix}:pk:{layer}:{z}:{mx}:{my} (the metatile's pack, the disk
-- store's format with a copy of each tile's record before its bytes, read
-- by renderd.pack; or the pack's first bytes),
-- {prefix}:pt:{layer}:{z}:{mx}:{my} (the rest of the pack, when it is cut in
-- two), {prefix}:pool:{hash} (a tile that packs share: a 4-byte count, then
-- its bytes). The commands go over two pipelined connections per nginx
-- worker (renderd.pipeline): one for the requests' reads, one for the
-- hot-cache fills, whose replies (a whole metatile) would otherwise hold up
-- the small replies queued behind them:
--
--   read_tile      GETRANGE of the pack's first bytes (its header, entries
--                  and records up to the tile's) and STRLEN; then, unless the
--                  tile was in those bytes, GETRANGE of a pool tile (unless
--                  the worker keeps it: pool tiles are the repeated ones,
--                  sea and empty land, what most requests ask for, and a
--                  hash's bytes never change), or GETRANGE of the tile's
--                  range of the pack with the copy of its record the writer
--                  put before it, so that a pack replaced in between is
--                  noticed (MULTI/EXEC with both keys where the cut between
--                  them lies inside it)
--   read_metatile  the pack and its pool tiles in one round trip: the
--                  script the runtime config holds (store "meta_script",
--                  renderd/store/redis_scripts.py's META_SCRIPT), by EVALSHA, EVAL
--                  when Redis does not know it yet
--
-- On a Redis Cluster (store "cluster": the seed nodes, "block": metatiles
-- per side of a block) every key begins with its block's namespace,
-- {prefix}:{{layer}:{z}:{bx}:{by}} (renderd/store/redis_cluster.py), whose
-- hash tag is the slot of all the keys a read touches; renderd.cluster
-- sends each read to the slot's master, with two connections per master.
--
-- Concurrent reads of one tile or metatile in a worker share one round
-- trip. After a failure of Redis itself (no connection, no answer in time;
-- a connection dropped under a request is sent again instead) Redis is skipped for
-- `retry` seconds in every worker (renderd.conn's breaker), so an outage
-- costs one timeout, not one per request. Keys of the earlier layout
-- (idx:, blob:, ref:) are not read: such metatiles count as absent.

local pipeline = require "renderd.pipeline"
local pack = require "renderd.pack"
local index = require "renderd.index"
local conn = require "renderd.conn"
local coalesce = require "renderd.coalesce"
local cluster = require "renderd.cluster"
local lrucache = require "resty.lrucache"

local sub = string.sub
local byte = string.byte
local format = string.format
local gsub = string.gsub
local find = string.find
local min = math.min
local floor = math.floor
local type = type
local tostring = tostring
local sha1_bin = ngx.sha1_bin

local _M = { _VERSION = "0.1.0" }

--- A rendered metatile is read back from the store for the hot cache; the
-- broker's reply carries the asked tile only.
_M.META_IN_REPLY = false

-- pool tiles kept per worker (see above)
local POOL_CACHE_ITEMS = 2048
local POOL_CACHE_MAX_BYTES = 16384   -- a larger tile is not kept
local pool_cache = lrucache.new(POOL_CACHE_ITEMS)

-- parsed pack headers by their 64 bytes, per worker (the tiles of a
-- metatile share theirs; the stale flag and times are part of the bytes)
local HEADERS_MAX = 4096
local headers, nheaders = {}, 0

local HEADER_SIZE, EMPTY = index.HEADER_SIZE, index.EMPTY
local RECORD_SIZE = 24
local COUNT_BYTES = 4       -- a pool entry's count, before the tile's bytes
local UNKNOWN_SIZE = 2 ^ 52 -- the pack's size as far as the first read knows
local GETRANGE = pipeline.command({ "GETRANGE" }, 4)
local STRLEN = pipeline.command({ "STRLEN" }, 2)
local MULTI = pipeline.command({ "MULTI" })
local EXEC = pipeline.command({ "EXEC" })
local EVALSHA = pipeline.command({ "EVALSHA" }, 6)
local EVAL = pipeline.command({ "EVAL" }, 6)
local arg = pipeline.arg

local prefix
local wait_seconds      -- how long a request waits for a concurrent read
local down              -- the breaker
local links             -- the two connections: reads, fills
local clu, block        -- a cluster (renderd.cluster), metatiles per side of its blocks

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
    _M.META_SCRIPT = c.meta_script
    _M.META_SHA = hex(sha1_bin(c.meta_script))
    wait_seconds = 2 * timeout + 0.5
    local password = type(c.password) == "string" and c.password ~= "" and c.password or nil
    if c.cluster ~= nil then
        if type(c.cluster) ~= "table" or #c.cluster == 0 or type(c.block) ~= "number" or c.block < 1 then
            return nil, "store.cluster (seed nodes) and store.block malformed for a Redis Cluster store"
        end
        for _, s in ipairs(c.cluster) do
            if type(s) ~= "table" or type(s.host) ~= "string" or type(s.port) ~= "number" then
                return nil, "store.cluster: each seed node needs a host and a port"
            end
        end
        clu = cluster.new({ seeds = c.cluster, password = password, timeout_ms = timeout * 1000 }, shm, retry,
                          { "reads", "fills" })
        block = c.block
        return true
    end
    clu = nil
    down = conn.breaker(shm, "redis", retry)
    local where = { host = c.host, port = c.port, socket = sock, db = c.db, timeout_ms = timeout * 1000,
                    password = password }
    links = { reads = pipeline.new(where), fills = pipeline.new(where) }
    return true
end

-- commands over pipelined connection `use` (of the master of hash slot
-- `slot` on a cluster): the reply (a list of n replies with n), or nil,
-- err; a failure that says Redis is down (renderd.conn.peer_failed) trips
-- the breaker
local function call(use, slot, req, n)
    local res, err
    if clu then
        res, err = clu:call(use, slot, req, n)
    elseif down:tripped() then
        return nil, "redis marked down after a recent failure"
    else
        res, err = links[use]:call(req, nil, n)
        if res == nil and conn.peer_failed(err) then
            down:trip()
        end
    end
    if res == nil then
        err = tostring(err)
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

-- the metatile's two keys, the namespace of its keys and pool, and the
-- hash slot of them all on a cluster (0 on one server)
local function pack_keys(t)
    local where = t.tileset .. ":" .. t.z .. ":" .. t.mx .. ":" .. t.my
    local ns, slot = prefix, 0
    if clu then
        local tag = t.tileset .. ":" .. t.z .. ":" .. floor(t.mx / block) .. ":" .. floor(t.my / block)
        ns, slot = prefix .. ":{" .. tag .. "}", cluster.slot(tag)
    end
    return ns .. ":pk:" .. where, ns .. ":pt:" .. where, ns, slot
end

local function pack_error(t, err)
    return "redis pack " .. t.tileset .. "/" .. t.z .. "/" .. t.mx .. "/" .. t.my .. ": " .. err
end

-- the pack header of raw (a pack's first `want` bytes, or all of it if it
-- is shorter) for t; nil, err. (A tile's location beyond the pack's end
-- shows when its bytes are read.)
local function header(raw, t, want)
    local head = sub(raw, 1, HEADER_SIZE)
    local h = headers[head]
    if not (h and h.z == t.z and h.x0 == t.x0 and h.y0 == t.y0 and h.n == t.n) then
        local err
        h, err = pack.header(raw, t.z, t.x0, t.y0, t.n, UNKNOWN_SIZE)
        if not h then
            return nil, pack_error(t, err)
        end
        if nheaders >= HEADERS_MAX then
            headers, nheaders = {}, 0
        end
        headers[head] = h
        nheaders = nheaders + 1
    end
    if #raw < min(h.head, want) then
        return nil, pack_error(t, "truncated pack")
    end
    return h
end

-- a pool tile's bytes (of the pool of namespace ns, in hash slot slot),
-- false if it is gone, or nil, err
local function pool_tile(ns, slot, hash)
    local blob = pool_cache:get(hash)
    if blob then
        return blob
    end
    local err
    blob, err = call("reads", slot, GETRANGE .. arg(ns .. ":pool:" .. hash) .. arg(COUNT_BYTES) .. arg(-1))
    if not blob then
        return nil, err
    end
    if type(blob) ~= "string" or blob == "" then
        return false
    end
    if #blob <= POOL_CACHE_MAX_BYTES then
        pool_cache:set(hash, blob)
    end
    return blob
end

-- bytes [off, off + len) of the pack whose first key holds c bytes (as
-- step 1 read it), which the writer put right after a copy of their record
-- rec: one GETRANGE of the copy and the bytes, or, where the cut between
-- the two keys lies inside them, both keys' parts and the first one's
-- length in one transaction. The bytes; false if the copy is not the
-- record (the pack was replaced since rec was read, or the range is not
-- in it); nil, err
local function pack_range(pk, pt, slot, rec, c, off, len)
    local from, to = off - RECORD_SIZE, off + len - 1
    local got, err
    if to < c then
        got, err = call("reads", slot, GETRANGE .. arg(pk) .. arg(from) .. arg(to))
    elseif from >= c then
        got, err = call("reads", slot, GETRANGE .. arg(pt) .. arg(from - c) .. arg(to - c))
    else
        local res
        res, err = call("reads", slot, MULTI .. STRLEN .. arg(pk) .. GETRANGE .. arg(pk) .. arg(from)
            .. arg(c - 1) .. GETRANGE .. arg(pt) .. arg(0) .. arg(to - c) .. EXEC, 5)
        local x = res and res[5]
        if type(x) == "table" then
            if x[1] ~= c or type(x[2]) ~= "string" or type(x[3]) ~= "string" then
                return false
            end
            got = x[2] .. x[3]
        else
            got = res and false
        end
    end
    if got == nil then
        return nil, err
    end
    if type(got) ~= "string" or #got ~= RECORD_SIZE + len or sub(got, 1, RECORD_SIZE) ~= rec then
        return false
    end
    return sub(got, RECORD_SIZE + 1)
end

-- (the shape once() passes on: a table {hash, blob, header}, false, or nil, err)
local function read_entry(t)
    local pk, pt, ns, slot = pack_keys(t)
    -- the header, the entries and the records up to entry i's: records are
    -- numbered in order of first appearance, so entry i names one of 1..i+1
    local want = HEADER_SIZE + 2 * t.n * t.n + RECORD_SIZE * (t.i + 1)
    local first = GETRANGE .. arg(pk) .. arg(0) .. arg(want - 1) .. STRLEN .. arg(pk)
    local hash
    -- a pool tile gone or a pack replaced between the two reads makes the
    -- pack be read once more
    for _ = 1, 2 do
        local res, err = call("reads", slot, first, 2)
        if not res then
            return nil, err
        end
        local raw, c = res[1], res[2]
        if raw == "" then
            return false
        end
        if type(raw) ~= "string" or type(c) ~= "number" then
            return nil, pack_error(t, "not a string")
        end
        local h
        h, err = header(raw, t, want)
        if not h then
            return nil, err
        end
        -- (records are numbered in order of first appearance: entry i's is
        -- one of 1..i+1, in the bytes read)
        local k = byte(raw, HEADER_SIZE + 2 * t.i + 1) + 256 * byte(raw, HEADER_SIZE + 2 * t.i + 2)
        if k > t.i + 1 then
            return nil, pack_error(t, "entry " .. t.i .. " names record " .. k .. " before record "
                .. t.i + 1)
        end
        local off, len
        hash, off, len = pack.locate(raw, h, t.i)
        if hash == nil then
            return nil, pack_error(t, off)
        end
        if not hash then
            return { hash = EMPTY, blob = "", header = h }
        end
        local blob
        if not off then
            blob, err = pool_tile(ns, slot, hash)
        elseif off + len <= #raw then
            blob = sub(raw, off + 1, off + len)
        else
            local p = h.head - RECORD_SIZE * (h.count - k + 1)
            blob, err = pack_range(pk, pt, slot, sub(raw, p + 1, p + RECORD_SIZE), c, off, len)
        end
        if blob then
            return { hash = hash, blob = blob, header = h }
        end
        if blob == nil then
            return nil, err
        end
    end
    return nil, "redis: tile " .. hash .. " of " .. t.tileset .. "/" .. t.z .. "/" .. t.x .. "/" .. t.y
        .. " changed or went while being read"
end

--- See renderd.store.read_tile.
function _M.read_tile(t)
    local r, err = once("t|" .. t.tileset .. ":" .. t.z .. ":" .. t.x .. ":" .. t.y, read_entry, t)
    if not r then
        return r, err
    end
    local h = r.header
    return r.hash, r.blob, h.rendered, h.stale
end

-- (the shape once() passes on: the index, header, blobs; false; or nil, err)
local function read_meta(t)
    local pk, pt, ns, slot = pack_keys(t)
    local tail = arg(2) .. arg(pk) .. arg(pt) .. arg(ns)
    local res, err = call("fills", slot, EVALSHA .. arg(_M.META_SHA) .. tail)
    if not res and find(tostring(err), "NOSCRIPT", 1, true) then
        res, err = call("fills", slot, EVAL .. arg(_M.META_SCRIPT) .. tail)
    end
    if not res then
        return nil, err
    end
    if type(res) ~= "table" then
        return false    -- (a nil reply: not stored)
    end
    local raw = res[1]
    local h
    h, err = pack.header(raw, t.z, t.x0, t.y0, t.n)
    if not h then
        return nil, pack_error(t, err)
    end
    local idx, blobs, pooled = pack.decode(raw, h)
    if not idx then
        return nil, pack_error(t, blobs)
    end
    for i = 1, #pooled do
        local b = res[i + 1]
        if type(b) == "string" and b ~= "" then
            blobs[pooled[i]] = b
        end
    end
    return idx, h, blobs
end

--- See renderd.store.read_metatile.
function _M.read_metatile(t)
    local pk = pack_keys(t)
    return once("m|" .. pk, read_meta, t)
end

return _M
