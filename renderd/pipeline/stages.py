"""The stages at work: thin adapters over the tools.

Each stage type has a class here. Before any work, ``prepare(before)``
learns what the stage will handle: a reader lists its items (the files a
pattern matches and their headers, the catalog's rows, the stored tile
sets), every other stage derives its own from the stage before (the COG
each raster becomes, the dataset each COG becomes, the tile sets the
datasets feed and their metatiles). That is what ``--dry-run`` prints
(``plan``), what the progress lines count against, and where the problems a
run would meet late are found early (two rasters written to one file, a
file that is no raster, the daemon not answering). ``run(inbox, outbox)``
then does the work on items as they come:

=====================  ============================================================
``read.files``         ``catalog.pattern`` and ``tools.cog.inspect`` (headers)
``read.catalog``       ``Catalog.list``
``transform.optimize`` ``tools.cog.optimize_iter`` (``optimize-rasters``): processes
``transform.reproject`` the same, warping (``--reproject``, or another CRS)
``write.catalog``      ``tools.ingest.ingest_iter`` (``ingest --skip-existing``)
``transform.pyramid``  ``tools.seed.Seeder`` (``seed``): metatiles through the daemon
``read.store``         ``Store.get_index`` / ``iter_indexes``
``write.mbtiles/pmtiles`` ``tools.export.Extract`` (``export``)
=====================  ============================================================

A second run skips what is done: a COG that is current is not written
again (its record, ``tools.cog``), a dataset ingested with the same size and
mtime is not read again, a stored metatile is not rendered again, an
extract whose record says it holds the same tiles is not written again;
each stage says what it skipped.
"""

from __future__ import annotations

import abc
import hashlib
import os
import time
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from typing import Any

from .. import tilesets
from ..catalog.model import Dataset
from ..errors import (CatalogMissing, DaemonError, IngestError, PipelineError, RenderdError,
                      UsageError)
from ..store.index import EMPTY, MetaIndex
from ..tilemath import BBox, Meta, meta_lnglat_bounds, metatile_of
from ..tools.area import Area
from .engine import Inbox, Outbox, Stop
from .parse import Flow, Pipeline
from .readiness import Readiness, union_area
from .spec import Stage

Bounds = tuple[float, float, float, float]


# --- items ----------------------------------------------------------------------

@dataclass(frozen=True)
class Raster:
    """A raster file (or one band of one, or a netCDF variable) and its keys."""

    id: int
    name: str                          # the GDAL dataset name
    file: str                          # the local file
    keys: dict[str, str]
    band: int | None = None            # one band of ``name`` (split_bands)
    suffix: str | None = None          # that band's key value (default output names)
    bounds: Bounds | None = None       # lon/lat, where the header says


@dataclass(frozen=True)
class DatasetItem:
    """A dataset in the catalog; ``bounds`` is where the stage that made it
    expected it (what the pyramid's ``Readiness`` waits on)."""

    id: int
    dataset: Dataset | None
    keys: dict[str, str]
    bounds: Bounds | None


@dataclass(frozen=True)
class MetaTiles:
    """A metatile of a tile set as stored (``index`` None: not stored)."""

    tileset: str
    meta: Meta
    index: MetaIndex | None
    area: Area


@dataclass(frozen=True)
class TilesetDone:
    """Every metatile of the tile set has been given."""

    tileset: str
    area: Area
    zooms: tuple[int, int]


@dataclass
class Env:
    cfg: Any
    stop: Stop
    debug: bool = False
    dry_run: bool = False
    progress: bool = True
    started: float = field(default_factory=time.monotonic)

    def store(self):
        from ..store import open_store
        return open_store(self.cfg.store)

    def existing_store(self):
        """The store to read from, or None for a disk store not made yet
        (opening it would make its directories: a dry run writes nothing)."""
        if self.cfg.store.kind == "disk" and not os.path.isdir(self.cfg.store.path):
            return None
        return self.store()


def plural(n: int, word: str) -> str:
    """``1 raster``, ``2 rasters`` (``word`` is the plural; "-s" is dropped)."""
    if n == 1:
        word = {"metatiles": "metatile", "tile sets": "tile set", "datasets": "dataset",
                "rasters": "raster", "files": "file", "tiles": "tile"}.get(word, word)
    return f"{n} {word}"


def mb(n: float) -> str:
    if n < 1e6:
        return f"{n / 1e3:.1f} kB"
    return f"{n / 1e6:.1f} MB"


def lonlat_bounds(crs: str | None, transform: tuple[float, ...] | None, width: int, height: int
                  ) -> Bounds | None:
    """A raster's lon/lat bounds from its header (None without a georeference)."""
    if crs is None or transform is None:
        return None
    from rasterio.warp import transform_bounds
    a, b, c, d, e, f = transform[:6]
    xs = [c, c + a * width, c + b * height, c + a * width + b * height]
    ys = [f, f + d * width, f + e * height, f + d * width + e * height]
    try:
        w, s, e_, n = transform_bounds(crs, "EPSG:4326", min(xs), min(ys), max(xs), max(ys),
                                       densify_pts=21)
    except Exception:  # a CRS PROJ cannot take to lon/lat: not known
        return None
    return (max(-180.0, w), max(-90.0, s), min(180.0, e_), min(90.0, n))


# --- the stages -----------------------------------------------------------------

class Base(abc.ABC):
    unit = "items"
    queue_size = 4

    def __init__(self, stage: Stage, flow: Flow, env: Env, position: int):
        from ..tools.progress import Progress
        self.stage = stage
        self.flow = flow
        self.env = env
        self.label = stage.label
        self.items: list[Any] = []
        self.progress = Progress(0, self.unit, enabled=env.progress, prefix=f"{self.label}: ",
                                 position=position)
        self.seconds = 0.0
        self._incomplete: list[str] = []
        #: when the first and the last item were done, in seconds since the run started
        self.first: float | None = None
        self.last: float | None = None

    def advance(self, extra: str | None = None) -> None:
        """One item done: counted, timed, shown."""
        now = round(time.monotonic() - self.env.started, 3)
        if self.first is None:
            self.first = now
        self.last = now
        self.progress.advance(1, extra)

    def fail(self, message: str, usage: bool = True) -> RenderdError:
        return (PipelineError if usage else RenderdError)(f"{self.label}: {message}")

    @abc.abstractmethod
    def prepare(self, before: "Base | None") -> None:
        """Check everything this stage needs before any stage runs (one line on failure)."""

    def plan(self) -> list[str]:
        return []

    @abc.abstractmethod
    def run(self, inbox: Inbox, outbox: Outbox) -> None:
        """Take the stage before's items from ``inbox``, give its own to ``outbox``."""

    def lines(self) -> list[str]:
        return []

    def report(self) -> dict:
        return {"stage": self.stage.index, "type": self.stage.type, "done": self.progress.done,
                "first": self.first, "last": self.last}

    def incomplete(self) -> list[str]:
        return self._incomplete


class ReadFiles(Base):
    unit = "rasters"

    def prepare(self, before: Base | None) -> None:
        from ..catalog.pattern import parse_pattern
        from ..tools.cog import inspect, raster_env

        st = self.stage
        try:
            files = parse_pattern(st["pattern"]).files()
        except IngestError as e:
            raise self.fail(f"field \"pattern\": {e}") from None
        # the smallest first (ties by name): the quickest to convert and ingest, so
        # that the renders, the bulk of the work, start as early as they can
        # (Johnson's rule for two stages in a row)
        files.sort(key=lambda f: (os.path.getsize(f[0]), f[0]))
        var, split = st.get("variable"), st.get("split_bands")
        self.files = len(files)
        self.bytes = 0
        with raster_env():
            for path, keys in files:
                self.bytes += os.path.getsize(path)
                name = f"netcdf:{path}:{var}" if var else path
                try:
                    src = inspect(name)
                except UsageError as e:
                    raise self.fail(str(e)) from None
                bounds = lonlat_bounds(src.crs, src.transform, src.width, src.height)
                if split is None:
                    self.items.append(Raster(len(self.items), name, path, dict(keys), bounds=bounds))
                    continue
                for band, value in self._band_values(name, len(src.bands), split):
                    self.items.append(Raster(len(self.items), name, path, {**keys, split["key"]: value},
                                             band=band, suffix=value, bounds=bounds))
        self.progress.total = len(self.items)

    def _band_values(self, name: str, count: int, split: dict[str, str]) -> list[tuple[int, str]]:
        if split["value"] == "band":
            width = len(str(count))
            values = [f"{b:0{width}d}" for b in range(1, count + 1)]
        else:
            from ..tools.nctime import band_times
            fmt = split["value"][len("time:"):]
            values = []
            for b, t in enumerate(band_times(name), start=1):
                if t is None:
                    raise self.fail(f"field \"split_bands\": band {b} of {name} has no time "
                                    "(a netCDF time coordinate)")
                values.append(t.strftime(fmt))
        seen: dict[str, int] = {}
        for b, v in enumerate(values, start=1):
            if not tilesets.valid_key_value(v):
                raise self.fail(f"field \"split_bands\": band {b} of {name} gives {split['key']} {v!r}, "
                                f"not a key value ({tilesets.VALUE_PART})")
            if v in seen:
                raise self.fail(f"field \"split_bands\": bands {seen[v]} and {b} of {name} both give "
                                f"{split['key']} {v}")
            seen[v] = b
        return list(enumerate(values, start=1))

    def plan(self) -> list[str]:
        return [f"{plural(len(self.items), 'rasters')} from {plural(self.files, 'files')} "
                f"({mb(self.bytes)}) matching {self.stage.raw['pattern']}"]

    def run(self, inbox: Inbox, outbox: Outbox) -> None:
        t0 = time.monotonic()
        for r in self.items:
            if self.env.stop.is_set() or not outbox.put(r):
                break
            self.advance(os.path.basename(r.file))
        self.seconds = time.monotonic() - t0

    def lines(self) -> list[str]:
        return [f"{plural(self.progress.done, 'rasters')} from {plural(self.files, 'files')}"]

    def report(self) -> dict:
        return {**super().report(), "rasters": self.progress.done, "files": self.files}


class Convert(Base):
    """``transform.optimize`` and ``transform.reproject``: COGs of each raster."""

    unit = "rasters"
    queue_size = 2

    def options(self, r: Raster):
        from ..tools.cog import Options
        st = self.stage
        bands = (r.band,) if r.band else tuple(st.get("bands", ()))
        common = dict(compression=st["compression"], quality=st.get("quality"),
                      blocksize=st["blocksize"], resampling=st["resampling"], bands=bands)
        if st.type == "transform.optimize":
            return Options(**common, bounds=st.get("bounds"), crs=st.get("crs"))
        target = st["crs"]
        mercator = _is_web_mercator(target)
        return Options(**common, reproject=mercator, target_crs=None if mercator else target)

    def out_name(self, r: Raster) -> str:
        from ..tools.cog import output_name
        template = self.stage.get("name")
        if template:
            return template.format_map(r.keys)
        base = output_name(r.name)
        if r.suffix:
            stem, ext = os.path.splitext(base)
            return f"{stem}_{r.suffix}{ext}"
        return base

    def prepare(self, before: Base | None) -> None:
        from ..tools.cog import check_outdir
        assert before is not None
        st = self.stage
        self.outdir = st["output"]
        self.sources: dict[int, Raster] = {}
        taken: dict[str, Raster] = {}
        for r in before.items:
            name = self.out_name(r)
            out = os.path.join(self.outdir, name)
            if name in taken:
                other = taken[name]
                what = (f"{other.name} band {other.band}" if other.band else other.name,
                        f"{r.name} band {r.band}" if r.band else r.name)
                raise self.fail(f"{what[0]} and {what[1]} would both be written to {out}; tell them "
                                "apart with {key} placeholders in \"name\"")
            taken[name] = r
            bounds = r.bounds
            if bounds is None and st.type == "transform.optimize" and st.get("crs"):
                bounds = self._georeferenced(r)
            self.sources[r.id] = r
            self.items.append(replace(r, name=out, file=out, band=None, suffix=None, bounds=bounds))
        if not self.env.dry_run:
            try:
                check_outdir(self.outdir)
            except UsageError as e:
                raise self.fail(f"field \"output\": {str(e).replace('-o ', '')}") from None
        self.progress.total = len(self.items)
        self.written = self.current = 0
        self.bytes = 0

    def _georeferenced(self, r: Raster) -> Bounds | None:
        """The lon/lat bounds of a source without a georeference or CRS once
        this stage's ``bounds`` and ``crs`` complete it."""
        from ..tools.cog import inspect, parse_crs, raster_env
        st = self.stage
        with raster_env():
            try:
                src = inspect(r.name)
            except UsageError:
                return None
            crs = src.crs or parse_crs(st["crs"]).to_wkt()
            if src.transform is not None:
                return lonlat_bounds(crs, src.transform, src.width, src.height)
            if st.get("bounds"):
                return lonlat_bounds(crs, _box_transform(st["bounds"]), 1, 1)
        return None

    def plan(self) -> list[str]:
        from ..tools.cog import inspect, is_current, raster_env, record_of
        current = 0
        with raster_env():
            for item in self.items:
                src = self.sources[item.id]
                try:
                    source = inspect(src.name)
                except UsageError:
                    continue
                if not self.stage["overwrite"] and is_current(item.file, source,
                                                             record_of(source, self.options(src))):
                    current += 1
        n = len(self.items)
        return [f"{plural(n, 'rasters')} into {self.outdir}: {n - current} to write, "
                f"{current} current (skipped)"]

    def run(self, inbox: Inbox, outbox: Outbox) -> None:
        from ..tools.cog import Conversion, Failure, optimize_iter
        t0 = time.monotonic()
        by_output: dict[str, Raster] = {}
        made = {item.id: item for item in self.items}

        def work():
            for r in inbox:
                item = made[r.id]
                by_output[item.file] = item
                yield Conversion(r.name, self.options(self.sources[r.id]), os.path.basename(item.file))

        try:
            for res in optimize_iter(work(), self.outdir, self.stage["overwrite"], self.stage["jobs"],
                                     self.env.debug, in_process=False, stop=self.env.stop.is_set,
                                     nice=CONVERT_NICE):
                if isinstance(res, Failure):
                    raise (UsageError if res.usage else RenderdError)(res.message)
                if res.status == "current":
                    self.current += 1
                else:
                    self.written += 1
                    self.bytes += res.bytes
                self.advance(os.path.basename(res.output))
                if not outbox.put(by_output[res.output]):
                    break
        finally:
            self.seconds = time.monotonic() - t0

    def lines(self) -> list[str]:
        size = f" ({mb(self.bytes)})" if self.written else ""
        return [f"{plural(self.written + self.current, 'rasters')} into {self.outdir}: "
                f"{self.written} written{size}, {self.current} current (skipped)"]

    def report(self) -> dict:
        return {**super().report(), "written": self.written, "current": self.current,
                "bytes": self.bytes}


#: the nice level of the processes converting COGs: the renders they feed
#: (and users' renders on the same host) go first when the CPU is short
CONVERT_NICE = 10


def _is_web_mercator(crs: str) -> bool:
    from ..tools.cog import parse_crs, raster_env
    with raster_env():
        return parse_crs(crs).to_epsg() == 3857


def _box_transform(b: Bounds) -> tuple[float, ...]:
    """The transform of a 1x1 raster covering ``b`` (for ``lonlat_bounds``)."""
    w, s, e, n = b
    return (e - w, 0.0, w, 0.0, s - n, n)


@dataclass(frozen=True)
class Expect:
    """A dataset a stage will give: its id, keys and expected bounds."""

    id: int
    keys: dict[str, str]
    bounds: Bounds | None


class WriteCatalog(Base):
    unit = "datasets"
    queue_size = 64

    def prepare(self, before: Base | None) -> None:
        assert before is not None
        for r in before.items:
            if r.name != r.file:
                what = f"band {r.band} of {r.file}" if r.band else r.name
                raise self.fail(f"{what} is not a file of its own: put a transform.optimize before "
                                "write.catalog")
        if isinstance(before, ReadFiles):
            # straight from the files: every header checked before anything is written, as ingest does
            from ..catalog.describe import native_bounds, open_raster, wgs84_bounds
            for r in before.items:
                try:
                    with open_raster(r.file) as src:
                        wgs84_bounds(src, native_bounds(src), r.file)
                except IngestError as e:
                    raise self.fail(str(e)) from None
        self.sources = list(before.items)
        self.items = [Expect(r.id, r.keys, r.bounds) for r in before.items]
        self.progress.total = len(self.items)
        self.counts: Counter[str] = Counter()
        self.stale: dict[str, int] = {}
        self.warnings: list[str] = []

    def _known(self) -> dict[str, tuple[int, float]]:
        from ..catalog import open_catalog
        try:
            with open_catalog(self.env.cfg.catalog.url, create=False) as catalog:
                return catalog.files(self.stage["collection"])
        except CatalogMissing:
            return {}

    def plan(self) -> list[str]:
        known = self._known()
        done = 0
        todo_bytes = 0
        for r in self.sources:
            path = os.path.abspath(r.file)
            try:
                st = os.stat(path)
            except OSError:
                continue
            if known.get(path) == (st.st_size, st.st_mtime):
                done += 1
            else:
                todo_bytes += st.st_size
        n = len(self.sources)
        size = f" ({mb(todo_bytes)} of files there now)" if todo_bytes else ""
        return [f"collection {self.stage['collection']}: {plural(n, 'datasets')}: {n - done} to "
                f"ingest{size}, {done} already ingested (same size and mtime: skipped)"]

    def run(self, inbox: Inbox, outbox: Outbox) -> None:
        from ..catalog import open_catalog
        from ..store import open_store
        from ..tools.ingest import Restale, ingest_iter
        from ..tools.purge import front_purge, purge_urls

        t0 = time.monotonic()
        cfg = self.env.cfg
        collection = self.stage["collection"]
        restale = Restale(cfg.layers, collection, lambda: open_store(cfg.store),
                          (lambda ts: front_purge(cfg, ts, "dirty", announce=True)) if purge_urls(cfg) else None)
        fed: deque[Raster] = deque()

        def files():
            for r in inbox:
                fed.append(r)
                yield r.file, r.keys

        try:
            with open_catalog(cfg.catalog.url) as catalog:
                for done in ingest_iter(catalog, files(), collection, skip_existing=True,
                                        stats=self.stage["stats"], restale=restale):
                    r = fed.popleft()
                    self.counts[done.status] += 1
                    self.advance(os.path.basename(done.path))
                    if not outbox.put(DatasetItem(r.id, done.dataset, r.keys, r.bounds)):
                        break
        finally:
            self.stale = {t: n for t, n in restale.marked.items() if n}
            try:
                restale.close()
            finally:
                self.warnings = restale.nginx()[2]
                self.seconds = time.monotonic() - t0

    def lines(self) -> list[str]:
        c = self.counts
        out = [f"{plural(sum(c.values()), 'datasets')} into collection {self.stage['collection']}: "
               f"{c['ingested']} ingested, {c['updated']} updated, {c['unchanged']} unchanged, "
               f"{c['skipped']} skipped (same size and mtime)"]
        if self.stale:
            out.append(f"  metatiles marked stale: {sum(self.stale.values())} "
                       f"({', '.join(f'{n} {t}' for t, n in sorted(self.stale.items()))})")
        return out

    def report(self) -> dict:
        return {**super().report(), **{k: self.counts[k] for k in ("ingested", "updated", "unchanged",
                                                                   "skipped")},
                "stale": dict(sorted(self.stale.items()))}


class ReadCatalog(Base):
    unit = "datasets"
    queue_size = 64

    def prepare(self, before: Base | None) -> None:
        from ..catalog import open_catalog
        st = self.stage
        try:
            with open_catalog(self.env.cfg.catalog.url, create=False) as catalog:
                found = catalog.list(st["collection"], st["where"])
        except UsageError as e:
            raise self.fail(str(e)) from None
        if not found:
            where = "".join(f", {k}={v}" for k, v in sorted(st["where"].items()))
            raise self.fail(f"no datasets in collection {st['collection']}{where}")
        self.items = [DatasetItem(i, d, dict(d.keys), d.wgs84_bounds) for i, d in enumerate(found)]
        self.progress.total = len(self.items)

    def plan(self) -> list[str]:
        size = sum(i.dataset.size for i in self.items)
        return [f"{plural(len(self.items), 'datasets')} of collection {self.stage['collection']} "
                f"({mb(size)} of files)"]

    def run(self, inbox: Inbox, outbox: Outbox) -> None:
        for d in self.items:
            if self.env.stop.is_set() or not outbox.put(d):
                break
            self.advance()

    def lines(self) -> list[str]:
        return [f"{plural(self.progress.done, 'datasets')} of collection {self.stage['collection']}"]

    def report(self) -> dict:
        return {**super().report(), "datasets": self.progress.done}


def _given_area(stage: Stage) -> Area | None:
    if stage.get("area") is not None:
        return stage["area"]
    b = stage.get("bbox")
    if b is not None:
        return Area(BBox(*b), f"bbox {stage.raw['bbox']}", is_box=True)
    return None


class Tiles(Base):
    """What gives tiles: the tile sets it will give, their areas and zooms."""

    unit = "metatiles"
    queue_size = 256

    @abc.abstractmethod
    def tileset_plan(self) -> list[tuple[str, Area | None]]:
        """The tile sets this stage will give, each with its area (None: every stored metatile)."""


class Pyramid(Tiles):
    def prepare(self, before: Base | None) -> None:
        assert before is not None
        st = self.stage
        self.lyr = self.flow.layer_config
        self.zooms = st["zoom"]
        self.area = _given_area(st)
        groups: dict[str, dict[int, Bounds | None]] = {}
        self.ignored = 0
        for d in before.items:
            ts = tilesets.layer_tileset(self.lyr, d.keys)
            if ts is None or (self.flow.tileset is not None and ts != self.flow.tileset):
                self.ignored += 1
                continue
            groups.setdefault(ts, {})[d.id] = d.bounds
        self.readiness: dict[str, Readiness | None] = {}
        self.expected = groups
        from ..render.pyramid import from_tiles
        z0, top = self.zooms
        self.tiles_levels = [z for z in range(z0, top + 1)
                             if from_tiles(self.lyr, z, top, st["lower_zooms"])]
        self.source_levels = [z for z in range(z0, top + 1) if z not in self.tiles_levels]
        for ts, exp in sorted(groups.items()):
            area = self.area
            if area is None and all(b is not None for b in exp.values()):
                area = union_area([b for b in exp.values() if b is not None])
            self.readiness[ts] = None if area is None else Readiness(area, self.zooms, self.lyr.metatile,
                                                                     exp, self.source_levels)
        self.progress.total = sum(r.total() for r in self.readiness.values() if r is not None)
        if not self.env.dry_run and self.readiness:
            from ..client import connect
            try:
                connect(self.env.cfg.daemon.broker).close()
            except (DaemonError, UsageError) as e:
                raise self.fail(f"{e}; run the pipeline again when it answers", usage=False) from None

    def tileset_plan(self) -> list[tuple[str, Area | None]]:
        return [(ts, None if r is None else r.area) for ts, r in self.readiness.items()]

    def plan(self) -> list[str]:
        lyr, (z0, z1) = self.lyr, self.zooms
        out = [f"layer {lyr.name}, zooms {z0}-{z1}, {self.stage['mode']}: "
               f"{plural(len(self.readiness), 'tile sets')} from "
               f"{plural(sum(len(e) for e in self.expected.values()), 'datasets')}"
               + (f" ({plural(self.ignored, 'datasets')} the layer does not draw)" if self.ignored else "")
               + (f"; zooms {_zoom_list(self.tiles_levels)} from the next zoom's tiles"
                  if self.tiles_levels else "")]
        if not self.readiness:
            return out
        store = self.env.existing_store()
        try:
            for ts, r in self.readiness.items():
                if r is None:
                    out.append(f"{ts}: over the datasets' bounds, known once they are ingested")
                    continue
                out.append(f"{ts}: " + _zoom_counts(store, ts, r.area, self.zooms, lyr.metatile,
                                                      self.stage["mode"] == "force"))
        finally:
            if store is not None:
                store.close()
        return out

    def run(self, inbox: Inbox, outbox: Outbox) -> None:
        from ..tools.purge import FrontPurge, front_purge
        from ..tools.seed import SeedEvent, SeedOptions, SeedSummary, Seeder

        t0 = time.monotonic()
        cfg, st, lyr = self.env.cfg, self.stage, self.lyr
        opts = SeedOptions(mode=st["mode"], concurrency=st.get("concurrency") or max(4, 2 * cfg.daemon.workers),
                           timeout=st["timeout"])
        self.summary = s = SeedSummary(lyr.name, self.zooms)
        s.metatiles = self.progress.total
        fronts: dict[str, FrontPurge] = {}

        def changed(ts: str, m: Meta) -> None:
            if ts not in fronts:
                fronts[ts] = front_purge(cfg, ts, "delete")
            fronts[ts].add(m)

        events: list[SeedEvent] = []
        store = self.env.store()
        seeder = Seeder(store, cfg.daemon.broker, opts, s, None, self.env.stop, changed, events.append)
        ready: deque[tuple[str, Meta, frozenset[str]]] = deque()
        outstanding: Counter[str] = Counter()
        tiles_levels = set(self.tiles_levels)
        children_done: dict[tuple[str, Meta], int] = {}
        self.from_tiles = 0
        flag = frozenset({"children"})
        late: dict[str, list[DatasetItem]] = {}      # tile sets whose area waits for every dataset
        finished: set[str] = set()
        self.tilesets_done = 0

        def add(ts: str, metas, flags: frozenset[str] = frozenset()) -> None:
            for m in metas:
                ready.append((ts, m, flags))
                outstanding[ts] += 1

        def cascade(ts: str, m: Meta, area: Area) -> None:
            """``m`` is done: its parent goes once all its children in the area are."""
            from ..render.pyramid import children
            from .readiness import in_plan
            z = m.z - 1
            if z not in tiles_levels:
                return
            parent = metatile_of(z, m.x0 >> 1, m.y0 >> 1, lyr.metatile)
            if not in_plan(area, z, [parent])[0]:
                return
            key = (ts, parent)
            children_done[key] = children_done.get(key, 0) + 1
            kids = children(parent, lyr.metatile)
            if children_done[key] == int(in_plan(area, z + 1, kids).sum()):
                del children_done[key]
                self.from_tiles += 1
                add(ts, [parent], flag)

        def arrive(item: DatasetItem) -> None:
            ts = tilesets.layer_tileset(lyr, item.keys)
            if ts not in self.readiness:
                return
            r = self.readiness[ts]
            if r is None:
                late.setdefault(ts, []).append(item)
                if len(late[ts]) < len(self.expected[ts]):
                    return
                area = union_area([i.dataset.wgs84_bounds for i in late[ts] if i.dataset is not None])
                if area is None:
                    return
                r = self.readiness[ts] = Readiness(area, self.zooms, lyr.metatile, {}, self.source_levels)
                self.progress.total += r.total()
                s.metatiles = self.progress.total
            else:
                add(ts, r.arrive(item.id))
            if r.complete:
                add(ts, r.sweep())

        def flush() -> None:
            for ev in events:
                idx = ev.index
                if ev.outcome == "rendered":
                    idx = store.get_index(ev.layer, ev.meta)
                r = self.readiness[ev.layer]
                assert r is not None
                self.advance(f"rendered {s.rendered} skipped {s.skipped} failed {s.failed}")
                outbox.put(MetaTiles(ev.layer, ev.meta, idx, r.area))
                cascade(ev.layer, ev.meta, r.area)
                outstanding[ev.layer] -= 1
            events.clear()
            for ts, r in self.readiness.items():
                if (ts not in finished and r is not None and r.complete and r.swept
                        and outstanding[ts] == 0 and not self.env.stop.is_set()):
                    finished.add(ts)
                    self.tilesets_done += 1
                    outbox.put(TilesetDone(ts, r.area, self.zooms))

        try:
            while True:
                got = inbox.poll()
                if not got and not ready and not seeder.in_flight and not inbox.closed:
                    item = inbox.get(timeout=0.2)
                    got = [item] if item is not None else []
                for item in got:
                    arrive(item)
                if inbox.closed:
                    for ts, r in self.readiness.items():   # (an upstream that ended early)
                        if r is not None and not r.complete and not self.env.stop.is_set():
                            for i in list(r.ids):
                                add(ts, r.arrive(i))
                            add(ts, r.sweep())
                while ready and seeder.in_flight < opts.concurrency and not self.env.stop.is_set():
                    ts, m, flags = ready.popleft()
                    if not seeder.offer(ts, m, flags):
                        ready.appendleft((ts, m, flags))
                        break
                seeder.poll(0.05 if seeder.in_flight else 0.0)
                flush()
                if self.env.stop.is_set() or seeder.gone:
                    break
                if inbox.closed and not ready and not seeder.in_flight:
                    break
            seeder.finish()
            flush()
        finally:
            seeder.close()
            store.close()
            for f in fronts.values():
                f.close()
            s.seconds = self.seconds = time.monotonic() - t0
        if seeder.gone:
            raise DaemonError(f"{seeder.gone}; run the pipeline again when it is back")
        if s.failed:
            first = f": {s.failures[0][0]}: {s.failures[0][1]}" if s.failures else ""
            self._incomplete.append(f"{self.label}: {s.failed} metatiles failed{first}")

    def lines(self) -> list[str]:
        s = getattr(self, "summary", None)
        if s is None:
            return []
        return [f"layer {self.lyr.name}, zooms {self.zooms[0]}-{self.zooms[1]}, {self.tilesets_done} of "
                f"{plural(len(self.readiness), 'tile sets')}: "
                f"{plural(s.rendered + s.skipped + s.failed, 'metatiles')}: "
                f"{s.rendered} rendered, {s.skipped} skipped (stored), {s.failed} failed"
                + (f", {s.not_done} left for the next run" if s.not_done else "")
                + (f" ({self.from_tiles} asked from the next zoom's tiles)" if self.from_tiles else "")] + (
                [f"  written: {s.unique_tiles} unique tiles, {mb(s.bytes)}; {s.rate:.1f} metatiles/s"]
                if s.rendered else [])

    def report(self) -> dict:
        s = getattr(self, "summary", None)
        base = {**super().report(), "tilesets": len(self.readiness),
                "tilesets_done": getattr(self, "tilesets_done", 0)}
        if s is None:
            return base
        return {**base, "metatiles": s.metatiles, "rendered": s.rendered, "skipped": s.skipped,
                "failed": s.failed, "not_done": s.not_done, "unique_tiles": s.unique_tiles,
                "bytes": s.bytes, "from_tiles": self.from_tiles, "tiles_zooms": self.tiles_levels}


def _zoom_list(zooms: list[int]) -> str:
    """``[0, 1, 2, 4]`` -> ``0-2, 4``."""
    out, run = [], []
    for z in zooms:
        if run and z != run[-1] + 1:
            out.append(run)
            run = []
        run.append(z)
    if run:
        out.append(run)
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in out)


def _zoom_counts(store, ts: str, area: Area, zooms: tuple[int, int], meta: int, force: bool) -> str:
    """Per zoom: metatiles of the area, how many are stored; tile bytes estimated."""
    parts = []
    total = todo = 0
    sizes: list[int] = []
    for z in range(zooms[0], zooms[1] + 1):
        n = stored = 0
        for m in area.metatiles(z, meta):
            n += 1
            idx = None if store is None else store.get_index(ts, m)
            if idx is not None and not idx.stale:
                stored += 1
                if len(sizes) < 20000:
                    got = store.metatile_sizes(ts, m)
                    if got is not None:
                        sizes.extend(got[1].get(h, 0) for h in got[0].hashes if h != EMPTY)
        parts.append(f"z{z} {n}" + (f" ({stored} stored)" if stored else ""))
        total += n
        todo += n if force else n - stored
    est = ""
    if sizes and todo:
        avg = sum(sizes) / len(sizes)
        est = f", about {mb(avg * todo * meta * meta)} of tiles to write (from the stored tiles' sizes)"
    return f"{plural(total, 'metatiles')} ({', '.join(parts)}): {todo} to render{est}"


class ReadStore(Tiles):
    def prepare(self, before: Base | None) -> None:
        st = self.stage
        lyr = self.lyr = self.flow.layer_config
        self.zooms = st["zoom"]
        self.area = _given_area(st)
        if self.flow.tileset is not None:
            self.tilesets = [self.flow.tileset]
        else:
            from ..catalog import open_catalog
            try:
                with open_catalog(self.env.cfg.catalog.url, create=False) as catalog:
                    combos = catalog.key_values(lyr.collection, lyr.keys, lyr.where)
            except UsageError as e:
                raise self.fail(str(e)) from None
            self.tilesets = [tilesets.name(lyr.name, c) for c in combos]
        if self.area is not None:
            self.progress.total = len(self.tilesets) * self.area.count_metatiles(self.zooms, lyr.metatile)
        self.missing = 0

    def tileset_plan(self) -> list[tuple[str, Area | None]]:
        return [(ts, self.area) for ts in self.tilesets]

    def plan(self) -> list[str]:
        out = [f"layer {self.lyr.name}, zooms {self.zooms[0]}-{self.zooms[1]}: "
               f"{plural(len(self.tilesets), 'tile sets')}"]
        store = self.env.existing_store()
        try:
            for ts in self.tilesets:
                if self.area is None:
                    n = 0 if store is None else sum(1 for z in range(self.zooms[0], self.zooms[1] + 1)
                                                    for _ in store.iter_indexes(ts, z))
                    out.append(f"{ts}: {plural(n, 'metatiles')} stored")
                else:
                    out.append(f"{ts}: " + _zoom_counts(store, ts, self.area, self.zooms,
                                                          self.lyr.metatile, False)
                               .replace("to render", "not stored"))
        finally:
            if store is not None:
                store.close()
        return out

    def run(self, inbox: Inbox, outbox: Outbox) -> None:
        from ..tools.seed import plan as seed_plan
        t0 = time.monotonic()
        store = self.env.store()
        try:
            for ts in self.tilesets:
                if self.area is not None:
                    for m in seed_plan(self.area, self.zooms, self.lyr.metatile):
                        if self.env.stop.is_set():
                            return
                        idx = store.get_index(ts, m)
                        self.missing += idx is None
                        self.advance()
                        if not outbox.put(MetaTiles(ts, m, idx, self.area)):
                            return
                    outbox.put(TilesetDone(ts, self.area, self.zooms))
                    continue
                world = Area.from_bbox("-180,-85.0511,180,85.0511")
                west = south = float("inf")
                east = north = float("-inf")
                for z in range(self.zooms[0], self.zooms[1] + 1):
                    for idx in store.iter_indexes(ts, z):
                        if self.env.stop.is_set():
                            return
                        b = meta_lnglat_bounds(idx.meta)
                        west, south = min(west, b.west), min(south, b.south)
                        east, north = max(east, b.east), max(north, b.north)
                        self.progress.total = max(self.progress.total, self.progress.done + 1)
                        self.advance()
                        if not outbox.put(MetaTiles(ts, idx.meta, idx, world)):
                            return
                extent = world if west == float("inf") else Area.from_bbox(
                    f"{max(west, -180)},{max(south, -85.0511)},{min(east, 180)},{min(north, 85.0511)}")
                outbox.put(TilesetDone(ts, extent, self.zooms))
        finally:
            store.close()
            self.seconds = time.monotonic() - t0

    def lines(self) -> list[str]:
        return [f"{plural(self.progress.done, 'metatiles')} of {plural(len(self.tilesets), 'tile sets')} "
                f"of layer {self.lyr.name}"
                + (f", {self.missing} not stored" if self.missing else "")]

    def report(self) -> dict:
        return {**super().report(), "metatiles": self.progress.done, "tilesets": len(self.tilesets),
                "missing": self.missing}


class Fingerprint:
    """What an extract holds, whatever order its metatiles came in: a sum
    of one hash per metatile (its address and the hash of each tile in the
    area)."""

    def __init__(self) -> None:
        self.value = 0
        self.metatiles = 0

    def add(self, m: Meta, idx: MetaIndex | None, mask: list[bool]) -> None:
        if idx is None:
            body = "missing"
        else:
            body = ",".join(h if inside else "-" for h, inside in zip(idx.hashes, mask))
        h = hashlib.blake2b(f"{m.z}/{m.x0}/{m.y0}/{m.n}:{body}".encode(), digest_size=16).digest()
        self.value = (self.value + int.from_bytes(h, "big")) % (1 << 128)
        self.metatiles += 1

    def hex(self) -> str:
        return f"{self.value:032x}"


def area_key(area: Area) -> str:
    return hashlib.blake2b(area.geometry.normalize().wkb, digest_size=8).hexdigest()


@dataclass
class _Output:
    """One extract being written (or checked against the one there)."""

    path: str
    tileset: str
    record: dict | None
    verify: bool
    fingerprint: Fingerprint = field(default_factory=Fingerprint)
    metas: list[Meta] = field(default_factory=list)
    extract: Any = None
    status: str = ""
    summary: Any = None


class WriteExtract(Base):
    unit = "metatiles"

    def prepare(self, before: Base | None) -> None:
        assert isinstance(before, Tiles)
        self.lyr = before.lyr
        self.paths: dict[str, str] = {}
        seen: dict[str, str] = {}
        for ts, _area in before.tileset_plan():
            path = self.path_of(ts)
            if path in seen:
                raise self.fail(f"tile sets {seen[path]} and {ts} would both be written to {path}")
            seen[path] = ts
            self.paths[ts] = path
        if not self.env.dry_run:
            for path in seen:
                try:
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                except OSError as e:
                    raise self.fail(f"field \"path\": cannot make {os.path.dirname(path)}: "
                                    f"{e.strerror or e}") from None
        self.before = before
        self.progress.total = before.progress.total
        self.outputs: list[_Output] = []

    def path_of(self, ts: str) -> str:
        _, values = tilesets.split(ts)
        return self.stage["path"].format_map(dict(zip(self.lyr.keys, values)))

    def plan(self) -> list[str]:
        from ..tools.export import read_record
        out = [plural(len(self.paths), "files")]
        for ts, path in self.paths.items():
            there = "replacing the one there" if os.path.exists(path) else "new"
            if read_record(path) is not None:
                there = "skipped if it holds the same tiles"
            out.append(f"{path} ({ts}): {there}")
        return out

    def _open(self, ts: str, area: Area, zooms: tuple[int, int]) -> _Output:
        from ..tools.export import Extract, read_record
        path = self.paths.get(ts) or self.path_of(ts)
        rec = read_record(path)
        verify = (rec is not None and rec.get("tileset") == ts and rec.get("zooms") == list(zooms)
                  and rec.get("area") == area_key(area))
        o = _Output(path, ts, rec, verify)
        if not verify:
            o.extract = Extract(path)
        self.outputs.append(o)
        return o

    def run(self, inbox: Inbox, outbox: Outbox) -> None:
        from ..tools.export import Extract, _Metatiles
        t0 = time.monotonic()
        store = self.env.store()
        open_: dict[str, _Output] = {}
        readers: dict[str, Any] = {}

        def reader(ts: str):
            if ts not in readers:
                readers[ts] = _Metatiles(store, ts, self.lyr.metatile)
            return readers[ts]

        def write(o: _Output, m: Meta, area: Area) -> None:
            mt = reader(o.tileset)
            idx = mt.index(m)          # the store's own, with its tiles' bytes
            mask = area.tile_mask(m)
            o.fingerprint.add(m, idx, mask)
            o.extract.add(m, idx, mask, mt.tile)

        try:
            for item in inbox:
                if isinstance(item, MetaTiles):
                    o = open_.get(item.tileset)
                    if o is None:
                        o = open_[item.tileset] = self._open(item.tileset, item.area, self.before.zooms)
                    if o.verify:
                        o.fingerprint.add(item.meta, item.index, item.area.tile_mask(item.meta))
                        o.metas.append(item.meta)
                    else:
                        write(o, item.meta, item.area)
                    self.advance(os.path.basename(o.path))
                elif isinstance(item, TilesetDone):
                    o = open_.pop(item.tileset, None) or self._open(item.tileset, item.area, item.zooms)
                    if o.verify and o.fingerprint.hex() == o.record.get("fingerprint"):
                        o.status = "current"
                        continue
                    if o.verify:     # something changed: written again from the store
                        metas, o.metas = o.metas, []
                        o.fingerprint, o.extract, o.verify = Fingerprint(), Extract(o.path), False
                        for m in metas:
                            write(o, m, item.area)
                    record = {"version": 1, "tileset": o.tileset, "zooms": list(item.zooms),
                              "area": area_key(item.area), "fingerprint": o.fingerprint.hex(),
                              "metatiles": o.fingerprint.metatiles}
                    named = replace(self.lyr, name=o.tileset)     # as export --key names it
                    o.summary = o.extract.finish(named, item.area, item.zooms, record=record)
                    o.extract = None
                    o.status = "written"
        finally:
            for o in open_.values():
                if o.extract is not None:
                    o.extract.abort()
                    o.extract = None
            store.close()
            self.seconds = time.monotonic() - t0

    def lines(self) -> list[str]:
        out = []
        written = [o for o in self.outputs if o.status == "written"]
        current = [o for o in self.outputs if o.status == "current"]
        out.append(f"{plural(len(written) + len(current), 'files')}: {len(written)} written, "
                   f"{len(current)} current (skipped: the same tiles)")
        for o in written:
            s = o.summary
            out.append(f"  {o.path}: {plural(s.tiles, 'tiles')}, {s.unique_tiles} unique, {mb(s.file_size)}"
                       + (f", {s.missing} tiles not stored" if s.missing else ""))
        for o in current:
            out.append(f"  {o.path}: current")
        return out

    def report(self) -> dict:
        files = []
        for o in self.outputs:
            d = {"path": o.path, "tileset": o.tileset, "status": o.status or "not finished"}
            if o.summary is not None:
                d.update(tiles=o.summary.tiles, unique_tiles=o.summary.unique_tiles,
                         missing=o.summary.missing, file_size=o.summary.file_size)
            files.append(d)
        return {**super().report(), "files": files,
                "written": sum(o.status == "written" for o in self.outputs),
                "current": sum(o.status == "current" for o in self.outputs)}


CLASSES = {
    "read.files": ReadFiles,
    "read.catalog": ReadCatalog,
    "transform.optimize": Convert,
    "transform.reproject": Convert,
    "write.catalog": WriteCatalog,
    "transform.pyramid": Pyramid,
    "read.store": ReadStore,
    "write.mbtiles": WriteExtract,
    "write.pmtiles": WriteExtract,
}


def build(pipeline: Pipeline, env: Env) -> list[Base]:
    """The stage objects of a checked pipeline, prepared in order (before
    any work: what each will handle, found from the one before)."""
    out: list[Base] = []
    for i, (stage, flow) in enumerate(zip(pipeline.stages, pipeline.flows)):
        obj = CLASSES[stage.type](stage, flow, env, i)
        try:
            obj.prepare(out[-1] if out else None)
        except RenderdError as e:
            if str(e).startswith(f"{obj.label}:"):
                raise
            kind = PipelineError if isinstance(e, UsageError) else RenderdError
            raise kind(f"{obj.label}: {e}") from None
        out.append(obj)
    return out
