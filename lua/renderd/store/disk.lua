-- renderd.store.disk: the disk store's backend of renderd.store
-- (docs/storage.md, renderd/store/disk.py).
--
-- Layout: {path}/tiles/{layer}/{z}/{mx >> 5}/{my >> 5}/{mx}_{my}.pack, one
-- pack per metatile in directories of 32 x 32 metatiles (renderd.pack reads
-- it; a tile set of a layer with keys: tiles/{layer}/@{v1}/.../@{vn}/{z}/...),
-- and the pool of tiles that several metatiles share,
-- {path}/blobs/{h[0:2]}/{h}.
--
--   read_tile      the pack's head (its first 4 KB hold the whole head of an
--                  8 x 8 metatile, and often its tiles too), then only the
--                  tile's bytes; a tile in the pool from its pool file. A
--                  pool file gone meanwhile (the pack was replaced and the
--                  file collected) makes the pack be read once more, then
--                  the tile counts as absent (rendered again).
--   read_metatile  the whole pack and the pool files it names.
--
-- A pack of an earlier format counts as absent (a warning, rate-limited):
-- it is rendered again.

local pack = require "renderd.pack"
local index = require "renderd.index"
local log = require "renderd.log"
local rshift = require("bit").rshift

local io_open = io.open
local concat = table.concat
local sub = string.sub
local gsub = string.gsub
local find = string.find
local type = type
local WARN = ngx.WARN

local _M = { _VERSION = "0.1.0" }

--- A render reply carries the whole metatile (the hot cache takes it from
-- there rather than reading the pack back).
_M.META_IN_REPLY = true

-- the first bytes of a pack read at once: the whole head of a metatile of
-- 8 x 8 (64 + 2 * 64 + 24 * 64 bytes at most), and often its tiles too
local HEAD_READ = 4096

local root          -- the store's directory, no trailing slash

--- c: the runtime config's "store" table (path).
function _M.configure(c)
    if type(c.path) ~= "string" or c.path == "" then
        return nil, "store.path missing for a disk store"
    end
    root = gsub(c.path, "/+$", "")
    return true
end

local function absent(err)
    return err and find(err, "No such file", 1, true)
end

-- the directory of a tile set: tiles/{layer}[@{scale}x], then /@{value} per key value
local function tileset_dir(t)
    local values = t.values
    if #values == 0 then
        return root .. "/tiles/" .. t.tileset
    end
    return root .. "/tiles/" .. t.part .. "/@" .. concat(values, "/@")
end

-- {z}/{block x}/{block y}/{mx}_{my}.pack, blocks of 32 x 32 metatiles
local function pack_path(t)
    return tileset_dir(t) .. "/" .. t.z .. "/" .. rshift(t.mx, 5) .. "/"
        .. rshift(t.my, 5) .. "/" .. t.mx .. "_" .. t.my .. ".pack"
end

local function pack_error(t, err)
    return "disk pack " .. t.tileset .. "/" .. t.z .. "/" .. t.mx .. "/" .. t.my .. ": " .. err
end

-- a pool file's bytes; false if it is not there; nil, err
local function read_pool(hash)
    local f, err = io_open(root .. "/blobs/" .. sub(hash, 1, 2) .. "/" .. hash, "rb")
    if not f then
        if absent(err) then
            return false
        end
        return nil, err
    end
    local data = f:read("*a")
    f:close()
    if not data then
        return nil, "cannot read pool blob " .. hash
    end
    return data
end

-- t's pack opened and its header checked: h, raw (the first HEAD_READ
-- bytes, or with `whole` all of them) and the open file (nil with
-- `whole`: closed); false if the metatile is not stored, or stored in an
-- earlier format (a warning); nil, err
local function open_pack(t, whole)
    local f, err = io_open(pack_path(t), "rb")
    if not f then
        if absent(err) then
            return false
        end
        return nil, pack_error(t, err)
    end
    local raw = f:read(whole and "*a" or HEAD_READ) or ""
    local size = f:seek("end")
    if whole then
        f:close()
        f = nil
    end
    local h, old
    h, err, old = pack.header(raw, t.z, t.x0, t.y0, t.n, size)
    if not h then
        if f then
            f:close()
        end
        if old then
            log.once(WARN, "pack-earlier", pack_error(t, err),
                     "; such packs count as absent and are rendered again")
            return false
        end
        return nil, pack_error(t, err)
    end
    return h, raw, f
end

-- t's header, hash and bytes from its pack (hash false: no tile; bytes
-- false: in the pool); false if the metatile is not stored; nil, err.
-- Reads the head, then only the tile's bytes.
local function from_pack(t)
    local h, raw, f = open_pack(t)
    if not h then
        return h, raw
    end
    local err
    if #raw < h.head then
        f:seek("set", #raw)
        raw = raw .. (f:read(h.head - #raw) or "")
    end
    local hash, off, len = pack.locate(raw, h, t.i)
    local body = off
    if hash == nil then
        err = off
    elseif hash and off then
        if off + len <= #raw then
            body = sub(raw, off + 1, off + len)
        else
            f:seek("set", off)
            body = f:read(len)
            if not body or #body ~= len then
                hash, err = nil, "short read of a tile"
            end
        end
    end
    f:close()
    if hash == nil then
        return nil, pack_error(t, err)
    end
    return h, hash, body
end

--- See renderd.store.read_tile.
function _M.read_tile(t)
    for attempt = 1, 2 do
        local h, hash, body = from_pack(t)
        if not h then
            return h, hash
        end
        if not hash then
            return index.EMPTY, "", h.rendered, h.stale
        end
        if body then
            return hash, body, h.rendered, h.stale
        end
        local err
        body, err = read_pool(hash)
        if body then
            return hash, body, h.rendered, h.stale
        end
        if body == nil then
            return nil, err
        end
        if attempt == 1 then
            log.once(WARN, "blob-missing", "pool blob ", hash,
                     " named by a metatile pack is missing; reading the store again")
        end
    end
    return false   -- its pool blob is gone: render it again
end

--- See renderd.store.read_metatile.
function _M.read_metatile(t)
    local h, raw = open_pack(t, true)
    if not h then
        return h, raw
    end
    local idx, blobs, pooled = pack.decode(raw, h)
    if not idx then
        return nil, pack_error(t, blobs)
    end
    for i = 1, #pooled do
        -- (a pool file that cannot be read leaves its tiles out)
        local data = read_pool(pooled[i])
        if data then
            blobs[pooled[i]] = data
        end
    end
    return idx, h, blobs
end

return _M
