-- renderd.index: read the metatile index (renderd/store/index.py): fixed-
-- width ASCII, a 64-byte header then n*n entries of 32 hex digits + "\n",
-- x-major; an entry of 32 zeros means "no tile".
--
--   local index = require "renderd.index"
--   local h, err = index.header(raw)       -- {stale, z, x0, y0, n, rendered, data, ext}
--   local hash = index.entry(raw, i)       -- i 0-based; nil for EMPTY
--   local list = index.unique(raw, n)      -- distinct non-empty hashes, in order
--   local ok, err = index.check(raw, z, x0, y0, n)  -- header matches the metatile
--   local h, err = index.check(head, z, x0, y0, n, true)  -- the first 64 bytes only

local sub = string.sub
local find = string.find
local tonumber = tonumber
local type = type

local _M = { _VERSION = "0.1.0" }

local MAGIC = "RPYI1 "
local HEADER_SIZE = 64
local ENTRY_SIZE = 33
local HASH_HEX = 32

_M.HEADER_SIZE = HEADER_SIZE
_M.ENTRY_SIZE = ENTRY_SIZE
_M.EMPTY = ("0"):rep(HASH_HEX)
local EMPTY = _M.EMPTY

--- Parse the header; nil, err for anything that is not a whole index (with
-- head_only: for anything that does not begin with a whole header).
function _M.header(raw, head_only)
    if type(raw) ~= "string" or #raw < HEADER_SIZE or sub(raw, 1, 6) ~= MAGIC then
        return nil, "not a metatile index"
    end
    local z = tonumber(sub(raw, 9, 10))
    local x0 = tonumber(sub(raw, 12, 18))
    local y0 = tonumber(sub(raw, 20, 26))
    local n = tonumber(sub(raw, 28, 29))
    local rendered = tonumber(sub(raw, 31, 40))
    local data = tonumber(sub(raw, 42, 51))
    local ext = sub(raw, 53, 56)
    local space = find(ext, " ", 1, true)
    if space then
        ext = sub(ext, 1, space - 1)
    end
    if not (z and x0 and y0 and n and rendered and data) or n < 1 then
        return nil, "corrupt metatile index header"
    end
    if not head_only and #raw ~= HEADER_SIZE + n * n * ENTRY_SIZE then
        return nil, "truncated metatile index"
    end
    return {
        stale = sub(raw, 7, 7) == "1",
        z = z, x0 = x0, y0 = y0, n = n,
        rendered = rendered, data = data, ext = ext,
    }
end

--- The header is for metatile (z, x0, y0, n)?
function _M.check(raw, z, x0, y0, n, head_only)
    local h, err = _M.header(raw, head_only)
    if not h then
        return nil, err
    end
    if h.z ~= z or h.x0 ~= x0 or h.y0 ~= y0 or h.n ~= n then
        return nil, "index is for metatile " .. h.z .. "/" .. h.x0 .. "/" .. h.y0
    end
    return h
end

--- Hash of entry i (0-based), nil if EMPTY or malformed.
function _M.entry(raw, i)
    local off = HEADER_SIZE + ENTRY_SIZE * i + 1
    local h = sub(raw, off, off + HASH_HEX - 1)
    if #h ~= HASH_HEX or h == EMPTY or find(h, "[^0-9a-f]") then
        return nil
    end
    return h
end

--- Distinct non-empty hashes in index order (the wire's blob order).
function _M.unique(raw, n)
    local seen, out, k = {}, {}, 0
    for i = 0, n * n - 1 do
        local h = _M.entry(raw, i)
        if h and not seen[h] then
            seen[h] = true
            k = k + 1
            out[k] = h
        end
    end
    return out
end

return _M
