"""The disk store: one index file per metatile, one file per distinct tile.

Layout (docs/storage.md; nginx reads it directly)::

    {path}/gc.lock                                   flock: writers shared, collector exclusive
    {path}/tiles/{layer}/{z}/{mx}/{my}.idx           MetaIndex.encode() bytes
    {path}/blobs/{h[0:2]}/{h[2:4]}/{h}               encoded tile bytes

Files become visible only by ``os.replace`` of a complete temporary file in
the same directory, so a reader or a crash never sees a partial one. Blobs are
written before the index that names them; the garbage collector spares every
blob whose mtime is not older than the start of its run, and writers touch the
blobs they reuse (see ``collect_garbage`` and docs/storage.md for why that is
safe).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import secrets
import time
from contextlib import contextmanager
from typing import Iterator

from ..errors import StoreError
from ..tilemath import Meta, Tile, metatile_of
from .base import HASH_RE, LAYER_RE, GCStats, Store, StoredTile, check_layer, check_put
from .index import HEADER_SIZE, MAGIC, STALE_OFFSET, MetaIndex

log = logging.getLogger(__name__)

NUMBER_RE = re.compile(r"[0-9]{1,10}")
#: Temporary files: ``.{final name}.{random}.tmp`` beside their final name.
TMP_SUFFIX = ".tmp"
#: Leftover temporary files older than this are removed by the collector.
TMP_MAX_AGE = 3600.0
#: Blobs examined per hold of the exclusive lock during a sweep.
SWEEP_BATCH = 1000


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


class DiskStore(Store):
    """Deduplicated tiles in a directory tree; see the module docstring."""

    kind = "disk"

    def __init__(self, path: str | os.PathLike, fsync: bool = False):
        self.path = os.path.abspath(os.fspath(path))
        self.fsync = fsync
        self.tiles_dir = os.path.join(self.path, "tiles")
        self.blobs_dir = os.path.join(self.path, "blobs")
        self.lock_path = os.path.join(self.path, "gc.lock")
        try:
            os.makedirs(self.tiles_dir, exist_ok=True)
            os.makedirs(self.blobs_dir, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create store directory {self.path}: {e.strerror}") from None

    def __repr__(self) -> str:
        return f"DiskStore({self.path!r})"

    # --- paths -----------------------------------------------------------
    def index_path(self, layer: str, meta: Meta) -> str:
        check_layer(layer)
        return os.path.join(self.tiles_dir, layer, str(meta.z), str(meta.mx), f"{meta.my}.idx")

    def blob_path(self, digest: str) -> str:
        if not HASH_RE.fullmatch(digest):
            raise StoreError(f"malformed content hash {digest[:40]!r}")
        return os.path.join(self.blobs_dir, digest[0:2], digest[2:4], digest)

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
        path = self.index_path(layer, meta)
        raw = self._read(path)
        idx = None if raw is None else self._decode(path, raw, _place(meta))
        if idx is not None and idx.meta != meta:
            log.warning("skipping %s: it holds metatile %s of size %d", path, idx.meta, idx.meta.n)
            return None
        return idx

    def get_blob(self, digest: str) -> bytes | None:
        return self._read(self.blob_path(digest))

    def blob_size(self, digest: str) -> int | None:
        try:
            return os.stat(self.blob_path(digest)).st_size
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StoreError(f"cannot stat blob {digest}: {e.strerror}") from None

    def read_tile(self, layer: str, tile: Tile, meta: int = 8) -> StoredTile | None:
        """A tile and its metatile's header fields; None if the metatile is not stored."""
        idx = self.get_index(layer, metatile_of(tile.z, tile.x, tile.y, meta))
        if idx is None:
            return None
        digest = idx.tile_hash(tile.x, tile.y)
        data = None if digest is None else self.get_blob(digest)
        return StoredTile(data, digest, idx.stale, idx.rendered, idx.data, idx.ext)

    def get_metatile(self, layer: str, meta: Meta) -> tuple[MetaIndex, dict[str, bytes]] | None:
        """A metatile's index and the bytes of its distinct tiles, or None."""
        idx = self.get_index(layer, meta)
        if idx is None:
            return None
        return idx, self.get_blobs(idx.unique())

    def iter_indexes(self, layer: str, zoom: int | None = None) -> Iterator[MetaIndex]:
        """Every readable index of ``layer``; corrupt files are logged and skipped."""
        for path, place in self._index_files(check_layer(layer), zoom):
            raw = self._read(path)
            if raw is not None:
                idx = self._decode(path, raw, place)
                if idx is not None:
                    yield idx

    def layers(self) -> list[str]:
        """Names of the layers that have an index directory."""
        return sorted(e.name for e in _scandir(self.tiles_dir)
                      if LAYER_RE.fullmatch(e.name) and e.is_dir(follow_symlinks=False))

    def layer_usage(self, layer: str) -> tuple[int, int, int]:
        """(indexes, distinct stored blobs they use, bytes of those blobs)."""
        count, hashes = 0, set()
        for idx in self.iter_indexes(layer):
            count += 1
            hashes.update(idx.unique())
        sizes = [s for s in map(self.blob_size, hashes) if s is not None]
        return count, len(sizes), sum(sizes)

    def blob_totals(self) -> tuple[int, int]:
        """(blob count, bytes) over the whole store: walks every blob directory."""
        count = size = 0
        for entry in self._blob_entries():
            if HASH_RE.fullmatch(entry.name):
                try:
                    size += entry.stat(follow_symlinks=False).st_size
                    count += 1
                except FileNotFoundError:
                    pass
        return count, size

    def _read(self, path: str) -> bytes | None:
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StoreError(f"cannot read {path}: {e.strerror}") from None

    @staticmethod
    def _decode(path: str, raw: bytes, place: tuple[int, int, int]) -> MetaIndex | None:
        """Decode an index file; None (logged) if corrupt or not at its place (z, mx, my)."""
        try:
            idx = MetaIndex.decode(raw)
            if not all(HASH_RE.fullmatch(h) for h in idx.hashes):
                raise StoreError("malformed hash entry")
        except StoreError as e:
            log.warning("skipping %s: %s", path, e)
            return None
        if _place(idx.meta) != place:
            log.warning("skipping %s: it holds metatile %s", path, idx.meta)
            return None
        return idx

    def _index_files(self, layer: str, zoom: int | None) -> Iterator[tuple[str, tuple[int, int, int]]]:
        """(path, (z, mx, my)) of every ``.idx`` file of ``layer``."""
        root = os.path.join(self.tiles_dir, layer)
        zooms = _numbered(root) if zoom is None else [(zoom, os.path.join(root, str(zoom)))]
        for z, zdir in zooms:
            for mx, xdir in _numbered(zdir):
                for my, path in self._idx_in(xdir):
                    yield path, (z, mx, my)

    @staticmethod
    def _idx_in(xdir: str) -> list[tuple[int, str]]:
        out = []
        for e in _scandir(xdir):
            stem, dot, ext = e.name.partition(".")
            if ext == "idx" and NUMBER_RE.fullmatch(stem):
                out.append((int(stem), e.path))
        return sorted(out)

    def _blob_entries(self) -> Iterator[os.DirEntry]:
        """Every file under ``blobs/`` (blobs and temporary files)."""
        for a in _scandir(self.blobs_dir):
            if not a.is_dir(follow_symlinks=False):
                continue
            for b in _scandir(a.path):
                if b.is_dir(follow_symlinks=False):
                    yield from _scandir(b.path)

    # --- writing ---------------------------------------------------------
    def put_metatile(self, layer: str, index: MetaIndex, blobs: dict[str, bytes]) -> int:
        """Write missing blobs, touch reused ones, then switch the index.

        All under the shared lock, so a collector's sweep never runs between
        the check that a blob exists and the index that names it.
        """
        path = self.index_path(layer, index.meta)
        given = check_put(index, blobs)
        with self._locked(fcntl.LOCK_SH):
            written, dirs = self._put_blobs(index, given)
            if self.fsync:
                for d in dirs:
                    _fsync_dir(d)
            self._write_file(path, index.encode())
        return written

    def _put_blobs(self, index: MetaIndex, given: dict[str, bytes]) -> tuple[int, set[str]]:
        """Touch or write every blob of ``index``: (new blobs, their directories)."""
        written, dirs = 0, set()
        now = time.time_ns()
        for h in index.unique():
            path = self.blob_path(h)
            if self._touch(path, now):
                continue
            data = given.get(h)
            if data is None:
                raise StoreError(f"blob {h} of {index.meta} is neither stored nor given")
            self._write_file(path, data, mtime_ns=now, sync_dir=False)
            dirs.add(os.path.dirname(path))
            written += 1
        return written, dirs

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
        path = self.index_path(layer, meta)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        except OSError as e:
            raise StoreError(f"cannot open {path}: {e.strerror}") from None
        try:
            if not os.pread(fd, HEADER_SIZE, 0).startswith(MAGIC):
                log.warning("not marking %s stale: not a metatile index", path)
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
        path = self.index_path(layer, meta)
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
        """Delete blobs no index names, safely against writers in other processes.

        1. Under the exclusive lock (no put in flight) stamp ``gc.lock`` with
           the time and read it back as T0, in the file system's own
           timestamp resolution; release.
        2. Mark, unlocked: every hash named by any index of any layer.
        3. Sweep in batches under the exclusive lock: delete blobs that are
           unmarked and whose mtime is older than T0, and temporary files
           older than an hour.

        A put that began before T0 finished before it, so its index (or a
        newer one) was visible throughout the mark; a put that began after
        T0 stamped every blob it used with a time >= T0. Details in
        docs/storage.md.
        """
        t0 = self._start_stamp()
        marked = self._mark()
        stats = GCStats()
        batch: list[os.DirEntry] = []
        for entry in self._blob_entries():
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
        self._sweep_index_tmp()
        log.info("collected %d of %d blobs, %d bytes", stats.blobs_deleted, stats.blobs_seen,
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
        """Digests (16 raw bytes each) named by any index of any layer."""
        marked: set[bytes] = set()
        for layer in self.layers():
            for idx in self.iter_indexes(layer):
                marked.update(bytes.fromhex(h) for h in idx.unique())
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

    def _sweep_index_tmp(self) -> None:
        """Remove index temporary files left by crashed writers over an hour ago."""
        limit = time.time_ns() - int(TMP_MAX_AGE * 1e9)
        for layer in self.layers():
            for _, zdir in _numbered(os.path.join(self.tiles_dir, layer)):
                for _, xdir in _numbered(zdir):
                    for e in _scandir(xdir):
                        if _is_tmp(e.name) and _mtime_ns(e) < limit:
                            _unlink_quietly(e.path)


def _place(meta: Meta) -> tuple[int, int, int]:
    """Where a metatile's index lives: (z, mx, my)."""
    return meta.z, meta.mx, meta.my


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
