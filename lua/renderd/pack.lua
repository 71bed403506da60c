-- renderd.pack: read a metatile pack of the disk store (renderd/store/disk.py,
-- docs/storage.md). A pack of an n x n metatile is, with L = 64 + 33 n^2:
--
--   [0, L)                the metatile index (renderd.index)
--   [L, L + 20 n^2)       one location per index entry, x-major, ASCII
--                         "%010d %08d\n": the offset of the tile's bytes from
--                         the start of the file and their length; 0 and 0
--                         means an empty entry, or a tile in the shared pool
--                         ({path}/blobs/ab/cd/<hash>)
--   then                  the bytes of the tiles kept in the pack
--
--   local pack = require "renderd.pack"
--   local idx, err = pack.index(raw)               -- the index part, for renderd.index
--   local bytes, err = pack.tile(raw, n, i)        -- entry i (0-based): its bytes in the
--                                                  -- pack, false if in the pool, nil, err
--   local inline, pooled, err = pack.tiles(raw, n) -- {hash = bytes}, {hash, ...}: the
--                                                  -- distinct tiles in the pack / the pool
--
-- A location that is not 0/0 must lie after the location table and inside
-- the file, and belong to a non-empty entry; otherwise the pack is corrupt.

local index = require "renderd.index"

local sub = string.sub
local find = string.find
local rep = string.rep
local tonumber = tonumber
local type = type

local _M = { _VERSION = "0.1.0" }

local HEADER_SIZE = index.HEADER_SIZE
local ENTRY_SIZE = index.ENTRY_SIZE
local LOCATION_SIZE = 20
local LOCATION = "^" .. rep("%d", 10) .. " " .. rep("%d", 8) .. "\n$"

_M.LOCATION_SIZE = LOCATION_SIZE

--- The index part of a pack (raw:sub(1, L)); nil, err if the file is too
-- short to hold it and its location table. Check it with renderd.index.
function _M.index(raw)
    if type(raw) ~= "string" or #raw < HEADER_SIZE then
        return nil, "not a metatile pack"
    end
    local n = tonumber(sub(raw, 28, 29))
    if not n or n < 1 then
        return nil, "corrupt metatile index header"
    end
    if #raw < HEADER_SIZE + (ENTRY_SIZE + LOCATION_SIZE) * n * n then
        return nil, "truncated pack"
    end
    return sub(raw, 1, HEADER_SIZE + ENTRY_SIZE * n * n)
end

-- offset and length of entry i (0, 0: empty or in the pool), or nil, nil, err
local function location(raw, n, i)
    local table_start = HEADER_SIZE + ENTRY_SIZE * n * n
    local p = table_start + LOCATION_SIZE * i + 1
    local loc = sub(raw, p, p + LOCATION_SIZE - 1)
    if not find(loc, LOCATION) then
        return nil, nil, "corrupt location of entry " .. i
    end
    local off, len = tonumber(sub(loc, 1, 10)), tonumber(sub(loc, 12, 19))
    if off == 0 and len == 0 then
        return 0, 0
    end
    if off < table_start + LOCATION_SIZE * n * n or off + len > #raw then
        return nil, nil, "location " .. off .. "/" .. len .. " of entry " .. i
            .. " is outside the pack's tiles"
    end
    return off, len
end

--- The bytes of entry i (0-based) kept in the pack; false if the entry is
-- in the pool (or empty: see index.entry); nil, err if its location is corrupt.
function _M.tile(raw, n, i)
    local off, len, err = location(raw, n, i)
    if not off then
        return nil, err
    end
    if len == 0 and off == 0 then
        return false
    end
    return sub(raw, off + 1, off + len)
end

--- The distinct tiles of a pack: {hash = bytes} of those kept in it and the
-- list of the hashes in the pool, in index order; nil, nil, err if corrupt.
function _M.tiles(raw, n)
    local inline, pooled, seen = {}, {}, {}
    for i = 0, n * n - 1 do
        local h = index.entry(raw, i)
        local off, len, err = location(raw, n, i)
        if not off then
            return nil, nil, err
        end
        local in_pool = off == 0 and len == 0
        if not h and not in_pool then
            return nil, nil, "empty entry " .. i .. " has a location"
        end
        if h and not seen[h] then
            seen[h] = true
            if in_pool then
                pooled[#pooled + 1] = h
            else
                inline[h] = sub(raw, off + 1, off + len)
            end
        end
    end
    return inline, pooled
end

return _M
