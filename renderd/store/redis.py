"""The Redis store: indexes, blobs and reference counts as Redis strings.

Keys (docs/storage.md)::

    {prefix}:idx:{layer}:{z}:{mx}:{my}   MetaIndex.encode() bytes
    {prefix}:blob:{hash}                 encoded tile bytes
    {prefix}:ref:{hash}                  how many indexes name the blob (integer)

Every change of an index is one server-side Lua script that also moves the
reference counts and creates or deletes blobs, so counts are exact at every
moment and a blob goes exactly when the last index naming it goes. The
scripts, and who runs which (nginx runs ``META_SCRIPT``), are in
renderd/store/redis_scripts.py.
Single Redis instance only (scripts touch keys they compute); the server must
not evict keys (``maxmemory-policy noeviction``).
"""

from __future__ import annotations

import logging
import secrets
from contextlib import contextmanager
from itertools import islice
from typing import Iterator

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from ..errors import StoreError
from ..tilemath import Meta, Tile, metatile_of, tile_index
from .base import HASH_RE, GCStats, Store, StoredTile, check_layer, check_put
from .index import EMPTY, HASH_HEX, HEADER_SIZE, MetaIndex, decode_header
from .redis_scripts import (DELETE_SCRIPT, GC_BEGIN_SCRIPT, GC_COUNT_SCRIPT, GC_END_SCRIPT, GC_FIX_SCRIPT,
                            META_SCRIPT, PUT_SCRIPT, STALE_SCRIPT, TILE_SCRIPT)

log = logging.getLogger(__name__)

#: Keys per SCAN step and per collector script call.
BATCH = 500
#: A collection that stops renewing its lease for this long is abandoned.
GC_LEASE_MS = 60_000


class RedisStore(Store):
    """Deduplicated tiles in one Redis database; see the module docstring."""

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
        script = self._r.register_script
        self._put, self._delete, self._stale = script(PUT_SCRIPT), script(DELETE_SCRIPT), script(STALE_SCRIPT)
        self._tile, self._meta = script(TILE_SCRIPT), script(META_SCRIPT)
        self._gc_begin, self._gc_count = script(GC_BEGIN_SCRIPT), script(GC_COUNT_SCRIPT)
        self._gc_fix, self._gc_end = script(GC_FIX_SCRIPT), script(GC_END_SCRIPT)

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
    def index_key(self, layer: str, meta: Meta) -> str:
        return f"{self.prefix}:idx:{check_layer(layer)}:{meta.z}:{meta.mx}:{meta.my}"

    def blob_key(self, digest: str) -> str:
        return f"{self.prefix}:blob:{digest}"

    def ping(self) -> None:
        """Raise ``StoreError`` unless the server answers."""
        with self._errors():
            self._r.ping()

    # --- reading ---------------------------------------------------------
    def get_index(self, layer: str, meta: Meta) -> MetaIndex | None:
        """The index, or None if absent or corrupt (logged)."""
        key = self.index_key(layer, meta)
        with self._errors():
            raw = self._r.get(key)
        idx = None if raw is None else _decode(key, raw)
        if idx is not None and idx.meta != meta:
            log.warning("skipping %s: it holds metatile %s of size %d", key, idx.meta, idx.meta.n)
            return None
        return idx

    def read_tile(self, layer: str, tile: Tile, meta: int = 8) -> StoredTile | None:
        """A tile and its metatile's header fields in one round trip (``TILE_SCRIPT``)."""
        m = metatile_of(tile.z, tile.x, tile.y, meta)
        with self._errors():
            got = self._tile(keys=[self.index_key(layer, m)],
                             args=[self.prefix, tile_index(m, tile.x, tile.y)])
        if got is None:
            return None
        try:
            found, stale, rendered, data_time, ext = decode_header(got)
        except StoreError:
            found = None
        if found != m:
            log.warning("skipping %s: it is not the index of metatile %s of size %d",
                        self.index_key(layer, m), m, m.n)
            return None
        digest, blob = got[HEADER_SIZE:HEADER_SIZE + HASH_HEX].decode(), got[HEADER_SIZE + HASH_HEX:]
        return StoredTile(blob or None, None if digest == EMPTY else digest, stale, rendered, data_time, ext)

    def get_metatile(self, layer: str, meta: Meta) -> tuple[MetaIndex, dict[str, bytes]] | None:
        """A metatile's index and its distinct tiles' bytes in one round trip (``META_SCRIPT``)."""
        key = self.index_key(layer, meta)
        with self._errors():
            got = self._meta(keys=[key], args=[self.prefix])
        if got is None:
            return None
        idx = _decode(key, got[0])
        if idx is None or idx.meta != meta:
            return None
        return idx, {h: b for h, b in zip(idx.unique(), got[1:]) if b}

    def iter_indexes(self, layer: str, zoom: int | None = None) -> Iterator[MetaIndex]:
        """Every readable index of ``layer`` (SCAN; corrupt values logged and skipped)."""
        head = f"{self.prefix}:idx:{check_layer(layer)}:"
        pattern = head + ("*" if zoom is None else f"{int(zoom)}:*")
        for keys in self._scan(pattern):
            with self._errors():
                values = self._r.mget(keys)
            for key, raw in zip(keys, values):
                idx = None if raw is None else _decode(key, raw)
                if idx is not None and _key_matches(key, head, idx.meta):
                    yield idx

    def metatile_sizes(self, layer: str, meta: Meta) -> tuple[MetaIndex, dict[str, int]] | None:
        """The index and each distinct tile's blob size (STRLEN, pipelined)."""
        idx = self.get_index(layer, meta)
        return None if idx is None else (idx, self._sizes([idx], {})[0])

    def iter_sizes(self, layer: str, zoom: int | None = None) -> Iterator[tuple[MetaIndex, dict[str, int]]]:
        """``metatile_sizes`` of every index, a batch of indexes at a time;
        each blob's size is asked once per call."""
        known: dict[str, int] = {}
        indexes = self.iter_indexes(layer, zoom)
        for batch in iter(lambda: list(islice(indexes, BATCH)), []):
            yield from zip(batch, self._sizes(batch, known))

    def _sizes(self, indexes: list[MetaIndex], known: dict[str, int]) -> list[dict[str, int]]:
        """Each index's {hash: blob size}; ``known`` caches sizes (0: missing,
        left out) and gets the ones asked here."""
        wanted = list(dict.fromkeys(h for idx in indexes for h in idx.unique() if h not in known))
        for i in range(0, len(wanted), BATCH):
            with self._errors():
                pipe = self._r.pipeline(transaction=False)
                for d in wanted[i:i + BATCH]:
                    pipe.strlen(self.blob_key(d))
                known.update(zip(wanted[i:i + BATCH], pipe.execute()))
        return [{h: known[h] for h in idx.unique() if known[h]} for idx in indexes]

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
        """One script: move reference counts, add missing blobs, switch the index."""
        key = self.index_key(layer, index.meta)
        given = check_put(index, blobs)
        args: list[str | bytes] = [self.prefix, index.encode()]
        for h, data in given.items():
            args += [h, data]
        with self._errors():
            return int(self._put(keys=[key], args=args))

    def mark_stale(self, layer: str, meta: Meta) -> bool:
        with self._errors():
            return bool(self._stale(keys=[self.index_key(layer, meta)]))

    def delete_metatile(self, layer: str, meta: Meta) -> bool:
        with self._errors():
            return bool(self._delete(keys=[self.index_key(layer, meta)], args=[self.prefix]))

    # --- consistency pass ------------------------------------------------
    def collect_garbage(self) -> GCStats:
        """Recount references from every index; fix counts, delete unused blobs.

        While the pass runs (``{prefix}:gc:active`` holds its token), every
        writer script also keeps ``{prefix}:gc:count`` in step for the indexes
        already counted (``{prefix}:gc:seen``) and counts the ones it writes.
        Once the SCAN of index keys is over, the count is therefore exact and
        stays exact, and each batch of hashes is settled in one script. See
        docs/storage.md.
        """
        token = secrets.token_hex(8)
        lease = [self.prefix, token, GC_LEASE_MS]
        with self._errors():
            if not self._gc_begin(args=lease):
                raise StoreError(f"redis at {self.where}: another garbage collection is running")
        try:
            for keys in self._scan(f"{self.prefix}:idx:*", unique=False):
                with self._errors():
                    self._gc_count(keys=keys, args=lease)
            return self._settle(lease)
        finally:
            with self._errors():
                self._gc_end(args=lease)

    def _settle(self, lease: list) -> GCStats:
        """Settle every hash that has a blob, a count or a reference."""
        stats, fixed, missing = GCStats(), 0, 0
        sources = [(f"{self.prefix}:blob:", True), (f"{self.prefix}:ref:", False)]
        for head, blobs in sources:
            for keys in self._scan(head + "*", unique=False):
                present, deleted, freed, fx, _ = self._fix(lease, [k[len(head):] for k in keys])
                stats.blobs_seen += present if blobs else 0
                stats.blobs_deleted += deleted
                stats.bytes_freed += freed
                fixed += fx
        for digests in self._counted():
            _, _, _, fx, miss = self._fix(lease, digests)
            fixed += fx
            missing += miss
        if fixed or missing:
            log.warning("redis store %s: fixed %d reference counts, %d referenced blobs are missing",
                        self.where, fixed, missing)
        return stats

    def _fix(self, lease: list, digests: list[str]) -> list[int]:
        digests = [d for d in digests if HASH_RE.fullmatch(d)]
        if not digests:
            return [0, 0, 0, 0, 0]
        with self._errors():
            return [int(v) for v in self._gc_fix(args=lease + digests)]

    def _counted(self) -> Iterator[list[str]]:
        """Batches of the hashes in the running collection's count."""
        cursor = 0
        while True:
            with self._errors():
                cursor, fields = self._r.hscan(f"{self.prefix}:gc:count", cursor, count=BATCH)
            if fields:
                yield [f.decode() for f in fields]
            if cursor == 0:
                return


def _decode(key: str, raw: bytes) -> MetaIndex | None:
    try:
        idx = MetaIndex.decode(raw)
        if not all(HASH_RE.fullmatch(h) for h in idx.hashes):
            raise StoreError("malformed hash entry")
        return idx
    except StoreError as e:
        log.warning("skipping %s: %s", key, e)
        return None


def _key_matches(key: str, head: str, meta: Meta) -> bool:
    """True if ``key`` is where ``meta``'s index belongs (logged if not)."""
    if key == f"{head}{meta.z}:{meta.mx}:{meta.my}":
        return True
    log.warning("skipping %s: it holds metatile %s", key, meta)
    return False


def _describe(pool: redis.ConnectionPool) -> str:
    kw = pool.connection_kwargs
    if "path" in kw:
        return f"unix:{kw['path']}"
    return f"{kw.get('host', '127.0.0.1')}:{kw.get('port', 6379)}"

