"""Import a mod_tile tile directory (``.meta`` files) into a store.

Each ``.meta`` file is mapped onto the layer's metatiles (``n = min(layer
metatile, 2^z)``): with the usual metatile size 8 one file is one metatile;
a smaller size splits a file, a larger one fills a metatile from several
files (the parts no file covers keep what the store already holds). Tiles
outside the grid and files outside the layer's zooms are skipped. Identical
tiles become one blob. A file that cannot be read is reported and counted,
and the import goes on with the next one.

Times: a metatile's render and data time are the file's mtime. mod_tile
marks a metatile expired by moving its mtime back 20 years, and treats
every file older than ``planet-import-complete`` as expired; such metatiles
are imported stale (served at once, re-rendered in the background), with
the 20 years given back.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from ..config import LayerConfig
from ..errors import UsageError
from ..store import EMPTY, MetaIndex, Store, content_hash
from ..tilemath import Meta, metatile_size
from . import metafile

#: mod_tile's expiry moves an mtime back 20 years; anything before 2006
#: (its threshold: ``tm_year > 105``) has been expired.
EXPIRED_BEFORE = datetime(2006, 1, 1, tzinfo=timezone.utc).timestamp()
PLANET_TIMESTAMP = "planet-import-complete"

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"


@dataclass
class ImportStats:
    files: int = 0              # .meta files found
    imported: int = 0           # files imported
    metatiles: int = 0          # distinct metatiles of ours written
    tiles: int = 0              # tiles imported
    unique: int = 0             # distinct tiles among them
    bytes_before: int = 0       # their bytes, tile by tile
    bytes_after: int = 0        # their bytes after deduplication
    new_blobs: int = 0          # blobs the store did not have yet
    stale: int = 0              # metatiles imported stale (expired in mod_tile)
    outside_grid: int = 0       # tiles with data outside the grid, skipped
    skipped_zoom: int = 0       # files outside the layer's (or the asked) zooms
    skipped_options: int = 0    # files of a parameterised style (NAME.OPTIONS.meta)
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return len(self.failures)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["failed"] = self.failed
        d["failures"] = [{"file": f, "error": e} for f, e in self.failures]
        return d


# --- finding the files -----------------------------------------------------

def style_dir(root: str | os.PathLike[str], style: str | None = None) -> Path:
    """The directory holding zoom directories: ``root`` or ``root/STYLE``.

    Without ``style``, ``root`` may be a style directory (it holds zoom
    directories) or a mod_tile tile directory holding exactly one style.
    """
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"{root} is not a directory")
    if style:
        base = root / style
        if not base.is_dir():
            raise UsageError(f"{base} is not a directory")
        return base
    try:
        entries = sorted(e.name for e in os.scandir(root) if e.is_dir())
    except OSError as e:
        raise UsageError(f"cannot list {root}: {e.strerror}") from None
    if any(name.isdigit() for name in entries):
        return root
    styles = [name for name in entries
              if any(sub.isdigit() for sub in _subdirs(root / name))]
    if len(styles) > 1:
        raise UsageError(f"{root} holds several styles ({', '.join(styles)}); choose one with --style")
    return root / styles[0] if styles else root


def _subdirs(path: Path) -> list[str]:
    try:
        return [e.name for e in os.scandir(path) if e.is_dir()]
    except OSError:
        return []


def iter_meta_files(base: Path, zooms: tuple[int, int] | None = None,
                    on_error: Callable[[str, str], None] | None = None) -> Iterator[Path]:
    """Every ``*.meta`` below ``base`` in a stable order, zoom directories
    outside ``zooms`` left out when the layout shows them. Directories that
    cannot be listed go to ``on_error``."""
    def walk(d: Path, top: bool) -> Iterator[Path]:
        try:
            entries = sorted(os.scandir(d), key=lambda e: (not e.name.isdigit(), len(e.name), e.name))
        except OSError as e:
            if on_error:
                on_error(str(d), f"cannot list: {e.strerror or e}")
            return
        for e in entries:
            if e.is_dir(follow_symlinks=False):
                if top and zooms and e.name.isdigit() and not zooms[0] <= int(e.name) <= zooms[1]:
                    continue
                yield from walk(Path(e.path), False)
            elif e.name.endswith(".meta") and e.is_file():
                yield Path(e.path)
    yield from walk(base, True)


def planet_time(base: Path) -> float | None:
    """mtime of mod_tile's ``planet-import-complete`` for this style, if any."""
    for p in (base / PLANET_TIMESTAMP, base.parent / PLANET_TIMESTAMP):
        try:
            return p.stat().st_mtime
        except OSError:
            continue
    return None


# --- importing -------------------------------------------------------------

def _sniff(data: bytes) -> str:
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(JPEG_SIGNATURE):
        return "jpg"
    return "unknown"


def _times(mtime: float, planet: float | None) -> tuple[int, bool]:
    """(render time, stale) of a file with ``mtime``."""
    if mtime < EXPIRED_BEFORE:
        t = datetime.fromtimestamp(mtime, timezone.utc)
        try:
            t = t.replace(year=t.year + 20)
        except ValueError:  # 29 February
            t = t.replace(year=t.year + 20, day=28)
        return int(t.timestamp()), True
    return int(mtime), planet is not None and mtime < planet


class Importer:
    """Imports ``.meta`` files into ``store`` as metatiles of ``layer``."""

    def __init__(self, store: Store, layer: LayerConfig, zooms: tuple[int, int] | None = None,
                 planet: float | None = None,
                 on_error: Callable[[str, str], None] | None = None):
        self.store = store
        self.layer = layer
        lo, hi = layer.minzoom, layer.maxzoom
        if zooms is not None:
            lo, hi = max(lo, zooms[0]), min(hi, zooms[1])
        self.zooms = (lo, hi)
        self.planet = planet
        self.on_error = on_error
        self.stats = ImportStats()
        self._seen: set[bytes] = set()
        self._metas: set[Meta] = set()

    def fail(self, path: str, message: str) -> None:
        self.stats.failures.append((path, message))
        if self.on_error:
            self.on_error(path, message)

    def import_file(self, path: str | os.PathLike[str]) -> bool:
        """Import one file; False (and a recorded failure) if it is unusable."""
        name = os.fspath(path)
        st = self.stats
        st.files += 1
        if "." in os.path.basename(name)[:-len(".meta")]:
            st.skipped_options += 1
            return False
        try:
            mf = metafile.read(name)
            mtime = os.stat(name).st_mtime
        except metafile.MetaFileError as e:
            self.fail(name, e.reason)
            return False
        except OSError as e:
            self.fail(name, f"cannot read: {e.strerror or e}")
            return False
        if not self.zooms[0] <= mf.z <= self.zooms[1]:
            st.skipped_zoom += 1
            return False
        if not metafile.path_matches(name, mf.z, mf.x, mf.y, mf.n):
            self.fail(name, f"corrupt header: it says metatile {mf.z}/{mf.x}/{mf.y}, which mod_tile keeps "
                            f"at {metafile.meta_relpath(mf.z, mf.x, mf.y, mf.n)}")
            return False
        tiles = {(t.x, t.y): data for t, data in mf.grid_tiles() if data}
        want = self.layer.ext
        for (x, y), data in tiles.items():
            kind = _sniff(data)
            if kind != want:
                what = "an unknown format" if kind == "unknown" else f"a {kind.upper()}"
                self.fail(name, f"tile {mf.z}/{x}/{y} is {what}, layer {self.layer.name} holds {want}")
                return False
        rendered, stale = _times(mtime, self.planet)
        st.outside_grid += mf.outside
        self._write(mf, tiles, rendered, stale)
        st.imported += 1
        return True

    def _write(self, mf: metafile.MetaFile, tiles: dict[tuple[int, int], bytes],
               rendered: int, stale: bool) -> None:
        st = self.stats
        z = mf.z
        n = metatile_size(z, self.layer.metatile)
        side_x = max(0, min(mf.n, (1 << z) - mf.x))
        side_y = max(0, min(mf.n, (1 << z) - mf.y))
        hashes_of: dict[tuple[int, int], str] = {}
        blobs: dict[str, bytes] = {}
        for xy, data in tiles.items():
            h = content_hash(data)
            hashes_of[xy] = h
            blobs[h] = data
            st.tiles += 1
            st.bytes_before += len(data)
            key = bytes.fromhex(h)
            if key not in self._seen:
                self._seen.add(key)
                st.unique += 1
                st.bytes_after += len(data)
        x_end, y_end = mf.x + side_x, mf.y + side_y
        for mx0 in range(mf.x - mf.x % n, x_end, n):
            for my0 in range(mf.y - mf.y % n, y_end, n):
                meta = Meta(z, mx0, my0, n)
                covered = mf.x <= mx0 and mx0 + n <= x_end and mf.y <= my0 and my0 + n <= y_end
                hashes = [EMPTY] * (n * n)
                for dx in range(n):
                    for dy in range(n):
                        h = hashes_of.get((mx0 + dx, my0 + dy))
                        if h:
                            hashes[dx * n + dy] = h
                m_rendered, m_stale = rendered, stale
                meta_blobs = {h: blobs[h] for h in set(hashes) if h != EMPTY}
                if not covered:
                    m_rendered, m_stale = self._merge(meta, mf, hashes, meta_blobs, rendered, stale)
                index = MetaIndex(meta, tuple(hashes), m_rendered, m_rendered, self.layer.ext, m_stale)
                st.new_blobs += self.store.put_metatile(self.layer.name, index, meta_blobs) or 0
                if meta not in self._metas:
                    self._metas.add(meta)
                    st.metatiles += 1
                    st.stale += 1 if m_stale else 0

    def _merge(self, meta: Meta, mf: metafile.MetaFile, hashes: list[str], blobs: dict[str, bytes],
               rendered: int, stale: bool) -> tuple[int, bool]:
        """Fill the tiles of ``meta`` this file does not cover from the store."""
        got = self.store.get_metatile(self.layer.name, meta)
        if got is None or got[0].meta != meta:
            return rendered, stale
        old, have = got
        keep: dict[int, str] = {}
        for i, h in enumerate(old.hashes):
            x, y = meta.x0 + i // meta.n, meta.y0 + i % meta.n
            inside = mf.x <= x < mf.x + mf.n and mf.y <= y < mf.y + mf.n
            if h != EMPTY and not inside:
                keep[i] = h
        if not keep:
            return rendered, stale
        for i, h in keep.items():
            data = blobs[h] if h in blobs else have.get(h)
            if data is not None:
                blobs[h] = data
                hashes[i] = h
        return min(rendered, old.rendered), stale or old.stale


def import_dir(store: Store, layer: LayerConfig, root: str | os.PathLike[str], style: str | None = None,
               zooms: tuple[int, int] | None = None,
               on_error: Callable[[str, str], None] | None = None,
               on_progress: Callable[[ImportStats], None] | None = None,
               progress_every: float = 1.0) -> ImportStats:
    """Import every ``.meta`` file below ``root`` (see the module docstring)."""
    base = style_dir(root, style)
    imp = Importer(store, layer, zooms, planet_time(base), on_error)
    last = time.monotonic()
    for path in iter_meta_files(base, imp.zooms, imp.fail):
        imp.import_file(path)
        if on_progress and time.monotonic() - last >= progress_every:
            on_progress(imp.stats)
            last = time.monotonic()
    return imp.stats


def format_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


def summary(st: ImportStats) -> str:
    """The human summary printed by ``renderd-py import-meta``."""
    saved = st.bytes_before - st.bytes_after
    share = (1 - st.unique / st.tiles) * 100 if st.tiles else 0.0
    lines = [
        f"files         {st.files} found, {st.imported} imported, {st.failed} failed",
        f"metatiles     {st.metatiles} written ({st.stale} stale)",
        f"tiles         {st.tiles} ({st.unique} unique, {share:.1f}% duplicates)",
        f"bytes         {format_bytes(st.bytes_before)} before deduplication, "
        f"{format_bytes(st.bytes_after)} after ({format_bytes(saved)} saved)",
        f"new blobs     {st.new_blobs} written to the store",
    ]
    skipped = []
    if st.skipped_zoom:
        skipped.append(f"{st.skipped_zoom} files outside the zooms")
    if st.skipped_options:
        skipped.append(f"{st.skipped_options} files of a parameterised style")
    if st.outside_grid:
        skipped.append(f"{st.outside_grid} tiles outside the grid")
    if skipped:
        lines.append("skipped       " + ", ".join(skipped))
    return "\n".join(lines)
