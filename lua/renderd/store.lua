-- renderd.store: the tile store as the front reads it, one interface over
-- the backends renderd.store.disk and renderd.store.redis (docs/storage.md).
--
--   local store = require "renderd.store"
--   local ok, err = store.configure(rt, ngx.shared.rpy_locks)
--   -- rt: the checked runtime config (renderd.runtime); the dict is for flags
--   -- t: a tile request from renderd.path.parse
--   local hash, body, rendered, stale = store.read_tile(t)
--   -- hash: 32 hex digits, or index.EMPTY where the renderer stored no tile
--   --   (body ""); rendered: unix seconds; stale: marked for re-rendering;
--   -- false: not stored; nil, err: the store failed
--   local raw, header, blobs = store.read_metatile(t)
--   -- the metatile for the hot cache: its index (renderd.index format),
--   --   the parsed header and {hash = bytes} of its distinct tiles
--   --   (a tile whose bytes are missing is left out); false; nil, err
--   store.META_IN_REPLY   -- whether a render reply should carry the whole
--                         -- metatile, or it is read back from the store
--
-- A backend is a module with configure(store_cfg, ...), read_tile(t),
-- read_metatile(t) and META_IN_REPLY, holding everything of its kind; the
-- request path does not know which one it talks to.

local tostring = tostring
local pcall = pcall
local require = require

local _M = { _VERSION = "0.1.0" }

local BACKENDS = { disk = "renderd.store.disk", redis = "renderd.store.redis" }

local backend

--- Choose and set up the backend of rt.store.kind; true, or nil, err.
function _M.configure(rt, shm)
    local c = rt.store
    local name = BACKENDS[c.kind]
    if not name then
        return nil, "unknown store kind " .. tostring(c.kind)
    end
    local ok, b = pcall(require, name)
    if not ok then
        return nil, "cannot load the " .. c.kind .. " store: " .. tostring(b)
    end
    local err
    ok, err = b.configure(c, rt.store_timeout, rt.store_retry, shm)
    if not ok then
        return nil, err
    end
    backend = b
    _M.kind = c.kind
    _M.META_IN_REPLY = b.META_IN_REPLY
    return true
end

--- See the module comment.
function _M.read_tile(t)
    return backend.read_tile(t)
end

--- See the module comment.
function _M.read_metatile(t)
    return backend.read_metatile(t)
end

--- The backend module (for its own functions in tests and tools).
function _M.backend()
    return backend
end

return _M
