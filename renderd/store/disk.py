"""The disk store: one pack file per metatile, a shared pool for repeated tiles.

Layout (docs/storage.md; nginx reads it directly)::

    {path}/gc.lock                                   flock: writers shared, collector exclusive
    {path}/tiles/{layer}/{z}/{bx}/{by}/{mx}_{my}.pack    one pack per metatile
    {path}/blobs/{h[0:2]}/{h}                        the pool: encoded tile bytes by content hash

``mx``, ``my`` number the metatile (``x0 // n``, ``y0 // n``), and
``bx = mx >> 5``, ``by = my >> 5`` its block of 32 x 32 metatiles: a
directory holds at most 1024 packs, or 2048 blocks at zoom 19, and a small
area takes a few directories per zoom (directories cost a block each).

Each pack is one metatile in the format of renderd/store/pack.py: the
header, one entry per tile naming a record of its distinct tiles, and the
bytes of the tiles kept in the pack; a record with location 0/0 is a tile in
the pool, under its hash.

Writer policy (a choice of the writer, not part of the format): a distinct
tile goes to the pool if it occurs 2 or more times in the metatile, or if
the pool has it already (it is then touched, see below); otherwise it is
inline. So every tile that repeats within a metatile is stored once for the
whole store, and a tile that occurs once in each of two metatiles is stored
in both packs: the second copy takes the tile's size, a pool file the same
bytes rounded up to whole file system blocks (see docs/storage.md).

Files become visible only by ``os.replace`` of a complete temporary file in
the same directory, so a reader or a crash never sees a partial one. Pool
blobs are written (or touched) before the pack that names them; the garbage
collector spares every pool blob whose mtime is not older than the start of
its run (see ``collect_garbage`` and docs/storage.md for why that is safe).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import secrets
import time
from collections import Counter
from contextlib import contextmanager
from typing import BinaryIO, Callable, Iterator, TypeVar

from .. import tilesets
from ..errors import StoreError
from ..tilemath import Meta, Tile, metatile_of, tile_index
from .base import HASH_RE, GCStats, Store, StoredTile, check_layer, check_put
from .index import EMPTY, HEADER_SIZE, MAGIC, STALE_OFFSET, MetaIndex
from .pack import PACK_MAGIC, POOL, Pack, decode_pack, encode_pack, head_of

log = logging.getLogger(__name__)

NUMBER_RE = re.compile(r"[0-9]{1,10}")
#: Temporary files: ``.{final name}.{random}.tmp`` beside their final name.
TMP_SUFFIX = ".tmp"
#: Leftover temporary files older than this are removed by the collector.
TMP_MAX_AGE = 3600.0
#: Pool blobs examined per hold of the exclusive lock during a sweep.
SWEEP_BATCH = 1000
#: A pack file's suffix.
PACK_EXT = "pack"
#: the start of a key value's directory name (tiles/{layer}/@{value}/...)
KEY_DIR = "@"
#: A directory of packs holds a block of 2^BLOCK_BITS x 2^BLOCK_BITS metatiles.
BLOCK_BITS = 5
PACK_NAME_RE = re.compile(r"([0-9]{1,10})_([0-9]{1,10})\.pack")

T = TypeVar("T")


# --- small file helpers ----------------------------------------------------

def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise StoreError(f"cannot sync directory {path}: {e.strerror}") from None


def _is_tmp(name: str) -> bool:
    return name.startswith(".") and name.endswith(TMP_SUFFIX)


def _scandir(path: str) -> Iterator[os.DirEntry]:
    """Entries of ``path``; nothing if it does not exist."""
    try:
        with os.scandir(path) as it:
            yield from it
    except FileNotFoundError:
        return
    except OSError as e:
        raise StoreError(f"cannot list {path}: {e.strerror}") from None


def _numbered(path: str) -> list[tuple[int, str]]:
    """Numeric subdirectory names of ``path``, sorted, with their paths."""
    out = [(int(e.name), e.path) for e in _scandir(path)
           if NUMBER_RE.fullmatch(e.name) and e.is_dir(follow_symlinks=False)]
    return sorted(out)


def _blocks(zdir: str) -> Iterator[tuple[int, int, str]]:
    """(bx, by, path) of the block directories of a zoom directory, in order."""
    for bx, xdir in _numbered(zdir):
        for by, bdir in _numbered(xdir):
            yield bx, by, bdir


def _twice(read: Callable[[], tuple[T, bool]]) -> T:
    """``read()`` gives (result, complete); an incomplete read (a pool blob
    the pack named was gone: the pack was replaced and the blob collected
    meanwhile) is made once more, and then taken as it is."""
    result, complete = read()
    if not complete:
        result, _ = read()
    return result


class DiskStore(Store):
    """Deduplicated tiles in a directory tree; see the module docstring."""

    kind = "disk"

    def __init__(self, path: str | os.PathLike, fsync: bool = False):
        self.path = os.path.abspath(os.fspath(path))
        self.fsync = fsync
        self.tiles_dir = os.path.join(self.path, "tiles")
        self.pool_dir = os.path.join(self.path, "blobs")
        self.lock_path = os.path.join(self.path, "gc.lock")
        self._earlier_logged = False  # a pack of an earlier format was logged
        try:
            os.makedirs(self.tiles_dir, exist_ok=True)
            os.makedirs(self.pool_dir, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create store directory {self.path}: {e.strerror}") from None

    def __repr__(self) -> str:
        return f"DiskStore({self.path!r})"

    # --- paths -----------------------------------------------------------
    def tileset_dir(self, layer: str) -> str:
        """``tiles/{layer}``, and for a tile set with keys one ``@{value}``
        directory per key below it (``tiles/sst/@07``): a key directory can
        never be taken for a zoom directory."""
        base, values = tilesets.split(check_layer(layer))
        return os.path.join(self.tiles_dir, base, *(KEY_DIR + v for v in values))

    def pack_path(self, layer: str, meta: Meta) -> str:
        mx, my = meta.mx, meta.my
        return os.path.join(self.tileset_dir(layer), str(meta.z), str(mx >> BLOCK_BITS),
                            str(my >> BLOCK_BITS), f"{mx}_{my}.{PACK_EXT}")

    def pool_path(self, digest: str) -> str:
        if not HASH_RE.fullmatch(digest):
            raise StoreError(f"malformed content hash {digest[:40]!r}")
        return os.path.join(self.pool_dir, digest[0:2], digest)

    # --- locking ---------------------------------------------------------
    @contextmanager
    def _locked(self, mode: int) -> Iterator[int]:
        """Hold ``gc.lock`` with ``mode`` (LOCK_SH or LOCK_EX).

        A fresh descriptor each time: flock belongs to the open file, so
        threads and forked children never share or release each other's lock.
        """
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise StoreError(f"cannot open {self.lock_path}: {e.strerror}") from None
        try:
            fcntl.flock(fd, mode)
            yield fd
        finally:
            os.close(fd)

    # --- reading ---------------------------------------------------------
    def get_index(self, layer: str, meta: Meta) -> MetaIndex | None:
        """The index, or None if absent or corrupt (logged; a render replaces it)."""
        got = self._get(layer, meta)
        return None if got is None else got[0].index

    def read_tile(self, layer: str, tile: Tile, meta: int = 8) -> StoredTile | None:
        """A tile and its metatile's header fields; None if the metatile is not stored."""
        got = self._tile(layer, tile, meta)
        if got is None:
            return None
        idx, digest, data = got
        return StoredTile(data, digest, idx.stale, idx.rendered, idx.data, idx.ext)

    def get_metatile(self, layer: str, meta: Meta) -> tuple[MetaIndex, dict[str, bytes]] | None:
        """A metatile's index and the bytes of its distinct tiles, or None.

        The pack is read whole; tiles in the pool are read from it (one
        gone is left out)."""
        def read() -> tuple[tuple[MetaIndex, dict[str, bytes]] | None, bool]:
            got = self._get(layer, meta, whole=True)
            if got is None:
                return None, True
            pack, raw = got
            blobs = {h: raw[off:off + size] for h, (off, size) in pack.inline().items()}
            complete = True
            for h in pack.pooled():
                data = self._read_file(self.pool_path(h))
                if data is None:
                    complete = False
                else:
                    blobs[h] = data
            return (pack.index, blobs), complete
        return _twice(read)

    def metatile_sizes(self, layer: str, meta: Meta) -> tuple[MetaIndex, dict[str, int]] | None:
        """The index and the stored size of each distinct tile (a pool blob gone is left out)."""
        got = self._get(layer, meta)
        return None if got is None else (got[0].index, self._sizes(got[0], {}))

    def iter_indexes(self, layer: str, zoom: int | None = None) -> Iterator[MetaIndex]:
        """Every readable index of ``layer``; corrupt packs are logged and skipped."""
        for pack in self._packs(layer, zoom):
            yield pack.index

    def iter_sizes(self, layer: str, zoom: int | None = None) -> Iterator[tuple[MetaIndex, dict[str, int]]]:
        """``metatile_sizes`` of every readable pack; each pool blob is looked at once."""
        pool_sizes: dict[str, int | None] = {}
        for pack in self._packs(layer, zoom):
            yield pack.index, self._sizes(pack, pool_sizes)

    def layers(self) -> list[str]:
        """Names of the tile sets that have a tiles directory: the layers, and
        below each the tile sets of its key values."""
        out: list[str] = []

        def walk(path: str, name: str, depth: int) -> None:
            out.append(name)
            if depth < tilesets.MAX_KEYS:
                for e in _scandir(path):
                    if e.name.startswith(KEY_DIR) and e.is_dir(follow_symlinks=False):
                        child = f"{name}/{e.name[len(KEY_DIR):]}"
                        if tilesets.is_valid(child):
                            walk(e.path, child, depth + 1)

        for e in _scandir(self.tiles_dir):
            if tilesets.is_valid(e.name) and e.is_dir(follow_symlinks=False):   # (world, world@2x)
                walk(e.path, e.name, 0)
        return sorted(out)

    def _sizes(self, pack: Pack, pool_sizes: dict[str, int | None]) -> dict[str, int]:
        """Stored size of each distinct tile of ``pack``; ``pool_sizes`` caches pool blobs'."""
        sizes = {h: size for h, (_, size) in pack.inline().items()}
        for h in pack.pooled():
            if h not in pool_sizes:
                pool_sizes[h] = self._pool_size(h)
            size = pool_sizes[h]
            if size is not None:
                sizes[h] = size
        return sizes

    def _pool_size(self, digest: str) -> int | None:
        try:
            return os.stat(self.pool_path(digest)).st_size
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StoreError(f"cannot stat blob {digest}: {e.strerror}") from None

    def _tile(self, layer: str, tile: Tile, meta: int) -> tuple[MetaIndex, str | None, bytes | None] | None:
        """(index, hash, bytes) of a tile: hash None for an empty tile, bytes
        None if empty or its pool blob is gone; None if the metatile is not stored."""
        m = metatile_of(tile.z, tile.x, tile.y, meta)
        path = self.pack_path(layer, m)
        i = tile_index(m, tile.x, tile.y)

        def read() -> tuple[tuple[MetaIndex, str | None, bytes | None] | None, bool]:
            with self._open(path) as f:
                got = None if f is None else self._head(f, path, m)
                if got is None:
                    return None, True
                pack = got[0]
                digest = pack.index.hashes[i]
                if digest == EMPTY:
                    return (pack.index, None, None), True
                off, size = pack.locations[i]
                if (off, size) != POOL:
                    return (pack.index, digest, _pread(f, path, off, size)), True
            data = self._read_file(self.pool_path(digest))
            return (pack.index, digest, data), data is not None
        return _twice(read)

    def _get(self, layer: str, meta: Meta, whole: bool = False) -> tuple[Pack, bytes] | None:
        """The pack of ``meta`` and its bytes (the head only unless ``whole``);
        None if absent, corrupt or of another metatile size (logged)."""
        path = self.pack_path(layer, meta)
        with self._open(path) as f:
            return None if f is None else self._head(f, path, meta, whole)

    @contextmanager
    def _open(self, path: str) -> Iterator[BinaryIO | None]:
        """``path`` open for reading, or None if it does not exist."""
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            yield None
            return
        except OSError as e:
            raise StoreError(f"cannot read {path}: {e.strerror}") from None
        with f:
            yield f

    def _head(self, f: BinaryIO, path: str, where: Meta | tuple[int, int, int],
              whole: bool = False) -> tuple[Pack, bytes] | None:
        """Read and decode the pack open as ``f`` (the head only, unless
        ``whole``): None (logged) if corrupt or not the pack of ``where``, a
        metatile or a place (z, mx, my)."""
        try:
            if whole:
                raw = f.read()
                size = len(raw)
            else:
                size = os.fstat(f.fileno()).st_size
                raw = f.read(HEADER_SIZE)
                raw += f.read(max(head_of(raw) - len(raw), 0))
        except OSError as e:
            raise StoreError(f"cannot read {path}: {e.strerror}") from None
        try:
            pack = decode_pack(raw, size)
        except StoreError as e:
            if not raw.startswith(MAGIC):
                log.warning("skipping %s: %s", path, e)
            elif not self._earlier_logged:
                self._earlier_logged = True
                log.warning("skipping %s and any other pack of an earlier format (%s): such "
                            "metatiles count as absent and are rendered again", path, MAGIC.decode().strip())
            return None
        meta = pack.index.meta
        if (meta if isinstance(where, Meta) else _place(meta)) != where:
            log.warning("skipping %s: it holds metatile %s of size %d", path, meta, meta.n)
            return None
        return pack, raw

    def _packs(self, layer: str, zoom: int | None) -> Iterator[Pack]:
        """The head of every readable pack of ``layer`` (at ``zoom``)."""
        for path, place in self._pack_files(check_layer(layer), zoom):
            with self._open(path) as f:
                got = None if f is None else self._head(f, path, place)
            if got is not None:
                yield got[0]

    def _read_file(self, path: str) -> bytes | None:
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StoreError(f"cannot read {path}: {e.strerror}") from None

    def _pack_files(self, layer: str, zoom: int | None) -> Iterator[tuple[str, tuple[int, int, int]]]:
        """(path, (z, mx, my)) of every pack file of ``layer``."""
        root = self.tileset_dir(layer)
        zooms = _numbered(root) if zoom is None else [(zoom, os.path.join(root, str(zoom)))]
        for z, zdir in zooms:
            for bx, by, bdir in _blocks(zdir):
                for mx, my, path in self._packs_in(bdir):
                    if mx >> BLOCK_BITS == bx and my >> BLOCK_BITS == by:
                        yield path, (z, mx, my)

    @staticmethod
    def _packs_in(bdir: str) -> list[tuple[int, int, str]]:
        out = []
        for e in _scandir(bdir):
            m = PACK_NAME_RE.fullmatch(e.name)
            if m:
                out.append((int(m[1]), int(m[2]), e.path))
        return sorted(out)

    def _pool_entries(self) -> Iterator[os.DirEntry]:
        """Every file under ``blobs/`` (pool blobs and temporary files)."""
        for a in _scandir(self.pool_dir):
            if a.is_dir(follow_symlinks=False):
                yield from _scandir(a.path)

    # --- writing ---------------------------------------------------------
    def put_metatile(self, layer: str, index: MetaIndex, blobs: dict[str, bytes]) -> int:
        """Touch the tiles the pool has, add the repeated ones it lacks, then
        switch the pack; returns how many pool blobs were written.

        All under the shared lock, so a collector's sweep never runs between
        the check that a pool blob exists and the pack that names it. Tiles
        not given may be left out if the pool or this metatile's current
        pack holds them.
        """
        path = self.pack_path(layer, index.meta)
        given = check_put(index, blobs)
        counts = Counter(h for h in index.hashes if h != EMPTY)
        with self._locked(fcntl.LOCK_SH):
            now = time.time_ns()
            pooled = {h for h in counts if self._touch(self.pool_path(h), now)}
            data = self._tile_bytes(path, index, given, [h for h in counts if h not in pooled])
            written, dirs = 0, set()
            for h, count in counts.items():
                if count >= 2 and h not in pooled:
                    blob = self.pool_path(h)
                    self._write_file(blob, data[h], mtime_ns=now, sync_dir=False)
                    dirs.add(os.path.dirname(blob))
                    pooled.add(h)
                    written += 1
            if self.fsync:
                for d in dirs:
                    _fsync_dir(d)
            self._write_file(path, encode_pack(index, {h: data[h] for h in counts if h not in pooled}))
        return written

    def _tile_bytes(self, path: str, index: MetaIndex, given: dict[str, bytes],
                    wanted: list[str]) -> dict[str, bytes]:
        """The bytes of the ``wanted`` tiles: given, or inline in the pack at ``path``."""
        out = {h: given[h] for h in wanted if h in given}
        lacking = [h for h in wanted if h not in out]
        if lacking:
            with self._open(path) as f:
                old = None if f is None else self._head(f, path, index.meta, whole=True)
            if old is not None:
                out.update(old[0].tiles_from(old[1], lacking))
        for h in lacking:
            if h not in out:
                raise StoreError(f"blob {h} of {index.meta} is neither stored nor given")
        return out

    @staticmethod
    def _touch(path: str, now: int) -> bool:
        """Set ``path``'s times to ``now``; False if it does not exist."""
        try:
            os.utime(path, ns=(now, now))
            return True
        except FileNotFoundError:
            return False
        except OSError as e:
            raise StoreError(f"cannot touch {path}: {e.strerror}") from None

    def _write_file(self, path: str, data: bytes, mtime_ns: int | None = None,
                    sync_dir: bool = True) -> None:
        """Atomically replace ``path`` with ``data`` (temp file + rename)."""
        folder = os.path.dirname(path)
        self._ensure_dir(folder)
        tmp = os.path.join(folder, f".{os.path.basename(path)}.{secrets.token_hex(6)}{TMP_SUFFIX}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                _write_all(fd, data)
                if mtime_ns is not None:
                    os.utime(fd, ns=(mtime_ns, mtime_ns))
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError as e:
            _unlink_quietly(tmp)
            raise StoreError(f"cannot write {path}: {e.strerror}") from None
        if self.fsync and sync_dir:
            _fsync_dir(folder)

    def _ensure_dir(self, folder: str) -> None:
        """Create ``folder`` and missing parents (fsyncing each parent when asked)."""
        if os.path.isdir(folder):
            return
        parent = os.path.dirname(folder)
        if parent != folder:
            self._ensure_dir(parent)
        try:
            os.mkdir(folder, 0o755)
        except FileExistsError:
            return
        if self.fsync:
            _fsync_dir(parent)

    def mark_stale(self, layer: str, meta: Meta) -> bool:
        """Set the stale byte in place (a one-byte pwrite); False if absent or corrupt."""
        path = self.pack_path(layer, meta)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        except OSError as e:
            raise StoreError(f"cannot open {path}: {e.strerror}") from None
        try:
            if not os.pread(fd, HEADER_SIZE, 0).startswith(PACK_MAGIC):
                log.warning("not marking %s stale: not a metatile pack", path)
                return False
            os.pwrite(fd, b"1", STALE_OFFSET)
            if self.fsync:
                os.fsync(fd)
            return True
        except OSError as e:
            raise StoreError(f"cannot mark {path} stale: {e.strerror}") from None
        finally:
            os.close(fd)

    def delete_metatile(self, layer: str, meta: Meta) -> bool:
        path = self.pack_path(layer, meta)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        except OSError as e:
            raise StoreError(f"cannot delete {path}: {e.strerror}") from None
        if self.fsync:
            _fsync_dir(os.path.dirname(path))
        return True

    # --- garbage collection ----------------------------------------------
    def collect_garbage(self) -> GCStats:
        """Delete pool blobs no pack names, safely against writers in other processes.

        1. Under the exclusive lock (no put in flight) stamp ``gc.lock`` with
           the time and read it back as T0, in the file system's own
           timestamp resolution; release.
        2. Mark, unlocked: every hash that any pack of any layer leaves to
           the pool (location 0/0, not empty).
        3. Sweep in batches under the exclusive lock: delete pool blobs that
           are unmarked and whose mtime is older than T0, and temporary files
           older than an hour.

        A put that began before T0 finished before it, so its pack (or a
        newer one) was visible throughout the mark; a put that began after
        T0 stamped every pool blob it used with a time >= T0. Details in
        docs/storage.md.
        """
        t0 = self._start_stamp()
        marked = self._mark()
        stats = GCStats()
        batch: list[os.DirEntry] = []
        for entry in self._pool_entries():
            if HASH_RE.fullmatch(entry.name):
                stats.blobs_seen += 1
                if bytes.fromhex(entry.name) in marked:
                    continue
            elif not _is_tmp(entry.name):
                continue
            batch.append(entry)
            if len(batch) >= SWEEP_BATCH:
                self._sweep(batch, t0, stats)
                batch = []
        self._sweep(batch, t0, stats)
        self._sweep_pack_tmp()
        log.info("collected %d of %d pool blobs, %d bytes", stats.blobs_deleted, stats.blobs_seen,
                 stats.bytes_freed)
        return stats

    def _start_stamp(self) -> int:
        with self._locked(fcntl.LOCK_EX) as fd:
            now = time.time_ns()
            try:
                os.utime(fd, ns=(now, now))
                return os.fstat(fd).st_mtime_ns
            except OSError as e:
                raise StoreError(f"cannot stamp {self.lock_path}: {e.strerror}") from None

    def _mark(self) -> set[bytes]:
        """Digests (16 raw bytes each) that any pack of any layer leaves to the pool."""
        marked: set[bytes] = set()
        for layer in self.layers():
            for pack in self._packs(layer, None):
                marked.update(bytes.fromhex(h) for h in pack.pooled())
        return marked

    def _sweep(self, batch: list[os.DirEntry], t0: int, stats: GCStats) -> None:
        if not batch:
            return
        tmp_limit = time.time_ns() - int(TMP_MAX_AGE * 1e9)
        with self._locked(fcntl.LOCK_EX):
            for entry in batch:
                try:
                    st = os.stat(entry.path, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                is_tmp = _is_tmp(entry.name)
                if st.st_mtime_ns < (tmp_limit if is_tmp else t0) and _unlink_quietly(entry.path):
                    if not is_tmp:
                        stats.blobs_deleted += 1
                        stats.bytes_freed += st.st_size

    def _sweep_pack_tmp(self) -> None:
        """Remove pack temporary files left by crashed writers over an hour ago."""
        limit = time.time_ns() - int(TMP_MAX_AGE * 1e9)
        for layer in self.layers():
            for _, zdir in _numbered(self.tileset_dir(layer)):
                for _, _, bdir in _blocks(zdir):
                    for e in _scandir(bdir):
                        if _is_tmp(e.name) and _mtime_ns(e) < limit:
                            _unlink_quietly(e.path)


def _place(meta: Meta) -> tuple[int, int, int]:
    """Where a metatile's pack lives: (z, mx, my)."""
    return meta.z, meta.mx, meta.my


def _pread(f: BinaryIO, path: str, offset: int, size: int) -> bytes:
    try:
        data = os.pread(f.fileno(), size, offset)
    except OSError as e:
        raise StoreError(f"cannot read {path}: {e.strerror}") from None
    if len(data) != size:
        raise StoreError(f"cannot read {path}: it ends before byte {offset + size}")
    return data


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _unlink_quietly(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except OSError as e:
        if e.errno != errno.ENOENT:
            log.warning("cannot remove %s: %s", path, e.strerror)
        return False


def _mtime_ns(entry: os.DirEntry) -> int:
    try:
        return entry.stat(follow_symlinks=False).st_mtime_ns
    except FileNotFoundError:
        return time.time_ns()
