"""The Redis store: one pack per metatile, a pool of repeated tiles with their counts.

Keys (docs/storage.md)::

    {prefix}:pk:{layer}:{z}:{mx}:{my}    the metatile's pack (renderd/store/pack.py), or its first bytes
    {prefix}:pt:{layer}:{z}:{mx}:{my}    the rest of the pack, when it is cut in two (see ``split_point``)
    {prefix}:pool:{hash}                 a repeated tile: how many packs name it (uint32 LE), then its bytes

The pack is the disk store's format, each tile inside it right after a copy
of its record (so that nginx reads a tile's range and checks it in one
command), with the same writer policy: a tile that occurs twice or more in
the metatile, or that the pool has already, goes to the pool; every other
tile is inside the pack. Every
change of a pack is one server-side Lua script that also moves the pool's
counts and creates or deletes pool entries, so counts are exact at every
moment and an entry goes exactly when the last pack naming it goes. The
scripts, and who runs which (nginx runs ``META_SCRIPT``), are in
renderd/store/redis_scripts.py. Keys of the earlier layout (``idx:``,
``blob:``, ``ref:``) are not read.
Single Redis instance only (scripts touch keys they compute); the server must
not evict keys (``maxmemory-policy noeviction``).
"""

from __future__ import annotations

import logging
import secrets
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from ..errors import StoreError
from ..tilemath import Meta, Tile, metatile_of, tile_index
from .base import HASH_RE, GCStats, Store, StoredTile, check_layer, check_put
from .index import EMPTY, HASH_HEX, HEADER_SIZE, MetaIndex, decode_header
from .pack import PACK_MAGIC, Pack, decode_pack, encode_pack, head_size
from .redis_scripts import (
    DELETE_SCRIPT,
    GC_BEGIN_SCRIPT,
    GC_COUNT_SCRIPT,
    GC_END_SCRIPT,
    GC_FIX_SCRIPT,
    HEADS_SCRIPT,
    META_SCRIPT,
    PUT_SCRIPT,
    STALE_SCRIPT,
    TILE_SCRIPT,
)

log = logging.getLogger(__name__)

#: Keys per SCAN step and per collector script call.
BATCH = 500
#: A collection that stops renewing its lease for this long is abandoned.
GC_LEASE_MS = 60_000
#: A pool entry's count in front of its bytes.
COUNT_BYTES = 4
#: Packs shorter than this are never cut in two.
SPLIT_MIN = 4096
#: The store's scripts by the attribute that holds each, registered with the client.
SCRIPTS = {"_put": PUT_SCRIPT, "_delete": DELETE_SCRIPT, "_stale": STALE_SCRIPT, "_tile": TILE_SCRIPT,
           "_meta": META_SCRIPT, "_heads": HEADS_SCRIPT, "_gc_begin": GC_BEGIN_SCRIPT,
           "_gc_count": GC_COUNT_SCRIPT, "_gc_fix": GC_FIX_SCRIPT, "_gc_end": GC_END_SCRIPT}
#: What one more key costs the server, about (its dict entry, object and name).
KEY_COST = 96


def _size_class(n: int) -> int:
    """The allocation jemalloc (Redis's allocator) makes for ``n`` bytes:
    16-byte steps to 128, then four classes per doubling."""
    if n <= 8:
        return 8
    if n <= 128:
        return -(-n // 16) * 16
    step = 1 << ((n - 1).bit_length() - 3)
    return -(-n // step) * step


def _sds_header(n: int) -> int:
    """Bytes Redis adds to a string of ``n`` bytes (header and NUL)."""
    return 4 if n < 256 else 6 if n < 65536 else 10


def _string_memory(n: int) -> int:
    return _size_class(n + _sds_header(n))


def split_point(size: int, head: int) -> int:
    """Where to cut a pack of ``size`` bytes whose head is ``head`` bytes:
    ``size`` (not cut), or the length of the first of two strings.

    A string takes the next allocation size class, and classes are a
    quarter of a power of two apart, so a pack in one string wastes about
    8% on average. The first string is the longest that fills its class
    exactly (and holds the head); the second holds the rest. Cut only when
    that saves more than the second key costs.
    """
    if size < SPLIT_MIN:
        return size
    best, c = size, SPLIT_MIN
    while True:
        first = c - _sds_header(c - 6)
        if first > size:
            break
        best = first
        c = _size_class(c + 1)
    if best < head or best == size:
        return size
    if _string_memory(best) + _string_memory(size - best) + KEY_COST >= _string_memory(size):
        return size
    return best


class RedisStore(Store):
    """Metatile packs and a pool of repeated tiles in one Redis database;
    see the module docstring."""

    kind = "redis"

    def __init__(self, url: str, prefix: str = "rpy", timeout: float = 5.0):
        self.prefix = prefix
        try:
            self._pool = redis.ConnectionPool.from_url(
                url, socket_timeout=timeout, socket_connect_timeout=min(timeout, 2.0),
                health_check_interval=30, max_connections=64)
        except ValueError as e:
            raise StoreError(f"bad redis url {url!r}: {e}") from None
        self.where = _describe(self._pool)
        self._r = redis.Redis(connection_pool=self._pool,
                              retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2))
        for attr, text in SCRIPTS.items():
            setattr(self, attr, self._r.register_script(text))

    def __repr__(self) -> str:
        return f"RedisStore({self.where!r}, prefix={self.prefix!r})"

    def close(self) -> None:
        self._pool.disconnect()

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn redis-py errors into one-line ``StoreError``s."""
        try:
            yield
        except redis.exceptions.AuthenticationError:
            raise StoreError(f"redis at {self.where} refused the credentials") from None
        except redis.exceptions.TimeoutError:
            raise StoreError(f"redis at {self.where} did not answer in time") from None
        except redis.exceptions.ConnectionError:
            raise StoreError(f"redis at {self.where} is not reachable") from None
        except redis.exceptions.RedisError as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise StoreError(f"redis at {self.where}: {msg}") from None

    # --- keys ------------------------------------------------------------
    def namespace(self, layer: str, meta: Meta) -> str:
        """What the metatile's keys and the pool its pack draws on begin
        with (the scripts' ``ARGV[1]``): the prefix, here; a cluster's
        block of metatiles (renderd/store/redis_cluster.py)."""
        return self.prefix

    def pack_keys(self, layer: str, meta: Meta) -> list[str]:
        """The metatile's two keys: its pack (or the pack's first bytes), the rest."""
        ns, where = self.namespace(layer, meta), f"{check_layer(layer)}:{meta.z}:{meta.mx}:{meta.my}"
        return [f"{ns}:pk:{where}", f"{ns}:pt:{where}"]

    def pool_key(self, digest: str, ns: str | None = None) -> str:
        return f"{ns or self.prefix}:pool:{digest}"

    def pack_pattern(self, layer: str, zoom: int | None) -> str:
        """A SCAN pattern of the pack keys of ``layer`` (at ``zoom``)."""
        return f"{self.prefix}:pk:{check_layer(layer)}:" + ("*" if zoom is None else f"{int(zoom)}:*")

    def ping(self) -> None:
        """Raise ``StoreError`` unless the server answers."""
        with self._errors():
            self._r.ping()

    # --- reading ---------------------------------------------------------
    def get_index(self, layer: str, meta: Meta) -> MetaIndex | None:
        """The index, or None if absent or corrupt (logged)."""
        pack = self._pack_heads([self.pack_keys(layer, meta)], [meta])[0]
        return None if pack is None else pack.index

    def read_tile(self, layer: str, tile: Tile, meta: int = 8) -> StoredTile | None:
        """A tile and its metatile's header fields in one round trip (``TILE_SCRIPT``)."""
        m = metatile_of(tile.z, tile.x, tile.y, meta)
        keys = self.pack_keys(layer, m)
        with self._errors():
            got = self._tile(keys=keys, args=[self.namespace(layer, m), tile_index(m, tile.x, tile.y)])
        if got is None:
            return None
        try:
            found, stale, rendered, data_time, ext = decode_header(got, PACK_MAGIC, "metatile pack")
        except StoreError:
            found = None
        if found != m:
            log.warning("skipping %s: it is not the pack of metatile %s of size %d", keys[0], m, m.n)
            return None
        digest, blob = got[HEADER_SIZE:HEADER_SIZE + HASH_HEX].decode(), got[HEADER_SIZE + HASH_HEX:]
        return StoredTile(blob or None, None if digest == EMPTY else digest, stale, rendered, data_time, ext)

    def get_metatile(self, layer: str, meta: Meta) -> tuple[MetaIndex, dict[str, bytes]] | None:
        """A metatile's index and its distinct tiles' bytes in one round trip (``META_SCRIPT``)."""
        keys = self.pack_keys(layer, meta)
        with self._errors():
            got = self._meta(keys=keys, args=[self.namespace(layer, meta)])
        if got is None:
            return None
        raw = got[0]
        pack = _decode(keys[0], raw, len(raw), meta)
        if pack is None:
            return None
        blobs = {h: raw[off:off + size] for h, (off, size) in pack.inline().items()}
        blobs.update({h: b for h, b in zip(pack.pooled(), got[1:]) if b})
        return pack.index, blobs

    def iter_indexes(self, layer: str, zoom: int | None = None) -> Iterator[MetaIndex]:
        """Every readable index of ``layer`` (SCAN; corrupt values logged and skipped)."""
        for pack in self._packs(layer, zoom):
            yield pack.index

    def _packs(self, layer: str, zoom: int | None) -> Iterator[Pack]:
        """The decoded heads of every readable pack of ``layer``, a SCAN batch at a time."""
        for keys in self._scan(self.pack_pattern(layer, zoom)):
            pairs = [[k, k.replace(":pk:", ":pt:", 1)] for k in keys]
            for key, pack in zip(keys, self._pack_heads(pairs, [None] * len(keys))):
                if pack is not None and self._key_matches(key, layer, pack.index.meta):
                    yield pack

    def _key_matches(self, key: str, layer: str, meta: Meta) -> bool:
        """True if ``key`` is where ``meta``'s pack belongs (logged if not)."""
        if key == self.pack_keys(layer, meta)[0]:
            return True
        log.warning("skipping %s: it holds metatile %s", key, meta)
        return False

    def _pack_heads(self, pairs: list[list[str]], metas: list[Meta | None]) -> list[Pack | None]:
        """The decoded heads of the packs at ``pairs`` of keys (``HEADS_SCRIPT``);
        None where absent, corrupt or not of the metatile in ``metas`` (logged)."""
        with self._errors():
            got = self._heads(keys=[k for pair in pairs for k in pair])
        return [_decode(key, raw, int(size), meta) if raw else None
                for (key, _), meta, raw, size in zip(pairs, metas, got[::2], got[1::2])]

    def metatile_sizes(self, layer: str, meta: Meta) -> tuple[MetaIndex, dict[str, int]] | None:
        """The index and each distinct tile's stored size (pool entries: STRLEN, pipelined)."""
        pack = self._pack_heads([self.pack_keys(layer, meta)], [meta])[0]
        return None if pack is None else (pack.index, self._sizes(layer, [pack], {})[0])

    def iter_sizes(self, layer: str, zoom: int | None = None) -> Iterator[tuple[MetaIndex, dict[str, int]]]:
        """``metatile_sizes`` of every pack, a batch at a time; each pool
        entry's size is asked once per call."""
        known: dict[str, int] = {}
        batch: list[Pack] = []
        for pack in self._packs(layer, zoom):
            batch.append(pack)
            if len(batch) == BATCH:
                yield from zip((p.index for p in batch), self._sizes(layer, batch, known))
                batch = []
        if batch:
            yield from zip((p.index for p in batch), self._sizes(layer, batch, known))

    def _sizes(self, layer: str, packs: list[Pack], known: dict[str, int]) -> list[dict[str, int]]:
        """Each pack's {hash: stored size}; ``known`` caches pool sizes by
        pool key (0: missing, left out) and gets the ones asked here."""
        named = [[(h, self.pool_key(h, self.namespace(layer, p.index.meta))) for h in p.pooled()]
                 for p in packs]
        wanted = list(dict.fromkeys(k for pool in named for _, k in pool if k not in known))
        for i in range(0, len(wanted), BATCH):
            with self._errors():
                pipe = self._r.pipeline(transaction=False)
                for k in wanted[i:i + BATCH]:
                    pipe.strlen(k)
                known.update((k, max(n - COUNT_BYTES, 0)) for k, n in zip(wanted[i:i + BATCH], pipe.execute()))
        out = []
        for p, pool in zip(packs, named):
            sizes = {h: size for h, (_, size) in p.inline().items()}
            sizes.update((h, known[k]) for h, k in pool if known[k])
            out.append(sizes)
        return out

    def _scan(self, pattern: str, unique: bool = True) -> Iterator[list[str]]:
        """Batches of keys matching ``pattern``.

        SCAN may return a key twice; ``unique`` filters repeats at the cost
        of remembering every key (the collector's steps do not need it).
        """
        seen: set[str] = set()
        cursor = 0
        while True:
            with self._errors():
                cursor, raw = self._r.scan(cursor, match=pattern, count=BATCH)
            keys = [k.decode() for k in raw]
            if unique:
                keys = [k for k in keys if k not in seen]
                seen.update(keys)
            if keys:
                yield keys
            if cursor == 0:
                return

    # --- writing ---------------------------------------------------------
    def put_metatile(self, layer: str, index: MetaIndex, blobs: dict[str, bytes]) -> int:
        """Build the pack (the disk store's policy: repeated tiles and those
        the pool has go to the pool), then one script moves the pool's
        counts, adds missing pool entries and switches the pack."""
        keys, ns = self.pack_keys(layer, index.meta), self.namespace(layer, index.meta)
        given = check_put(index, blobs)
        counts = Counter(h for h in index.hashes if h != EMPTY)
        with self._errors():
            pipe = self._r.pipeline(transaction=False)
            for h in counts:
                pipe.exists(self.pool_key(h, ns))
            in_pool = {h for h, there in zip(counts, pipe.execute()) if there}
        lacking = [h for h in counts if h not in given and h not in in_pool]
        if lacking:   # (tiles left out of the call that the pool lacks: from the current pack)
            given = {**given, **self._stored_tiles(keys, index.meta, lacking)}
        pooled = {h for h, n in counts.items() if n >= 2 or h in in_pool}
        inline = {h: given[h] for h in counts if h not in pooled}
        pack = encode_pack(index, inline, marked=True)
        cut = split_point(len(pack), head_size(index.meta.n, len(counts)))
        args: list[str | bytes] = [ns, pack[:cut], pack[cut:]]
        for h in pooled:
            if h in given:
                args += [h, given[h]]
        with self._errors():
            return int(self._put(keys=keys, args=args))

    def _stored_tiles(self, keys: list[str], meta: Meta, wanted: list[str]) -> dict[str, bytes]:
        """The bytes of the ``wanted`` tiles from the metatile's current pack."""
        with self._errors():
            pipe = self._r.pipeline(transaction=True)
            pipe.get(keys[0])
            pipe.get(keys[1])
            first, rest = pipe.execute()
        raw = (first or b"") + (rest or b"")
        pack = _decode(keys[0], raw, len(raw), meta) if first else None
        out = {} if pack is None else pack.tiles_from(raw, wanted)
        for h in wanted:
            if h not in out:
                raise StoreError(f"blob {h} of {meta} is neither stored nor given")
        return out

    def mark_stale(self, layer: str, meta: Meta) -> bool:
        with self._errors():
            return bool(self._stale(keys=self.pack_keys(layer, meta)[:1]))

    def delete_metatile(self, layer: str, meta: Meta) -> bool:
        with self._errors():
            return bool(self._delete(keys=self.pack_keys(layer, meta), args=[self.namespace(layer, meta)]))

    # --- consistency pass ------------------------------------------------
    def collect_garbage(self) -> GCStats:
        """Recount references from every pack; fix counts, delete unused pool entries.

        While the pass runs (``{prefix}:gc:active`` holds its token), every
        writer script also keeps ``{prefix}:gc:count`` in step for the packs
        already counted (``{prefix}:gc:seen``) and counts the ones it writes.
        Once the SCAN of pack keys is over, the count is therefore exact and
        stays exact, and each batch of hashes is settled in one script. See
        docs/storage.md.
        """
        stats, fixed, missing = self._collect(
            self.prefix, self._scan(f"{self.prefix}:pk:*", unique=False),
            lambda: self._scan(f"{self.prefix}:pool:*", unique=False))
        self._report(fixed, missing)
        return stats

    def _report(self, fixed: int, missing: int) -> None:
        if fixed or missing:
            log.warning("redis store %s: fixed %d reference counts, %d referenced pool tiles are missing",
                        self.where, fixed, missing)

    def _collect(self, ns: str, packs: Iterable[list[str]],
                 pools: Callable[[], Iterable[list[str]]]) -> tuple[GCStats, int, int]:
        """The pass over the packs and pool of namespace ``ns``: batches of
        its pack keys, and (called once they are counted) batches of its
        pool keys. Its stats, the counts fixed and the tiles missing."""
        token = secrets.token_hex(8)
        lease = [ns, token, GC_LEASE_MS]
        active = [f"{ns}:gc:active"]   # (the scripts read ARGV; the key routes a cluster's call)
        with self._errors():
            if not self._gc_begin(keys=active, args=lease):
                raise StoreError(f"redis at {self.where}: another garbage collection is running")
        try:
            for keys in packs:
                with self._errors():
                    self._gc_count(keys=keys, args=lease)
            return self._settle(lease, pools())
        finally:
            with self._errors():
                self._gc_end(keys=active, args=lease)

    def _settle(self, lease: list, pools: Iterable[list[str]]) -> tuple[GCStats, int, int]:
        """Settle every hash that has a pool entry or a reference."""
        stats, fixed, missing = GCStats(), 0, 0
        head = f"{lease[0]}:pool:"
        for keys in pools:
            present, deleted, freed, fx, _ = self._fix(lease, [k[len(head):] for k in keys])
            stats.blobs_seen += present
            stats.blobs_deleted += deleted
            stats.bytes_freed += freed
            fixed += fx
        for digests in self._counted(lease[0]):
            _, _, _, fx, miss = self._fix(lease, digests)
            fixed += fx
            missing += miss
        return stats, fixed, missing

    def _fix(self, lease: list, digests: list[str]) -> list[int]:
        digests = [d for d in digests if HASH_RE.fullmatch(d)]
        if not digests:
            return [0, 0, 0, 0, 0]
        with self._errors():
            return [int(v) for v in self._gc_fix(keys=[f"{lease[0]}:gc:active"], args=lease + digests)]

    def _counted(self, ns: str) -> Iterator[list[str]]:
        """Batches of the hashes in the running collection's count."""
        cursor = 0
        while True:
            with self._errors():
                cursor, fields = self._r.hscan(f"{ns}:gc:count", cursor, count=BATCH)
            if fields:
                yield [f.decode() for f in fields]
            if cursor == 0:
                return


def _decode(key: str, raw: bytes, size: int, meta: Meta | None) -> Pack | None:
    """The pack head in ``raw`` (of a pack of ``size`` bytes) if it is one,
    and ``meta``'s if given; None (logged) if not."""
    try:
        pack = decode_pack(raw, size)
    except StoreError as e:
        log.warning("skipping %s: %s", key, e)
        return None
    if meta is not None and pack.index.meta != meta:
        log.warning("skipping %s: it holds metatile %s of size %d", key, pack.index.meta, pack.index.meta.n)
        return None
    return pack


def _describe(pool: redis.ConnectionPool) -> str:
    kw = pool.connection_kwargs
    if "path" in kw:
        return f"unix:{kw['path']}"
    return f"{kw.get('host', '127.0.0.1')}:{kw.get('port', 6379)}"
