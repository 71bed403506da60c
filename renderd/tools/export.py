"""Offline extracts of an area: MBTiles 1.3 or PMTiles v3.

Both formats store each distinct tile once:

- **MBTiles** (``.mbtiles``): the spec's deduplicated layout, an ``images``
  table (``tile_id`` = the tile's content hash, ``tile_data``) and a ``map``
  table (``zoom_level, tile_column, tile_row, tile_id``) joined by the
  ``tiles`` view that readers query. Rows are TMS: ``tile_row = 2^z - 1 - y``.
  ``metadata`` holds name, format, bounds, center, minzoom, maxzoom, type,
  version, and description/attribution when the layer has them.
- **PMTiles** (``.pmtiles``): written with the ``pmtiles`` package's
  ``Writer``, tiles in tile-id (Hilbert) order so the archive is clustered;
  identical tiles share one copy of their bytes (keyed by the store's
  128-bit content hash) and runs of them one directory entry.

The file is written beside the target and renamed into place when complete,
so a failed export never leaves a half-written archive under the name.

Tiles of the area that are not stored are counted as ``missing``; with
``render_missing`` the daemon is asked for their metatiles first (bulk
priority, as a seed). Empty entries of a stored index (no tile there) are
counted as ``empty`` and left out.
"""

from __future__ import annotations

import array
import json
import os
import sqlite3
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
from pmtiles.tile import Compression, Entry, TileType, zxy_to_tileid
from pmtiles.writer import Writer

from .. import protocol as p
from ..client import Endpoint, StopFlag, Window, connect
from ..config import LayerConfig
from ..errors import DaemonError, RenderdError, StoreError, UsageError
from ..store.base import Store
from ..store.index import EMPTY, MetaIndex
from ..tilemath import Meta, index_tile, metatile_of
from .area import Area
from .progress import Progress
from .seed import plan

FORMATS = {".mbtiles": "mbtiles", ".pmtiles": "pmtiles"}


def format_of(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise UsageError(f"output {path!r} must end in .mbtiles or .pmtiles")
    return FORMATS[ext]


@dataclass
class ExportSummary:
    path: str
    format: str
    tiles: int = 0
    unique_tiles: int = 0
    tile_bytes: int = 0        # every tile's bytes, tile by tile
    unique_bytes: int = 0      # each distinct tile once
    file_size: int = 0
    missing: int = 0
    empty: int = 0
    rendered: int = 0
    render_failed: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"export: {self.path} ({self.format}): {self.tiles} tiles, {self.unique_tiles} unique, "
               f"{self.file_size} bytes",
               f"  tiles: {self.tile_bytes} bytes tile by tile, {self.unique_bytes} after deduplication",
               f"  missing: {self.missing} tiles not stored, {self.empty} empty"]
        if self.rendered or self.render_failed:
            out.append(f"  rendered first: {self.rendered} metatiles, {self.render_failed} failed")
        out.append(f"  time: {self.seconds:.1f} s")
        for meta, reason in self.failures:
            out.append(f"  failed {meta}: {reason}")
        return out

    def as_dict(self) -> dict:
        return {"path": self.path, "format": self.format, "tiles": self.tiles,
                "unique_tiles": self.unique_tiles, "tile_bytes": self.tile_bytes,
                "unique_bytes": self.unique_bytes, "file_size": self.file_size,
                "missing": self.missing, "empty": self.empty, "rendered": self.rendered,
                "render_failed": self.render_failed, "seconds": round(self.seconds, 3)}


# --- sinks -------------------------------------------------------------------

class _MBTiles:
    SCHEMA = """
        CREATE TABLE metadata (name TEXT, value TEXT);
        CREATE UNIQUE INDEX metadata_name ON metadata (name);
        CREATE TABLE images (tile_id TEXT, tile_data BLOB);
        CREATE TABLE map (zoom_level INTEGER, tile_column INTEGER, tile_row INTEGER, tile_id TEXT);
        CREATE VIEW tiles AS
            SELECT map.zoom_level AS zoom_level, map.tile_column AS tile_column,
                   map.tile_row AS tile_row, images.tile_data AS tile_data
            FROM map JOIN images ON images.tile_id = map.tile_id;
    """

    def __init__(self, path: str):
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA application_id = 0x4d504258")  # 'MPBX', MBTiles 1.3
        self.db.execute("PRAGMA journal_mode = OFF")
        self.db.execute("PRAGMA synchronous = OFF")
        self.db.executescript(self.SCHEMA)
        self.db.execute("BEGIN")
        self.known: set[str] = set()
        self.rows: list[tuple[int, int, int, str]] = []

    def add(self, z: int, x: int, y: int, digest: str, data: Callable[[], bytes]) -> int | None:
        size = None
        if digest not in self.known:
            blob = data()
            self.db.execute("INSERT INTO images (tile_id, tile_data) VALUES (?, ?)", (digest, blob))
            self.known.add(digest)
            size = len(blob)
        self.rows.append((z, x, (1 << z) - 1 - y, digest))
        if len(self.rows) >= 10_000:
            self._flush()
        return size

    def _flush(self) -> None:
        self.db.executemany("INSERT INTO map VALUES (?, ?, ?, ?)", self.rows)
        self.rows.clear()

    def finish(self, meta: dict[str, str]) -> None:
        self._flush()
        self.db.executemany("INSERT INTO metadata VALUES (?, ?)", sorted(meta.items()))
        self.db.execute("CREATE UNIQUE INDEX images_id ON images (tile_id)")
        self.db.execute("CREATE UNIQUE INDEX map_index ON map (zoom_level, tile_column, tile_row)")
        self.db.execute("COMMIT")
        self.db.close()

    def abort(self) -> None:
        self.db.close()


class _KeyedWriter(Writer):
    """The pmtiles ``Writer``, deduplicating by the store's 128-bit hash
    instead of Python's 64-bit ``hash(bytes)``, and fetching a tile's bytes
    only the first time its hash is seen."""

    def write_keyed(self, tileid: int, key: str, data: Callable[[], bytes]) -> int | None:
        if self.tile_entries and tileid < self.tile_entries[-1].tile_id:
            self.clustered = False
        found = self.hash_to_offset.get(key)
        if found is None:
            blob = data()
            self.tile_f.write(blob)
            self.tile_entries.append(_entry(tileid, self.offset, len(blob)))
            self.hash_to_offset[key] = (self.offset, len(blob))
            self.offset += len(blob)
            size = len(blob)
        else:
            offset, length = found
            last = self.tile_entries[-1]
            if tileid == last.tile_id + last.run_length and last.offset == offset:
                last.run_length += 1
            else:
                self.tile_entries.append(_entry(tileid, offset, length))
            size = None
        self.addressed_tiles += 1
        return size


def _entry(tileid: int, offset: int, length: int) -> Entry:
    return Entry(tileid, offset, length, 1)


class _PMTiles:
    """Tiles are taken in the store's order and written in tile-id order, so
    the first pass keeps each distinct tile's bytes in a spool file beside
    the target (not in memory, and not read from the store a second time,
    where a re-render in between could have replaced them)."""

    def __init__(self, path: str):
        self.path = path
        self.ids = array.array("Q")
        self.refs = array.array("I")
        self.spans = array.array("Q")        # per distinct tile: offset, length in the spool
        self.digests: list[str] = []
        self.digest_no: dict[str, int] = {}
        self.spool = tempfile.TemporaryFile(dir=os.path.dirname(path), prefix=".export-spool-")
        self.spooled = 0

    def add(self, z: int, x: int, y: int, digest: str, data: Callable[[], bytes]) -> int | None:
        size = None
        no = self.digest_no.get(digest)
        if no is None:
            blob = data()
            no = self.digest_no[digest] = len(self.digests)
            self.digests.append(digest)
            self.spool.write(blob)
            self.spans.extend((self.spooled, len(blob)))
            self.spooled += len(blob)
            size = len(blob)
        self.ids.append(zxy_to_tileid(z, x, y))
        self.refs.append(no)
        return size

    def _spooled(self, no: int) -> bytes:
        offset, length = self.spans[2 * no], self.spans[2 * no + 1]
        self.spool.seek(offset)
        data = self.spool.read(length)
        if len(data) != length:
            raise StoreError(f"export spool is short at tile {self.digests[no]}")
        return data

    def finish(self, header: dict, metadata: dict) -> tuple[int, int]:
        """Write sorted by tile id; returns (unique tiles, their bytes)."""
        self.spool.flush()
        ids = np.frombuffer(self.ids, dtype=np.uint64) if len(self.ids) else np.zeros(0, np.uint64)
        refs = np.frombuffer(self.refs, dtype=np.uint32) if len(self.refs) else np.zeros(0, np.uint32)
        order = np.argsort(ids, kind="stable")
        unique_bytes = 0
        with open(self.path, "wb") as f:
            w = _KeyedWriter(f)
            for i in order:
                no = int(refs[i])
                size = w.write_keyed(int(ids[i]), self.digests[no], lambda n=no: self._spooled(n))
                if size is not None:
                    unique_bytes += size
            w.finalize(header, metadata)
        self.spool.close()
        return len(w.hash_to_offset), unique_bytes

    def abort(self) -> None:
        self.spool.close()


# --- the export ------------------------------------------------------------------

def _render_missing(store: Store, endpoint: Endpoint, layer: str, area: Area,
                    zooms: tuple[int, int], meta: int, s: ExportSummary, concurrency: int,
                    timeout: float, progress: Progress | None, stop: StopFlag | None) -> None:
    missing = [m for m in plan(area, zooms, meta) if store.get_index(layer, m) is None]
    if not missing:
        return
    if progress is not None:
        progress.note(f"rendering {len(missing)} missing metatiles first")
        progress.total, progress.done, progress.label = len(missing), 0, "metatiles rendered"

    def on_ok(m: Meta, reply: p.Reply) -> None:
        s.rendered += 1
        if progress is not None:
            progress.advance()

    def on_fail(m: Meta, reason: str) -> None:
        s.render_failed += 1
        if len(s.failures) < 10:
            s.failures.append((str(m), reason))
        if progress is not None:
            progress.advance()

    client = connect(endpoint)
    try:
        win = Window(client, layer, p.BULK, concurrency, timeout, on_ok, on_fail,
                     flags=("nodata",), stop=stop)
        for m in missing:
            if not win.submit(m):
                break
        win.finish()
        if win.gone:
            raise DaemonError(f"{win.gone} while rendering missing metatiles")
    finally:
        client.close()
    if stop is not None and stop.is_set():
        raise RenderdError("export interrupted while rendering missing metatiles")


class _Metatiles:
    """Tiles' bytes from the store, a whole metatile at a time (``get_metatile``).

    The last metatile read is kept: its index is asked for first, then the
    bytes of its tiles, one after another.
    """

    def __init__(self, store: Store, layer: str, meta: int):
        self.store, self.layer, self.meta = store, layer, meta
        self.current: Meta | None = None
        self.got: tuple[MetaIndex, dict[str, bytes]] | None = None

    def read(self, m: Meta) -> tuple[MetaIndex, dict[str, bytes]] | None:
        if m != self.current:
            self.current, self.got = m, self.store.get_metatile(self.layer, m)
        return self.got

    def index(self, m: Meta) -> MetaIndex | None:
        got = self.read(m)
        return None if got is None else got[0]

    def tile(self, z: int, x: int, y: int, digest: str) -> bytes:
        got = self.read(metatile_of(z, x, y, self.meta))
        data = None if got is None else got[1].get(digest)
        if data is None:
            raise StoreError(f"tile {z}/{x}/{y} ({digest}) is named by its metatile's index but "
                             "missing from the store")
        return data


def metatile_tiles(m: Meta, idx: MetaIndex | None, mask: list[bool], s: ExportSummary
                   ) -> Iterator[tuple[int, int, int, str]]:
    """(z, x, y, digest) of the stored tiles of ``m`` that ``mask`` keeps;
    counts the missing (no index) and empty ones into ``s``."""
    if idx is None:
        s.missing += sum(mask)
        return
    for i, inside in enumerate(mask):
        if not inside:
            continue
        h = idx.hashes[i]
        if h == EMPTY:
            s.empty += 1
            continue
        t = index_tile(m, i)
        yield t.z, t.x, t.y, h


#: the metadata item (MBTiles row, PMTiles JSON key) holding ``Extract``'s record
RECORD = "renderd_py"


class Extract:
    """An MBTiles or PMTiles file being written, metatile by metatile: ``add``
    takes a metatile's stored index (None: not stored) and which of its tiles
    are in the area, and reads the bytes of each distinct tile once through
    ``tile(z, x, y, digest)``; ``finish`` writes the metadata (and a
    ``record``, for whoever wants to know later what the file holds) and
    renames the file into place; ``abort`` leaves nothing behind. What
    ``export`` and the pipeline's ``write.mbtiles``/``write.pmtiles`` write."""

    def __init__(self, out: str):
        fmt = format_of(out)
        out = os.path.abspath(out)
        if not os.path.isdir(os.path.dirname(out)):
            raise UsageError(f"directory {os.path.dirname(out)} does not exist")
        self.out = out
        self.s = ExportSummary(out, fmt)
        self.tmp = f"{out}.part-{os.getpid()}"
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)
        self.sizes: dict[str, int] = {}
        self.sink = _MBTiles(self.tmp) if fmt == "mbtiles" else _PMTiles(self.tmp)

    def add(self, m: Meta, idx: MetaIndex | None, mask: list[bool],
            tile: Callable[[int, int, int, str], bytes]) -> None:
        for z, x, y, digest in metatile_tiles(m, idx, mask, self.s):
            size = self.sink.add(z, x, y, digest, lambda t=(z, x, y, digest): tile(*t))
            if size is not None:
                self.sizes[digest] = size
            self.s.tiles += 1

    def finish(self, lyr: LayerConfig, area: Area, zooms: tuple[int, int], hint: str = "",
               record: dict | None = None) -> ExportSummary:
        """Complete the file; ``RenderdError`` if it holds no tile (``hint``
        is added to that message)."""
        s = self.s
        if s.tiles == 0:
            raise RenderdError(f"nothing to export: no stored tile in the area ({s.missing} missing"
                               f"{hint})")
        w, so, e, n = area.bbox
        cx, cy = area.center()
        desc = lyr.description or f"{lyr.name}, zooms {zooms[0]}-{zooms[1]}"
        extra = {RECORD: json.dumps(record, sort_keys=True)} if record is not None else {}
        if isinstance(self.sink, _MBTiles):
            meta = {"name": lyr.name, "format": lyr.ext, "type": "baselayer", "version": "1.0",
                    "bounds": f"{w:.7f},{so:.7f},{e:.7f},{n:.7f}",
                    "center": f"{cx:.7f},{cy:.7f},{zooms[0]}",
                    "minzoom": str(zooms[0]), "maxzoom": str(zooms[1]), "description": desc, **extra}
            if lyr.attribution:
                meta["attribution"] = lyr.attribution
            self.sink.finish(meta)
            s.unique_tiles, s.unique_bytes = len(self.sizes), sum(self.sizes.values())
            s.tile_bytes = _mbtiles_tile_bytes(self.tmp)
        else:
            header = {
                "tile_type": TileType.JPEG if lyr.ext == "jpg" else TileType.PNG,
                "tile_compression": Compression.NONE,
                "min_lon_e7": int(round(w * 1e7)), "min_lat_e7": int(round(so * 1e7)),
                "max_lon_e7": int(round(e * 1e7)), "max_lat_e7": int(round(n * 1e7)),
                "center_zoom": zooms[0], "center_lon_e7": int(round(cx * 1e7)),
                "center_lat_e7": int(round(cy * 1e7)),
            }
            metadata = {"name": lyr.name, "format": lyr.ext, "type": "baselayer",
                        "description": desc, "minzoom": zooms[0], "maxzoom": zooms[1], **extra}
            if lyr.attribution:
                metadata["attribution"] = lyr.attribution
            s.unique_tiles, s.unique_bytes = self.sink.finish(header, metadata)
            s.tile_bytes = _pmtiles_tile_bytes(self.tmp)
        os.replace(self.tmp, self.out)
        s.file_size = os.path.getsize(self.out)
        return s

    def abort(self) -> None:
        self.sink.abort()
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)


def read_record(path: str) -> dict | None:
    """The record ``Extract.finish`` wrote into an MBTiles or PMTiles file,
    or None (no such file, another kind of file, no record)."""
    try:
        if format_of(path) == "mbtiles":
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                row = db.execute("SELECT value FROM metadata WHERE name = ?", (RECORD,)).fetchone()
            finally:
                db.close()
            text = row[0] if row else None
        else:
            from pmtiles.reader import MmapSource, Reader
            with open(path, "rb") as f:
                text = Reader(MmapSource(f)).metadata().get(RECORD)
        return json.loads(text) if isinstance(text, str) else None
    except Exception:  # missing, unreadable, foreign: nothing known of it
        return None


def export(store: Store, lyr: LayerConfig, area: Area, zooms: tuple[int, int], out: str,
           render_missing: bool = False, endpoint: Endpoint | None = None,
           concurrency: int = 8, timeout: float = 600.0, progress: Progress | None = None,
           stop: StopFlag | None = None) -> ExportSummary:
    format_of(out)
    started = time.monotonic()
    out = os.path.abspath(out)
    if not os.path.isdir(os.path.dirname(out)):
        raise UsageError(f"directory {os.path.dirname(out)} does not exist")
    rendered = ExportSummary(out, format_of(out))
    if render_missing:
        if endpoint is None:
            raise UsageError("--render-missing needs the daemon's address")
        _render_missing(store, endpoint, lyr.name, area, zooms, lyr.metatile, rendered, concurrency,
                        timeout, progress, stop)
    if progress is not None:
        progress.total, progress.done, progress.label = area.count_metatiles(zooms, lyr.metatile), 0, \
            "metatiles exported"
    metatiles = _Metatiles(store, lyr.name, lyr.metatile)
    extract = Extract(out)
    s = extract.s
    s.rendered, s.render_failed, s.failures = rendered.rendered, rendered.render_failed, rendered.failures
    try:
        for m in plan(area, zooms, lyr.metatile):
            if stop is not None and stop.is_set():
                raise RenderdError("export interrupted")
            extract.add(m, metatiles.index(m), area.tile_mask(m), metatiles.tile)
            if progress is not None:
                progress.advance()
        extract.finish(lyr, area, zooms, "" if render_missing else "; add --render-missing")
    except BaseException:
        extract.abort()
        raise
    finally:
        s.seconds = time.monotonic() - started
        if progress is not None:
            progress.finish()
    return s


def _mbtiles_tile_bytes(path: str) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("SELECT COALESCE(SUM(LENGTH(images.tile_data)), 0) FROM map "
                              "JOIN images ON images.tile_id = map.tile_id").fetchone()[0])
    finally:
        db.close()


def _pmtiles_tile_bytes(path: str) -> int:
    from pmtiles.tile import deserialize_directory, deserialize_header
    with open(path, "rb") as f:
        buf = f.read(127)
        h = deserialize_header(buf)
        total = 0

        def walk(offset: int, length: int) -> None:
            nonlocal total
            f.seek(offset)
            for e in deserialize_directory(f.read(length)):
                if e.run_length == 0:
                    walk(h["leaf_directory_offset"] + e.offset, e.length)
                else:
                    total += e.length * e.run_length

        walk(h["root_offset"], h["root_length"])
    return total
