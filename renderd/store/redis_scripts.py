"""The Redis store's server-side Lua scripts, as text.

They assume the key layout of docs/storage.md ("Redis store"), with the
prefix passed as ``ARGV[1]``; a metatile's two keys, where there are some,
are ``KEYS[1]`` (its pack, or the pack's first bytes) and ``KEYS[2]`` (the
rest of the pack, if any)::

    {prefix}:pk:{layer}:{z}:{mx}:{my}    the metatile's pack (renderd/store/pack.py), or its first bytes
    {prefix}:pt:{layer}:{z}:{mx}:{my}    the rest of the pack, when it is cut in two
    {prefix}:pool:{hash}                 a tile several metatiles name: uint32 LE count, then its bytes
    {prefix}:gc:active, :gc:seen, :gc:count   only while a collection runs

Who runs each:

- ``PUT_SCRIPT``, ``DELETE_SCRIPT``, ``STALE_SCRIPT``: the store in Python
  (renderd/store/redis.py), for every change of a pack, so the pool's
  reference counts move in the same atomic step;
- ``GC_BEGIN_SCRIPT``, ``GC_COUNT_SCRIPT``, ``GC_FIX_SCRIPT``,
  ``GC_END_SCRIPT``: the store's consistency pass (``collect_garbage``);
- ``HEADS_SCRIPT``: the store's index readers, the heads of a batch of packs;
- ``TILE_SCRIPT``: the store's ``read_tile``, one tile in one round trip;
- ``META_SCRIPT``: the store's ``get_metatile``, and nginx, which gets its
  text in the runtime JSON (store ``meta_script``, renderd/nginx/runtime_json.py)
  and runs it with EVALSHA to fill the hot cache. nginx reads one tile with
  plain GETRANGE and STRLEN (in MULTI where a tile lies across the cut), no script.

The ``LUA_*`` pieces are shared parts the scripts begin with. The texts of
``TILE_SCRIPT`` and ``META_SCRIPT`` are in docs/storage.md verbatim.
"""

#: Shared by the scripts that read packs: the dimensions of a pack from its
#: first 64 bytes, its head read from a key, the hashes it leaves to the pool.
LUA_PACK = """\
local byte, sub = string.byte, string.sub
local HEX = string.rep('%02x', 16)
local function u32(s, p)
  local a, b, c, d = byte(s, p, p + 3)
  return a + b * 256 + c * 65536 + d * 16777216
end
local function dims(raw)
  if type(raw) ~= 'string' or #raw < 64 or sub(raw, 1, 6) ~= 'RPYP2 ' then return nil end
  local n, d = tonumber(sub(raw, 28, 29)), sub(raw, 58, 61)
  if not n or n < 1 or not string.find(d, '^%d%d%d%d$') or tonumber(d) > n * n then return nil end
  local e = 64 + 2 * n * n
  return n, tonumber(d), e, e + 24 * tonumber(d)
end
local function head(k)
  local n, d, e, h = dims(redis.call('GETRANGE', k, 0, 63))
  if not n then return nil end
  local raw = redis.call('GETRANGE', k, 0, h - 1)
  if #raw < h then return nil end
  return raw, n, d, e
end
local function pooled(raw, d, e)
  local out = {}
  for k = 1, d do
    local p = e + 24 * (k - 1) + 1
    if u32(raw, p + 16) == 0 and u32(raw, p + 20) == 0 then
      out[#out + 1] = string.format(HEX, byte(raw, p, p + 15))
    end
  end
  return out
end
"""

#: Writers' scripts: the pool's counts, and a running collection's count kept in step.
LUA_TRACK = """\
local P = ARGV[1]
local function count(k)
  local c = redis.call('GETRANGE', k, 0, 3)
  if #c < 4 then return nil end
  return (struct.unpack('<I4', c))
end
local function release(h)
  local k = P .. ':pool:' .. h
  local c = count(k)
  if c and c > 1 then
    redis.call('SETRANGE', k, 0, struct.pack('<I4', c - 1))
  else
    redis.call('DEL', k)
  end
end
local function gc_track(key, old, new)
  if redis.call('EXISTS', P .. ':gc:active') == 0 then return end
  local gc = P .. ':gc:count'
  if redis.call('SADD', P .. ':gc:seen', key) == 0 then
    for _, h in ipairs(old) do
      if redis.call('HINCRBY', gc, h, -1) <= 0 then redis.call('HDEL', gc, h) end
    end
  end
  for _, h in ipairs(new) do redis.call('HINCRBY', gc, h, 1) end
end
"""

#: KEYS[1], KEYS[2] the metatile's keys; ARGV[1] prefix, ARGV[2] the new
#: pack's first part (at least its head), ARGV[3] the rest ('' if none),
#: ARGV[4..] hash, bytes pairs of tiles it leaves to the pool.
#: Returns how many pool entries were created.
PUT_SCRIPT = LUA_PACK + LUA_TRACK + """\
local _, d, e, h = dims(ARGV[2])
if not d or #ARGV[2] < h then return redis.error_reply('ERR not a metatile pack') end
local new = pooled(ARGV[2], d, e)
local given = {}
for i = 4, #ARGV, 2 do given[ARGV[i]] = ARGV[i + 1] end
for _, x in ipairs(new) do
  if not given[x] and not count(P .. ':pool:' .. x) then
    return redis.error_reply('ERR blob ' .. x .. ' is neither stored nor given')
  end
end
local old = {}
local raw, _, od, oe = head(KEYS[1])
if raw then old = pooled(raw, od, oe) end
local written, created = 0, {}
for _, x in ipairs(new) do
  local k = P .. ':pool:' .. x
  local c = count(k)
  if c then
    redis.call('SETRANGE', k, 0, struct.pack('<I4', c + 1))
  else
    redis.call('SET', k, struct.pack('<I4', 1) .. given[x])
    written, created[x] = written + 1, true
  end
end
for _, x in ipairs(old) do
  if not created[x] then release(x) end
end
redis.call('SET', KEYS[1], ARGV[2])
if ARGV[3] ~= '' then redis.call('SET', KEYS[2], ARGV[3]) else redis.call('DEL', KEYS[2]) end
gc_track(KEYS[1], old, new)
return written
"""

#: KEYS[1], KEYS[2] the metatile's keys; ARGV[1] prefix. Returns 1 if the metatile existed.
DELETE_SCRIPT = LUA_PACK + LUA_TRACK + """\
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local old = {}
local raw, _, d, e = head(KEYS[1])
if raw then old = pooled(raw, d, e) end
for _, x in ipairs(old) do release(x) end
redis.call('DEL', KEYS[1], KEYS[2])
gc_track(KEYS[1], old, {})
return 1
"""

#: KEYS[1] the pack's key. Returns 1 if a pack was there and is now stale.
STALE_SCRIPT = """\
if redis.call('GETRANGE', KEYS[1], 0, 5) ~= 'RPYP2 ' then return 0 end
redis.call('SETRANGE', KEYS[1], 6, '1')
return 1
"""

#: Reader. KEYS: pairs of a metatile's two keys. Replies, for each pair,
#: the pack's head (or the first 64 bytes of what is there if that is no
#: pack's head; '' if nothing) and the pack's size in bytes.
HEADS_SCRIPT = LUA_PACK + """\
local out = {}
for i = 1, #KEYS, 2 do
  local raw = head(KEYS[i]) or redis.call('GETRANGE', KEYS[i], 0, 63)
  out[#out + 1] = raw
  out[#out + 1] = redis.call('STRLEN', KEYS[i]) + redis.call('STRLEN', KEYS[i + 1])
end
return out
"""

#: Reader. KEYS[1], KEYS[2] the metatile's keys; ARGV[1] prefix; ARGV[2]
#: entry (x-major, from 0). nil if no pack (or it is corrupt), else one
#: string: the pack's 64-byte header, the entry's 32 hex digits (zeros: no
#: tile there), then the tile's bytes (none if the tile is empty or its
#: pool entry is missing).
TILE_SCRIPT = LUA_PACK + """\
local raw, n, d, e = head(KEYS[1])
if not raw then return nil end
local i = tonumber(ARGV[2])
if not i or i < 0 or i >= n * n or i % 1 ~= 0 then
  return redis.error_reply('ERR entry ' .. tostring(ARGV[2]) .. ' is outside the pack')
end
local k = byte(raw, 65 + 2 * i) + 256 * byte(raw, 66 + 2 * i)
if k > d then return nil end
if k == 0 then return sub(raw, 1, 64) .. string.rep('0', 32) end
local p = e + 24 * (k - 1) + 1
local h = string.format(HEX, byte(raw, p, p + 15))
local off, len = u32(raw, p + 16), u32(raw, p + 20)
if off == 0 and len == 0 then
  return sub(raw, 1, 64) .. h .. redis.call('GETRANGE', ARGV[1] .. ':pool:' .. h, 4, -1)
end
local c = redis.call('STRLEN', KEYS[1])
local data = ''
if off < c then data = redis.call('GETRANGE', KEYS[1], off, math.min(off + len, c) - 1) end
if off + len > c then
  data = data .. redis.call('GETRANGE', KEYS[2], math.max(off - c, 0), off + len - c - 1)
end
if #data ~= len then return nil end
return sub(raw, 1, 64) .. h .. data
"""

#: Reader. KEYS[1], KEYS[2] the metatile's keys; ARGV[1] prefix. nil if no
#: pack (or it is corrupt), else {pack, tile...}: the whole pack, then the
#: bytes of each tile it leaves to the pool, in record order ('' if missing).
META_SCRIPT = LUA_PACK + """\
local raw = redis.call('GET', KEYS[1])
local _, d, e, h = dims(raw)
if not d or #raw < h then return nil end
raw = raw .. (redis.call('GET', KEYS[2]) or '')
local out = {raw}
for _, x in ipairs(pooled(raw, d, e)) do
  out[#out + 1] = redis.call('GETRANGE', ARGV[1] .. ':pool:' .. x, 4, -1)
end
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

#: KEYS: pack keys to count (each once per run).
GC_COUNT_SCRIPT = LUA_PACK + LUA_GC_OWNED + """\
for _, k in ipairs(KEYS) do
  if redis.call('SADD', P .. ':gc:seen', k) == 1 then
    local raw, _, d, e = head(k)
    if raw then
      for _, x in ipairs(pooled(raw, d, e)) do redis.call('HINCRBY', P .. ':gc:count', x, 1) end
    end
  end
end
return #KEYS
"""

#: ARGV[4..]: hashes to settle. Returns {present, deleted, bytes freed, counts fixed, missing}.
GC_FIX_SCRIPT = LUA_GC_OWNED + """\
local present, deleted, freed, fixed, missing = 0, 0, 0, 0, 0
for i = 4, #ARGV do
  local k = P .. ':pool:' .. ARGV[i]
  local want = tonumber(redis.call('HGET', P .. ':gc:count', ARGV[i]) or '0')
  local size = redis.call('STRLEN', k)
  if size > 0 then present = present + 1 end
  if want <= 0 then
    if size > 0 then
      redis.call('DEL', k)
      deleted = deleted + 1
      freed = freed + math.max(size - 4, 0)
    end
  elseif size <= 4 then
    missing = missing + 1
  elseif struct.unpack('<I4', redis.call('GETRANGE', k, 0, 3)) ~= want then
    redis.call('SETRANGE', k, 0, struct.pack('<I4', want))
    fixed = fixed + 1
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
