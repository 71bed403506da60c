"""The Redis store's server-side Lua scripts, as text.

They assume the key layout of docs/storage.md ("Redis store"), with the
prefix passed as ``ARGV[1]`` and the index key, where there is one, as
``KEYS[1]``::

    {prefix}:idx:{layer}:{z}:{mx}:{my}   the metatile's index (renderd/store/index.py)
    {prefix}:blob:{hash}                 the encoded tile
    {prefix}:ref:{hash}                  how many indexes name the blob
    {prefix}:gc:active, :gc:seen, :gc:count   only while a collection runs

Who runs each:

- ``PUT_SCRIPT``, ``DELETE_SCRIPT``, ``STALE_SCRIPT``: the store in Python
  (renderd/store/redis.py), for every change of an index, so reference
  counts move in the same atomic step;
- ``GC_BEGIN_SCRIPT``, ``GC_COUNT_SCRIPT``, ``GC_FIX_SCRIPT``,
  ``GC_END_SCRIPT``: the store's consistency pass (``collect_garbage``);
- ``TILE_SCRIPT``: the store's ``read_tile``, one tile in one round trip;
- ``META_SCRIPT``: the store's ``get_metatile``, and nginx, which gets its
  text in the runtime JSON (store ``meta_script``, renderd/nginx.py) and
  runs it with EVALSHA to fill the hot cache. nginx reads one tile with
  plain GETRANGE and GET, no script.

The ``LUA_*`` pieces are shared parts the scripts begin with. The texts of
``TILE_SCRIPT`` and ``META_SCRIPT`` are in docs/storage.md verbatim.
"""

#: Shared by every script: an index value's tiles along a side (nil if it
#: is not a whole index).
LUA_SIZE = """\
local EMPTY = string.rep('0', 32)
local function size(raw)
  if type(raw) ~= 'string' or #raw < 64 or string.sub(raw, 1, 6) ~= 'RPYI1 ' then return nil end
  local n = tonumber(string.sub(raw, 28, 29))
  if not n or #raw ~= 64 + n * n * 33 then return nil end
  return n
end
"""

#: The distinct non-empty hashes of an index value.
LUA_DISTINCT = LUA_SIZE + """\
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
"""

#: Writers' scripts keep a running collection's reference count in step.
LUA_TRACK = """\
local P = ARGV[1]
local function release(h)
  if redis.call('DECR', P .. ':ref:' .. h) <= 0 then
    redis.call('DEL', P .. ':ref:' .. h, P .. ':blob:' .. h)
  end
end
local function gc_track(key, old, new)
  if redis.call('EXISTS', P .. ':gc:active') == 0 then return end
  local count = P .. ':gc:count'
  if redis.call('SADD', P .. ':gc:seen', key) == 0 then
    for _, h in ipairs(old) do
      if redis.call('HINCRBY', count, h, -1) <= 0 then redis.call('HDEL', count, h) end
    end
  end
  for _, h in ipairs(new) do redis.call('HINCRBY', count, h, 1) end
end
"""

#: KEYS[1] index key; ARGV[1] prefix, ARGV[2] new index, ARGV[3..] hash, blob pairs.
#: Returns how many blobs were created.
PUT_SCRIPT = LUA_DISTINCT + LUA_TRACK + """\
local new = distinct(ARGV[2])
if not new then return redis.error_reply('ERR not a metatile index') end
local given = {}
for i = 3, #ARGV, 2 do given[ARGV[i]] = ARGV[i + 1] end
for _, h in ipairs(new) do
  if not given[h] and redis.call('EXISTS', P .. ':blob:' .. h) == 0 then
    return redis.error_reply('ERR blob ' .. h .. ' is neither stored nor given')
  end
end
local old = distinct(redis.call('GET', KEYS[1])) or {}
local written = 0
for _, h in ipairs(new) do
  redis.call('INCR', P .. ':ref:' .. h)
  if given[h] and redis.call('SET', P .. ':blob:' .. h, given[h], 'NX') then
    written = written + 1
  end
end
for _, h in ipairs(old) do release(h) end
redis.call('SET', KEYS[1], ARGV[2])
gc_track(KEYS[1], old, new)
return written
"""

#: KEYS[1] index key; ARGV[1] prefix. Returns 1 if the index existed.
DELETE_SCRIPT = LUA_DISTINCT + LUA_TRACK + """\
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local old = distinct(raw) or {}
for _, h in ipairs(old) do release(h) end
redis.call('DEL', KEYS[1])
gc_track(KEYS[1], old, {})
return 1
"""

#: KEYS[1] index key. Returns 1 if an index was there and is now stale.
STALE_SCRIPT = """\
if redis.call('GETRANGE', KEYS[1], 0, 5) ~= 'RPYI1 ' then return 0 end
redis.call('SETRANGE', KEYS[1], 6, '1')
return 1
"""

#: Reader. KEYS[1] index key; ARGV[1] prefix; ARGV[2] entry (x-major, from 0).
#: nil if no index, else one string: the index's 64-byte header, the entry's
#: 32 hex digits (zeros: no tile there), then the tile's bytes (none if the
#: tile is empty or its blob is missing).
TILE_SCRIPT = LUA_SIZE + """\
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
"""

#: Reader. KEYS[1] index key; ARGV[1] prefix. nil if no index, else
#: {index, blob...}: one blob per distinct non-empty hash in order of first
#: appearance ('' if missing), the order of the wire protocol's meta reply.
META_SCRIPT = LUA_DISTINCT + """\
local raw = redis.call('GET', KEYS[1])
local hashes = distinct(raw)
if not hashes then return nil end
local out = {raw}
for _, h in ipairs(hashes) do out[#out + 1] = redis.call('GET', ARGV[1] .. ':blob:' .. h) or '' end
return out
"""

#: Collector scripts: ARGV[1] prefix, ARGV[2] run token, ARGV[3] lease in ms.
LUA_GC_OWNED = """\
local P = ARGV[1]
if redis.call('GET', P .. ':gc:active') ~= ARGV[2] then
  return redis.error_reply('ERR garbage collection lost its lease')
end
redis.call('PEXPIRE', P .. ':gc:active', ARGV[3])
"""

GC_BEGIN_SCRIPT = """\
local P = ARGV[1]
if not redis.call('SET', P .. ':gc:active', ARGV[2], 'NX', 'PX', ARGV[3]) then return 0 end
redis.call('DEL', P .. ':gc:seen', P .. ':gc:count')
return 1
"""

#: KEYS: index keys to count (each once per run).
GC_COUNT_SCRIPT = LUA_DISTINCT + LUA_GC_OWNED + """\
for _, k in ipairs(KEYS) do
  if redis.call('SADD', P .. ':gc:seen', k) == 1 then
    for _, h in ipairs(distinct(redis.call('GET', k)) or {}) do
      redis.call('HINCRBY', P .. ':gc:count', h, 1)
    end
  end
end
return #KEYS
"""

#: ARGV[4..]: hashes to settle. Returns {present, deleted, bytes freed, refs fixed, missing}.
GC_FIX_SCRIPT = LUA_GC_OWNED + """\
local present, deleted, freed, fixed, missing = 0, 0, 0, 0, 0
for i = 4, #ARGV do
  local h = ARGV[i]
  local bk, rk = P .. ':blob:' .. h, P .. ':ref:' .. h
  local want = tonumber(redis.call('HGET', P .. ':gc:count', h) or '0')
  local size = -1
  if redis.call('EXISTS', bk) == 1 then
    size = redis.call('STRLEN', bk)
    present = present + 1
  end
  if want <= 0 then
    redis.call('DEL', bk, rk)
    if size >= 0 then
      deleted = deleted + 1
      freed = freed + size
    end
  else
    if tonumber(redis.call('GET', rk) or '0') ~= want then
      redis.call('SET', rk, want)
      fixed = fixed + 1
    end
    if size < 0 then missing = missing + 1 end
  end
end
return {present, deleted, freed, fixed, missing}
"""

GC_END_SCRIPT = """\
local P = ARGV[1]
if redis.call('GET', P .. ':gc:active') ~= ARGV[2] then return 0 end
redis.call('DEL', P .. ':gc:active', P .. ':gc:seen', P .. ':gc:count')
return 1
"""
