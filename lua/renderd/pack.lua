-- renderd.pack: read a metatile pack of either store (renderd/store/pack.py,
-- docs/storage.md). A pack of an n x n metatile with D distinct tiles is,
-- integers unsigned little-endian, E = 64 + 2 n^2:
--
--   [0, 64)               header: the index header's fields at its offsets
--                         (renderd.index), magic "RPYP2 ", D in 4 digits at 57
--   [64, E)               one uint16 per tile, x-major: 0 = no tile, k = record k
--   [E, E + 24 D)         record k (from 1): the content hash's 16 bytes, then
--                         uint32 offset from the start of the file and uint32
--                         length of the tile's bytes; 0 and 0 = in the shared
--                         pool (disk {path}/blobs/ab/<hash>, Redis {prefix}:pool:<hash>)
--   then                  the bytes of the tiles kept in the pack (in the Redis
--                         store's packs each after a copy of its record)
--
--   local pack = require "renderd.pack"
--   local h, err, earlier = pack.header(raw, z, x0, y0, n [, size])
--       -- {stale, z, x0, y0, n, rendered, data, ext, count, head, size} of the
--       -- pack of that metatile; earlier = true if raw is a pack of the earlier
--       -- format. raw: the whole pack, or its first bytes and `size` the
--       -- file's (then read up to h.head before calling locate)
--   local hash, off, len = pack.locate(raw, h, i)  -- entry i (0-based): hash false
--       -- for no tile, off false for a tile in the pool; nil, err if corrupt
--   local hash, bytes = pack.tile(raw, h, i)   -- the same with the tile's bytes
--       -- from a whole pack (bytes false for a tile in the pool)
--   local idx, inline, pooled = pack.decode(raw, h)  -- the whole head: the index
--       -- (renderd.index format), {hash = bytes} kept in the pack, {hash, ...} in
--       -- the pool, in index order; nil, err if corrupt
--
-- A request reads only its entry, its record and its bytes; decode checks
-- every entry and record as the Python reader does.

local sub = string.sub
local byte = string.byte
local format = string.format
local find = string.find
local rep = string.rep
local concat = table.concat
local tonumber = tonumber
local type = type
local ipairs = ipairs

local _M = { _VERSION = "0.1.0" }

local MAGIC = "RPYP2 "
local EARLIER = "RPYI1 "   -- the ASCII format; nothing converts it
local HEADER_SIZE = 64
local ENTRY_SIZE = 2
local RECORD_SIZE = 24
local HEX16 = rep("%02x", 16)
local NO_HASH = rep("0", 32)

-- name, first and last position (1-based) of each number in the header
local FIELDS = {
    { "z", 9, 10 }, { "x0", 12, 18 }, { "y0", 20, 26 }, { "n", 28, 29 },
    { "rendered", 31, 40 }, { "data", 42, 51 }, { "count", 58, 61 },
}

--- The header of the pack of metatile (z, x0, y0, n) (see above); nil, err,
-- earlier if raw is not that, or is shorter than its head.
function _M.header(raw, z, x0, y0, n, size)
    if type(raw) ~= "string" or #raw < HEADER_SIZE or sub(raw, 1, 6) ~= MAGIC then
        local earlier = type(raw) == "string" and sub(raw, 1, 6) == EARLIER
        return nil, earlier and "a pack of an earlier format (RPYI1)" or "not a metatile pack", earlier
    end
    local h = { stale = sub(raw, 7, 7) == "1", ext = (sub(raw, 53, 56):gsub(" +$", "")) }
    for _, f in ipairs(FIELDS) do
        local v = tonumber(sub(raw, f[2], f[3]))
        if not v then
            return nil, "corrupt metatile pack header"
        end
        h[f[1]] = v
    end
    if h.z ~= z or h.x0 ~= x0 or h.y0 ~= y0 or h.n ~= n then
        return nil, "pack is of metatile " .. h.z .. "/" .. h.x0 .. "/" .. h.y0 .. " of size " .. h.n
    end
    if not find(sub(raw, 58, 61), "^%d%d%d%d$") or h.count > n * n then
        return nil, "corrupt count of distinct tiles"
    end
    h.head = HEADER_SIZE + ENTRY_SIZE * n * n + RECORD_SIZE * h.count
    h.size = size or #raw
    if h.size < h.head then
        return nil, "truncated pack"
    end
    return h
end

local function u32(raw, p)
    local a, b, c, d = byte(raw, p, p + 3)
    return a + b * 256 + c * 65536 + d * 16777216
end

-- record k: hash, offset, length (0, 0: in the pool), or nil, err
local function record(raw, h, k)
    local p = h.head - RECORD_SIZE * (h.count - k + 1) + 1
    local hash = format(HEX16, byte(raw, p, p + 15))
    if hash == NO_HASH then
        return nil, "record " .. k .. " has no hash"
    end
    local off, len = u32(raw, p + 16), u32(raw, p + 20)
    if (off ~= 0 or len ~= 0) and (off < h.head or off + len > h.size) then
        return nil, "location " .. off .. "/" .. len .. " of record " .. k .. " is outside the pack's tiles"
    end
    return hash, off, len
end

-- the record number of entry i, or nil, err
local function entry(raw, h, i)
    local lo, hi = byte(raw, HEADER_SIZE + ENTRY_SIZE * i + 1, HEADER_SIZE + ENTRY_SIZE * i + 2)
    local k = lo + hi * 256
    if k > h.count then
        return nil, "entry " .. i .. " names record " .. k .. " of " .. h.count
    end
    return k
end

--- Entry i (0-based): its hash and where its bytes are in the pack (offset
-- from the start, length); hash false for no tile, offset false for a tile
-- in the pool; nil, err if corrupt. Needs raw up to h.head only.
function _M.locate(raw, h, i)
    local k, err = entry(raw, h, i)
    if not k then
        return nil, err
    end
    if k == 0 then
        return false
    end
    local hash, off, len = record(raw, h, k)
    if not hash then
        return nil, off
    end
    if off == 0 and len == 0 then
        return hash, false
    end
    return hash, off, len
end

--- Entry i (0-based) of a whole pack: its hash and its bytes kept in the
-- pack; hash false for no tile, bytes false for a tile in the pool; nil,
-- err if corrupt.
function _M.tile(raw, h, i)
    local hash, off, len = _M.locate(raw, h, i)
    if hash and off then
        return hash, sub(raw, off + 1, off + len)
    end
    return hash, off
end

--- The whole head: the index as renderd.index reads it (what the hot cache
-- takes), {hash = bytes} of the tiles kept in the pack and the list of the
-- hashes in the pool, in index order; nil, err if anything is corrupt.
function _M.decode(raw, h)
    local hashes, inline, pooled, seen = {}, {}, {}, {}
    for k = 1, h.count do
        local hash, off, len = record(raw, h, k)
        if not hash then
            return nil, off
        end
        if seen[hash] then
            return nil, "two records have one hash"
        end
        seen[hash] = true
        hashes[k] = hash
        if off == 0 and len == 0 then
            pooled[#pooled + 1] = hash
        else
            inline[hash] = sub(raw, off + 1, off + len)
        end
    end
    local lines, last = {}, 0
    for i = 0, h.n * h.n - 1 do
        local k, err = entry(raw, h, i)
        if not k then
            return nil, err
        end
        if k > last then  -- records are numbered in order of first appearance
            if k ~= last + 1 then
                return nil, "entry " .. i .. " names record " .. k .. " before record " .. (last + 1)
            end
            last = k
        end
        lines[i + 1] = k == 0 and NO_HASH or hashes[k]
    end
    if last ~= h.count then
        return nil, "a record is named by no entry"
    end
    -- the index header: the same fields at the same offsets, its own magic
    local idx = EARLIER .. sub(raw, 7, 56) .. rep(" ", 7) .. "\n" .. concat(lines, "\n") .. "\n"
    return idx, inline, pooled
end

return _M
