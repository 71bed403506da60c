"""Cloud-Optimized GeoTIFFs: what ``renderd-py optimize-rasters`` does.

Each source (any raster GDAL reads, ``netcdf:FILE:VAR`` subdatasets
included) is described by a VRT written into a private temporary directory
inside the output directory: the bands kept, the georeference assigned to a
source that has none (``--bounds``/``--crs``), its metadata, its nodata and
a mask band. GDAL's COG driver copies that VRT into a tiled GeoTIFF with
internal overviews down to one block and an internal mask; the finished file
is then renamed into place, so an interrupted run never leaves a partial COG
under the final name. With ``--reproject`` a warped VRT onto the Web
Mercator tile grid sits between the two (see ``mercator_grid``).

Choices per data type (``plan``):

- compression ``auto``: ZSTD, lossless, with the horizontal predictor for
  integers (8-bit imagery included) and the floating-point predictor for
  floats. JPEG and WebP only when asked, and only for 8-bit data.
- a source with nodata, an alpha band or a mask gets an internal mask; the
  nodata value is kept as well for lossless compressions (the pixels keep
  it exactly), dropped for lossy ones (they would blur it). An alpha band
  becomes the mask (alpha 0 masked, any other value valid).
- overviews: ``average`` for continuous data, ``nearest`` for paletted
  (categorical) data; reprojection ``bilinear`` and ``nearest`` likewise.

The output records the options and the source's size and mtime in the
GDAL metadata item ``RENDERD_PY_COG`` (JSON); a later run skips an output
whose record matches and which is newer than its source.
"""

from __future__ import annotations

import glob
import json
import math
import multiprocessing
import os
import re
import shutil
import signal
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Iterator
from xml.etree import ElementTree as ET

from ..errors import RenderdError, UsageError
from ..tilemath import MERC_HALF, TILE_SIZE

COMPRESSIONS = ("auto", "deflate", "zstd", "lzw", "jpeg", "webp")
LOSSY = frozenset({"jpeg", "webp"})
RESAMPLINGS = ("auto", "nearest", "average", "bilinear", "cubic", "lanczos", "mode")
DEFAULT_QUALITY = 85
TAG = "RENDERD_PY_COG"
#: bumped when what the same options produce changes: older outputs are redone
FORMAT_VERSION = 1
MAX_LAT = 85.0511287798066


class RasterInputError(UsageError):
    """A source (or what was asked of it) cannot be made into a COG: exit 2."""


class RasterWriteError(RenderdError):
    """Writing a COG failed for a reason that is not the source's: exit 1."""


@dataclass(frozen=True)
class Options:
    """What the command line asks for, the same for every file."""

    compression: str = "auto"
    quality: int | None = None
    reproject: bool = False
    blocksize: int = 512
    resampling: str = "auto"
    bands: tuple[int, ...] = ()
    bounds: tuple[float, float, float, float] | None = None
    crs: str | None = None
    #: warp to this CRS on GDAL's default grid for it (``reproject`` is the
    #: Web Mercator tile grid)
    target_crs: str | None = None

    def check(self) -> None:
        if self.compression not in COMPRESSIONS:
            raise UsageError(f"unknown compression {self.compression!r} "
                             f"(one of {', '.join(COMPRESSIONS)})")
        if self.resampling not in RESAMPLINGS:
            raise UsageError(f"unknown resampling {self.resampling!r} "
                             f"(one of {', '.join(RESAMPLINGS)})")
        if self.quality is not None:
            if self.compression not in LOSSY:
                raise UsageError("--quality applies to jpeg and webp only")
            if not 1 <= self.quality <= 100:
                raise UsageError(f"--quality {self.quality} is outside 1..100")
        if self.blocksize not in (128, 256, 512, 1024, 2048, 4096):
            raise UsageError(f"--blocksize {self.blocksize} is not a power of two from 128 to 4096")
        if any(b < 1 for b in self.bands):
            raise UsageError("band numbers start at 1")
        if self.bounds is not None:
            w, s, e, n = self.bounds
            if not (w < e and s < n):
                raise UsageError(f"--bounds {w},{s},{e},{n}: west must be < east and south < north")
        if self.crs is not None:
            parse_crs(self.crs)
        if self.target_crs is not None:
            if self.reproject:
                raise UsageError("reproject (the Web Mercator grid) and a target CRS exclude each other")
            parse_crs(self.target_crs)

    def record(self) -> dict[str, Any]:
        d = asdict(self)
        d["bands"] = list(self.bands)
        d["bounds"] = list(self.bounds) if self.bounds else None
        if d["target_crs"] is None:     # (so that records made before it stay current)
            del d["target_crs"]
        return d


@contextmanager
def raster_env() -> Iterator[None]:
    """A rasterio environment whose PROJ finds its own proj.db.

    Mapnik's wheel sets PROJ_LIB, when it is imported, to a directory
    without a proj.db; every rasterio environment started after that (each
    top-level ``rasterio.open``) points rasterio's PROJ there and knows no
    CRS. Inside this one the search path is rasterio's own again, and the
    rasterio calls nested in it start no environment of their own."""
    import rasterio
    from rasterio.env import PROJDataFinder, set_proj_data_search_path

    with rasterio.Env():
        env = os.environ.get("PROJ_DATA") or os.environ.get("PROJ_LIB")
        if env and not any(os.path.exists(os.path.join(d, "proj.db"))
                           for d in env.split(os.pathsep)):
            path = PROJDataFinder().search_wheel()
            if path:
                set_proj_data_search_path(path)
        yield


def parse_crs(text: str) -> Any:
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    try:
        return CRS.from_user_input(text)
    except CRSError:
        raise UsageError(f"--crs {text!r} is not a CRS rasterio knows (try EPSG:4326)") from None


def parse_bounds(text: str) -> tuple[float, float, float, float]:
    parts = text.split(",")
    try:
        w, s, e, n = (float(p) for p in parts)
    except ValueError:
        raise UsageError(f"--bounds {text!r} is not W,S,E,N (four numbers)") from None
    return w, s, e, n


# --- sources ---------------------------------------------------------------

def source_file(name: str) -> str | None:
    """The local file behind a GDAL dataset name: the name itself, or the
    FILE of ``DRIVER:FILE:SUBDATASET`` (``netcdf:data/x.nc:sst``)."""
    if os.path.isfile(name):
        return name
    m = re.match(r'^[A-Za-z0-9_]+:"?(.+?)"?(:[^:/\\]*)?$', name)
    if m and os.path.isfile(m.group(1)):
        return m.group(1)
    return None


def absolute_name(name: str) -> str:
    """``name`` with its local file made absolute (VRTs refer to it by name)."""
    f = source_file(name)
    if f is None or os.path.isabs(f):
        return name
    if f == name:
        return os.path.abspath(f)
    i = name.index(f, name.index(":") + 1)
    return name[:i] + os.path.abspath(f) + name[i + len(f):]


def output_name(name: str) -> str:
    """``data/bmng.jpg`` -> ``bmng.tif``; ``netcdf:data/sst.nc:sst`` -> ``sst_sst.tif``."""
    f = source_file(name)
    if f is None or f == name:
        stem = os.path.splitext(os.path.basename(f or name.rstrip("/")))[0]
        return f"{stem or 'raster'}.tif"
    stem = os.path.splitext(os.path.basename(f))[0]
    sub = name.rsplit(":", 1)[-1] if name.count(":") >= 2 else ""
    sub = re.sub(r"[^A-Za-z0-9_.-]+", "_", sub).strip("_")
    return f"{stem}_{sub}.tif" if sub else f"{stem}.tif"


@dataclass(frozen=True)
class Band:
    index: int
    dtype: str
    nodata: float | None
    colorinterp: str
    description: str | None
    tags: dict[str, str]
    scale: float
    offset: float
    units: str | None
    colormap: dict[int, tuple[int, int, int, int]] | None


@dataclass(frozen=True)
class Source:
    """What ``inspect`` learns of a source, once."""

    name: str                                # as given (messages)
    dsname: str                              # with an absolute path (VRTs)
    file: str | None
    size: int | None
    mtime: float | None
    width: int
    height: int
    crs: str | None                          # WKT
    transform: tuple[float, ...] | None      # rasterio order (a, b, c, d, e, f)
    bands: tuple[Band, ...]
    mask_per_dataset: bool
    tags: dict[str, str]

    def band(self, i: int) -> Band:
        return self.bands[i - 1]


def inspect(name: str) -> Source:
    """Open ``name`` and describe it; ``RasterInputError`` naming it if GDAL
    cannot read it as a raster."""
    import rasterio
    from rasterio.enums import MaskFlags
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    f = source_file(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            ds = rasterio.open(absolute_name(name))
        except RasterioIOError as e:
            msg = str(e)
            if os.path.isdir(name):
                raise RasterInputError(f"{name}: is a directory, not a raster") from None
            if "No such file" in msg or (f is None and not re.match(r"^[A-Za-z0-9_]+:", name)):
                raise RasterInputError(f"{name}: not found") from None
            raise RasterInputError(f"{name}: not a raster GDAL can read "
                                   f"({_short(msg, absolute_name(name), name)})") from None
        with ds:
            if ds.count == 0:
                subs = ds.subdatasets
                hint = f"; it holds {', '.join(subs[:4])}" if subs else ""
                raise RasterInputError(f"{name}: has no raster bands{hint}")
            bands = []
            cmaps = {}
            for i in range(1, ds.count + 1):
                try:
                    cmaps[i] = ds.colormap(i)
                except ValueError:
                    cmaps[i] = None
            for i, dt in enumerate(ds.dtypes, start=1):
                bands.append(Band(
                    index=i, dtype=dt, nodata=ds.nodatavals[i - 1],
                    colorinterp=ds.colorinterp[i - 1].name, description=ds.descriptions[i - 1],
                    tags=ds.tags(i), scale=ds.scales[i - 1], offset=ds.offsets[i - 1],
                    units=ds.units[i - 1] or None, colormap=cmaps[i]))
            georef = not ds.transform.is_identity
            st = os.stat(f) if f else None
            return Source(
                name=name, dsname=absolute_name(name), file=f, size=st.st_size if st else None, mtime=st.st_mtime if st else None,
                width=ds.width, height=ds.height,
                crs=ds.crs.to_wkt() if ds.crs else None,
                transform=tuple(ds.transform)[:6] if georef else None,
                bands=tuple(bands),
                mask_per_dataset=MaskFlags.per_dataset in ds.mask_flag_enums[0]
                and MaskFlags.alpha not in ds.mask_flag_enums[0],
                tags=ds.tags())


def _short(msg: str, *names: str) -> str:
    """A GDAL message without the dataset name it repeats."""
    msg = msg.strip().rstrip(".")
    for name in names:
        for n in (f"'{name}'", name):
            msg = msg.replace(n, "").strip(" :,")
    return msg or "unknown error"


# --- what to write ---------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    """The settings ``plan`` chose for one source."""

    bands: tuple[int, ...]              # source bands written, in order
    alpha: int | None                   # source band that becomes the mask
    mask: str | None                    # "alpha" | "mask" | "nodata" | None
    keep_nodata: bool
    compression: str                    # resolved: zstd, deflate, lzw, jpeg, webp
    predictor: int | None
    quality: int | None
    overview_resampling: str
    warp_resampling: str
    crs: str
    transform: tuple[float, ...]
    categorical: bool
    creation: dict[str, str] = field(default_factory=dict)


def plan(src: Source, opts: Options) -> Plan:
    """Decide bands, mask, compression and resampling for ``src``."""
    from affine import Affine
    from rasterio.transform import from_bounds

    for b in opts.bands:
        if b > len(src.bands):
            raise RasterInputError(f"{src.name}: has {len(src.bands)} band(s), no band {b}")
    chosen = list(opts.bands or range(1, len(src.bands) + 1))
    alphas = [b for b in chosen if src.band(b).colorinterp == "alpha"]
    alpha = alphas[-1] if alphas else None
    data = tuple(b for b in chosen if b != alpha)
    if not data:
        raise RasterInputError(f"{src.name}: only an alpha band was selected")
    dtypes = {src.band(b).dtype for b in data}
    if len(dtypes) > 1:
        raise RasterInputError(f"{src.name}: bands of different types ({', '.join(sorted(dtypes))})")
    dtype = dtypes.pop()
    nodata = src.band(data[0]).nodata
    paletted = any(src.band(b).colormap for b in data) and src.band(data[0]).colorinterp == "palette"

    if src.transform is not None:
        transform = src.transform
    elif opts.bounds is not None:
        transform = tuple(from_bounds(*opts.bounds, src.width, src.height))[:6]
    else:
        raise RasterInputError(f"{src.name}: has no georeference; give --bounds W,S,E,N and --crs")
    if src.crs is not None:
        crs = src.crs
    elif opts.crs is not None:
        crs = parse_crs(opts.crs).to_wkt()
    else:
        raise RasterInputError(f"{src.name}: has no CRS; give --crs (EPSG:4326 for longitude/latitude)")
    if Affine(*transform).is_identity:
        raise RasterInputError(f"{src.name}: has no georeference; give --bounds W,S,E,N and --crs")

    comp = "zstd" if opts.compression == "auto" else opts.compression
    lossy = comp in LOSSY
    if lossy:
        if dtype != "uint8":
            raise RasterInputError(f"{src.name}: {comp} needs 8-bit data, this is {dtype}; "
                                   "use --compression auto (lossless)")
        if paletted:
            raise RasterInputError(f"{src.name}: is paletted; {comp} would blend its colour "
                                   "indexes; use --compression auto")
        if comp == "webp" and len(data) != 3:
            raise RasterInputError(f"{src.name}: webp needs 3 bands (RGB, with alpha or a mask "
                                   f"besides), this has {len(data)}")
    if alpha is not None:
        mask = "alpha"
    elif src.mask_per_dataset:
        mask = "mask"
    elif nodata is not None:
        mask = "nodata"
    else:
        mask = None

    predictor = None if lossy else (3 if dtype.startswith("float") else 2)
    if dtype.startswith("complex"):
        predictor = None
    quality = (opts.quality or DEFAULT_QUALITY) if lossy else None
    if opts.resampling != "auto":
        ovr = warp = opts.resampling
    elif paletted:
        ovr = warp = "nearest"
    else:
        ovr, warp = "average", "bilinear"
    # overviews down to one block (the driver alone stops when the smaller
    # side fits one, leaving a 2:1 world image at two blocks wide), made
    # here with this resampling: not copied from the source (a JPEG's DCT
    # scaling, a GeoTIFF's own overviews of unknown resampling)
    levels = max(0, math.ceil(math.log2(max(src.width, src.height) / opts.blocksize)))
    creation = {"COMPRESS": comp.upper(), "BLOCKSIZE": str(opts.blocksize),
                "OVERVIEW_COUNT": str(levels), "OVERVIEWS": "IGNORE_EXISTING",
                "OVERVIEW_RESAMPLING": ovr.upper(), "BIGTIFF": "IF_SAFER"}
    if predictor:
        creation["PREDICTOR"] = str(predictor)
    if quality:
        creation["QUALITY"] = str(quality)
    return Plan(bands=data, alpha=alpha, mask=mask, keep_nodata=nodata is not None and not lossy,
                compression=comp, predictor=predictor, quality=quality,
                overview_resampling=ovr, warp_resampling=warp, crs=crs, transform=transform,
                categorical=paletted, creation=creation)


# --- VRTs --------------------------------------------------------------------

_GDAL_TYPES = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16",
               "uint32": "UInt32", "int32": "Int32", "uint64": "UInt64", "int64": "Int64",
               "float32": "Float32", "float64": "Float64", "complex64": "CFloat32",
               "complex128": "CFloat64"}
_INTERP = {"gray": "Gray", "grey": "Gray", "red": "Red", "green": "Green", "blue": "Blue",
           "alpha": "Alpha", "palette": "Palette", "undefined": "Undefined"}


def _sub(parent: ET.Element, tag: str, text: Any = None, **attrs: Any) -> ET.Element:
    el = ET.SubElement(parent, tag, {k: str(v) for k, v in attrs.items()})
    if text is not None:
        el.text = str(text)
    return el


def _metadata(parent: ET.Element, tags: dict[str, str]) -> None:
    if tags:
        md = _sub(parent, "Metadata")
        for k, v in tags.items():
            _sub(md, "MDI", v, key=k)


def _source(parent: ET.Element, kind: str, filename: str, band: int | str) -> None:
    s = _sub(parent, kind)
    _sub(s, "SourceFilename", filename, relativeToVRT="0")
    _sub(s, "SourceBand", band)


def _gt(t: tuple[float, ...]) -> str:
    a, b, c, d, e, f = t
    return ", ".join(repr(float(v)) for v in (c, a, b, f, d, e))


def source_vrt(src: Source, p: Plan, record: dict[str, Any], filename: str | None = None,
               width: int | None = None, height: int | None = None,
               crs: str | None = None, transform: tuple[float, ...] | None = None,
               bands: Iterable[int] | None = None, mask_source: tuple[str, int | str] | None = None
               ) -> str:
    """The VRT the COG is copied from: ``p.bands`` of ``src`` (or of
    ``filename``, a warped VRT of it, numbered ``bands``), georeferenced,
    with the source's metadata, nodata kept if ``p.keep_nodata``, and a mask
    band read from ``mask_source`` (file, band or ``mask,1``)."""
    filename = filename or src.dsname
    root = ET.Element("VRTDataset", rasterXSize=str(width or src.width),
                      rasterYSize=str(height or src.height))
    _sub(root, "SRS", crs or p.crs)
    _sub(root, "GeoTransform", _gt(transform or p.transform))
    # a JPEG's EXIF tags describe that file (its size, its compression), not this one
    tags = {k: v for k, v in src.tags.items() if k != TAG and not k.startswith("EXIF_")}
    tags[TAG] = json.dumps(record, sort_keys=True)
    _metadata(root, tags)
    for n, (b, vb) in enumerate(zip(p.bands, bands or p.bands), start=1):
        band = src.band(b)
        el = _sub(root, "VRTRasterBand", dataType=_GDAL_TYPES[band.dtype], band=n)
        if p.keep_nodata and band.nodata is not None:
            _sub(el, "NoDataValue", repr(float(band.nodata)))
        interp = _INTERP.get(band.colorinterp, "Undefined")
        if band.colorinterp == "alpha":
            interp = "Undefined"
        _sub(el, "ColorInterp", interp)
        if band.description:
            _sub(el, "Description", band.description)
        _metadata(el, band.tags)
        if band.colormap and interp == "Palette":
            ct = _sub(el, "ColorTable")
            for i in range(max(band.colormap) + 1):
                r, g, bl, a = band.colormap.get(i, (0, 0, 0, 0))
                _sub(ct, "Entry", c1=r, c2=g, c3=bl, c4=a)
        if band.offset:
            _sub(el, "Offset", repr(band.offset))
        if band.scale != 1:
            _sub(el, "Scale", repr(band.scale))
        if band.units:
            _sub(el, "UnitType", band.units)
        _source(el, "SimpleSource", filename, vb)
    if mask_source is not None:
        mb = _sub(_sub(root, "MaskBand"), "VRTRasterBand", dataType="Byte")
        _source(mb, "SimpleSource", *mask_source)
    return ET.tostring(root, encoding="unicode")


def nodata_vrt(src: Source, p: Plan) -> str:
    """A VRT of ``p.bands`` whose mask is valid where *any* band differs from
    its nodata value (GDAL's NODATA_VALUES), as rasterio's ``dataset_mask``
    reads a multi-band source with nodata."""
    root = ET.Element("VRTDataset", rasterXSize=str(src.width), rasterYSize=str(src.height))
    _metadata(root, {"NODATA_VALUES": " ".join(repr(float(src.band(b).nodata)) for b in p.bands)})
    for n, b in enumerate(p.bands, start=1):
        el = _sub(root, "VRTRasterBand", dataType=_GDAL_TYPES[src.band(b).dtype], band=n)
        _source(el, "SimpleSource", src.dsname, b)
    return ET.tostring(root, encoding="unicode")


def mask_source(src: Source, p: Plan, tmp: str) -> tuple[str, int | str] | None:
    """Where the output's mask is read from (writing a helper VRT into tmp
    for multi-band nodata)."""
    if p.mask == "alpha":
        return src.dsname, p.alpha
    if p.mask == "mask" or (p.mask == "nodata" and len(p.bands) == 1):
        return src.dsname, f"mask,{p.bands[0]}"
    if p.mask == "nodata":
        path = os.path.join(tmp, "nodata.vrt")
        with open(path, "w") as f:
            f.write(nodata_vrt(src, p))
        return path, "mask,1"
    return None


# --- Web Mercator ------------------------------------------------------------

@dataclass(frozen=True)
class Grid:
    """A part of the Web Mercator tile grid: ``zoom`` is the resolution of
    the full-resolution image, ``levels`` the overviews, each of which is
    exactly the tile grid of zoom ``zoom - k`` (its origin on a tile corner
    of zoom ``zoom - levels``, its size a whole number of tiles)."""

    zoom: int
    levels: int
    transform: tuple[float, ...]
    width: int
    height: int


def mercator_grid(crs: str, transform: tuple[float, ...], width: int, height: int,
                  blocksize: int) -> Grid:
    """The grid ``--reproject`` writes: the zoom whose resolution is closest
    to the source's at its centre, the source's bounds (clipped to the
    Mercator latitudes) widened to whole tiles of the coarsest overview."""
    from rasterio.warp import transform as transform_xy
    from rasterio.warp import transform_bounds

    a, b, c, d, e, f = transform[:6]

    def at(col: float, row: float) -> tuple[float, float]:
        return a * col + b * row + c, d * col + e * row + f

    world = 2 * MERC_HALF
    # resolution: one source pixel at the centre, in Mercator metres
    cx, cy = width / 2, height / 2
    xs, ys = zip(*(at(cx + dx, cy + dy) for dx, dy in ((0, 0), (1, 0), (0, 1))))
    lon, lat = transform_xy(crs, "EPSG:4326", list(xs), list(ys))
    lat = [max(-MAX_LAT, min(MAX_LAT, v)) for v in lat]
    mx, my = transform_xy("EPSG:4326", "EPSG:3857", lon, lat)
    step_x = math.hypot(mx[1] - mx[0], my[1] - my[0])
    step_y = math.hypot(mx[2] - mx[0], my[2] - my[0])
    res = math.sqrt(step_x * step_y) or world / TILE_SIZE
    zoom = max(0, min(24, round(math.log2(world / (TILE_SIZE * res)))))
    # bounds: through longitude/latitude, so that poles do not go to infinity
    x0, y0 = at(0, 0)
    x1, y1 = at(width, height)
    w, s, e, n = transform_bounds(crs, "EPSG:4326", min(x0, x1), min(y0, y1), max(x0, x1),
                                  max(y0, y1), densify_pts=21)
    s, n = max(-MAX_LAT, s), min(MAX_LAT, n)
    if e <= w:  # across the antimeridian: the whole width of the world
        w, e = -180.0, 180.0
    left, bottom, right, top = transform_bounds("EPSG:4326", "EPSG:3857", w, s, e, n)
    left, right = max(-MERC_HALF, left), min(MERC_HALF, right)
    bottom, top = max(-MERC_HALF, bottom), min(MERC_HALF, top)
    px = world / (TILE_SIZE * 2 ** zoom)
    eps = 1e-9
    for levels in range(0, zoom + 1):
        tile = world / 2 ** (zoom - levels)
        c0 = math.floor((left + MERC_HALF) / tile + eps)
        c1 = max(c0 + 1, math.ceil((right + MERC_HALF) / tile - eps))
        r0 = math.floor((MERC_HALF - top) / tile + eps)
        r1 = max(r0 + 1, math.ceil((MERC_HALF - bottom) / tile - eps))
        gw = (c1 - c0) * TILE_SIZE * 2 ** levels
        gh = (r1 - r0) * TILE_SIZE * 2 ** levels
        if max(gw, gh) <= blocksize * 2 ** levels:
            break
    ox, oy = c0 * tile - MERC_HALF, MERC_HALF - r0 * tile
    return Grid(zoom=zoom, levels=levels, transform=(px, 0.0, ox, 0.0, -px, oy),
                width=gw, height=gh)


def default_grid(crs: str, transform: tuple[float, ...], width: int, height: int, target: str,
                 blocksize: int) -> Grid:
    """GDAL's default grid for warping the source to ``target`` (its
    resolution kept at the centre), with overviews down to one block."""
    from affine import Affine
    from rasterio.warp import calculate_default_transform

    a, b, c, d, e, f = transform[:6]
    xs = [c, c + a * width, c + b * height, c + a * width + b * height]
    ys = [f, f + d * width, f + e * height, f + d * width + e * height]
    try:
        t, w, h = calculate_default_transform(parse_crs(crs), parse_crs(target), width, height,
                                              min(xs), min(ys), max(xs), max(ys))
    except Exception as e:  # rasterio's CRSError, GDAL's failure to project the edges
        raise RasterInputError(f"cannot warp from its CRS to {target}: {' '.join(str(e).split())}") from None
    levels = max(0, math.ceil(math.log2(max(w, h) / blocksize)))
    return Grid(zoom=-1, levels=levels, transform=tuple(Affine(*t[:6]))[:6], width=int(w), height=int(h))


def reprojected_vrt(src: Source, p: Plan, record: dict[str, Any], vrt: str, tmp: str,
                    blocksize: int, target: str | None = None) -> tuple[str, int]:
    """The VRT of ``vrt`` (the source's) warped onto its ``mercator_grid``
    (or, for a ``target`` CRS, its ``default_grid``), with the warp's alpha as
    the mask; and the number of overview levels."""
    src_path = os.path.join(tmp, "source.vrt")
    with open(src_path, "w") as f:
        f.write(vrt)
    if target is None:
        crs = "EPSG:3857"
        grid = mercator_grid(p.crs, p.transform, src.width, src.height, blocksize)
    else:
        crs = parse_crs(target).to_wkt()
        grid = default_grid(p.crs, p.transform, src.width, src.height, target, blocksize)
    warp_path = os.path.join(tmp, "warped.vrt")
    with open(warp_path, "w") as f:
        f.write(warped_vrt(src, p, src_path, grid, crs))
    n = len(p.bands)
    out = source_vrt(src, p, record, filename=warp_path, width=grid.width, height=grid.height,
                     crs=crs, transform=grid.transform, bands=range(1, n + 1),
                     mask_source=(warp_path, n + 1))
    return out, grid.levels


def warped_vrt(src: Source, p: Plan, src_vrt: str, grid: Grid, crs: str = "EPSG:3857") -> str:
    """A warped VRT (XML) of ``src_vrt`` onto ``grid``, with an alpha band
    after the data bands (valid where the source is, by its mask)."""
    import rasterio
    from affine import Affine
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    nodata = src.band(p.bands[0]).nodata if p.keep_nodata else None
    with rasterio.open(src_vrt) as s, WarpedVRT(
            s, crs=crs, transform=Affine(*grid.transform), width=grid.width,
            height=grid.height, resampling=Resampling[p.warp_resampling], add_alpha=True,
            nodata=nodata, src_nodata=nodata) as w:
        xml = w.tags(ns="xml:VRT")["xml:VRT"]
    if nodata is None:
        return xml
    # the serialized warp lacks the destination nodata: without it blocks
    # outside the source read as 0, not as nodata
    root = ET.fromstring(xml)
    value = repr(float(nodata))
    for band in root.findall("VRTRasterBand"):
        if band.findtext("ColorInterp") != "Alpha":
            band.insert(0, _element("NoDataValue", value))
    for mapping in root.iter("BandMapping"):
        mapping.append(_element("DstNoDataReal", value))
        mapping.append(_element("DstNoDataImag", "0"))
    return ET.tostring(root, encoding="unicode")


def _element(tag: str, text: str) -> ET.Element:
    el = ET.Element(tag)
    el.text = text
    return el


# --- writing -------------------------------------------------------------------

@dataclass(frozen=True)
class Result:
    source: str
    output: str
    status: str           # "written" | "current"
    seconds: float
    bytes: int


@dataclass(frozen=True)
class Failure:
    source: str
    message: str
    usage: bool           # bad input (exit 2) rather than a runtime failure (exit 1)


def record_of(src: Source, opts: Options) -> dict[str, Any]:
    return {"version": FORMAT_VERSION, "options": opts.record(),
            "source": {"name": src.dsname,
                       "size": src.size, "mtime": src.mtime}}


def read_record(path: str) -> dict[str, Any] | None:
    """The ``RENDERD_PY_COG`` record of an existing output, or None."""
    import rasterio

    try:
        with rasterio.open(path) as ds:
            text = ds.tags().get(TAG)
        return json.loads(text) if text else None
    except Exception:  # an unreadable or foreign file: not current
        return None


def is_current(path: str, src: Source, record: dict[str, Any]) -> bool:
    """True if ``path`` exists, is newer than the source and was written from
    the same source (size, mtime) with the same options."""
    if src.mtime is None or not os.path.exists(path):
        return False
    if os.path.getmtime(path) < src.mtime:
        return False
    return read_record(path) == record


def convert(name: str, outdir: str, opts: Options, overwrite: bool = False,
            out_name: str | None = None, threads: int = 1) -> Result:
    """Write the COG of ``name`` into ``outdir`` (skipped when current)."""
    import rasterio
    import rasterio.shutil

    t0 = time.monotonic()
    src = inspect(name)
    p = plan(src, opts)
    out = os.path.join(outdir, out_name or output_name(name))
    if src.file and os.path.exists(out) and os.path.samefile(src.file, out):
        raise RasterInputError(f"{name}: the output {out} would replace it; choose another -o DIR")
    record = record_of(src, opts)
    if not overwrite and is_current(out, src, record):
        return Result(name, out, "current", time.monotonic() - t0, os.path.getsize(out))
    remove_stale(outdir, os.path.basename(out))
    # (absolute: the VRTs in it name one another by path)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-{os.getpid()}-",
                           dir=os.path.abspath(outdir))
    try:
        creation = dict(p.creation, NUM_THREADS=str(max(1, threads)))
        mask = mask_source(src, p, tmp)
        vrt = source_vrt(src, p, record, mask_source=mask)
        if opts.reproject or opts.target_crs:
            vrt, levels = reprojected_vrt(src, p, record, vrt, tmp, opts.blocksize, opts.target_crs)
            creation["OVERVIEW_COUNT"] = str(levels)
        vrt_path = os.path.join(tmp, "cog.vrt")
        with open(vrt_path, "w") as f:
            f.write(vrt)
        part = os.path.join(tmp, "cog.tif")
        try:
            with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
                rasterio.shutil.copy(vrt_path, part, driver="COG", **creation)
        except Exception as e:
            raise _copy_error(name, src, e) from None
        os.replace(part, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Result(name, out, "written", time.monotonic() - t0, os.path.getsize(out))


_READ_FAILURE = re.compile(r"IReadBlock|TIFFRead|corrupt|truncated|Premature end|failed to read",
                           re.I)


def _copy_error(name: str, src: Source, e: Exception) -> RenderdError:
    """A GDAL failure during the copy: the source's fault (a block that
    cannot be read: corrupt, truncated) or the output's (disk full...)."""
    msg = " ".join(str(e).split())
    if "No space left" in msg or "Free disk space" in msg:
        return RasterWriteError(f"{name}: writing failed: {msg}")
    names = [src.dsname] + ([os.path.abspath(src.file)] if src.file else [])
    if any(n in msg for n in names) or _READ_FAILURE.search(msg):
        return RasterInputError(f"{name}: cannot be read (corrupt?): {_short(msg, *names)}")
    return RasterWriteError(f"{name}: writing the COG failed: {msg}")


def remove_stale(outdir: str, name: str) -> None:
    """Remove the temporary directories of runs for ``name`` whose process
    is gone (killed before it could clean up)."""
    for d in glob.glob(os.path.join(glob.escape(outdir), f".{glob.escape(name)}.tmp-*")):
        m = re.search(r"\.tmp-(\d+)-[^/]*$", d)
        if m and not _alive(int(m.group(1))):
            shutil.rmtree(d, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- many files ------------------------------------------------------------

@dataclass
class Summary:
    results: list[Result] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def written(self) -> int:
        return sum(r.status == "written" for r in self.results)

    @property
    def current(self) -> int:
        return sum(r.status == "current" for r in self.results)

    def lines(self) -> list[str]:
        out = [f"{r.status:8s} {r.output}  {r.bytes / 1e6:.1f} MB  {r.seconds:.1f} s"
               for r in self.results]
        out.append(f"optimize-rasters: {self.written} written, {self.current} current, "
                   f"{len(self.failures)} failed in {self.seconds:.1f} s")
        return out


def check_outdir(outdir: str) -> None:
    """Create ``outdir`` if needed; ``UsageError`` if it cannot be written."""
    try:
        os.makedirs(outdir, exist_ok=True)
    except FileExistsError:
        raise UsageError(f"-o {outdir} is not a directory") from None
    except OSError as e:
        raise UsageError(f"-o {outdir}: cannot create it: {e.strerror or e}") from None
    if not os.path.isdir(outdir):
        raise UsageError(f"-o {outdir} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=outdir)
    except OSError as e:
        raise UsageError(f"-o {outdir}: cannot write there: {e.strerror or e}") from None
    os.close(fd)
    os.unlink(probe)


def _job(args: tuple[str, str, Options, bool, str | None, int, bool]) -> Result | Failure:
    name, debug = args[0], args[-1]
    try:
        with raster_env():
            return convert(*args[:-1])
    except UsageError as e:
        return Failure(name, str(e), usage=True)
    except RenderdError as e:
        return Failure(name, str(e), usage=False)
    except OSError as e:
        return Failure(name, f"{name}: {e.strerror or e}", usage=False)
    except Exception as e:  # a bug: this file fails, the others go on
        if debug:
            raise
        return Failure(name, f"{name}: internal error: {type(e).__name__}: {e} "
                             "(run with --debug for a traceback)", usage=False)


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@dataclass(frozen=True)
class Conversion:
    """One COG to write: a source, the options for it, its output name
    (None: from the source's, ``output_name``)."""

    name: str
    opts: Options
    out_name: str | None = None

    @property
    def output(self) -> str:
        return self.out_name or output_name(self.name)


def optimize_iter(work: Iterable[Conversion], outdir: str, overwrite: bool = False, jobs: int = 1,
                  debug: bool = False, in_process: bool = True,
                  stop: Callable[[], bool] | None = None) -> Iterator[Result | Failure]:
    """Convert each conversion of ``work`` as it comes (an iterable that may
    block for its next item: a stage's inbox), yielding each ``Result`` or
    ``Failure`` as it is done. With ``jobs`` > 1, or ``in_process`` False,
    ``jobs`` spawned processes convert, at most ``jobs`` at a time, fed by a
    thread of their own so that a result is yielded as soon as it is done
    even while the next conversion is not there yet. ``stop()`` true: no
    more is started; what runs is finished and yielded."""
    threads = max(1, (os.cpu_count() or 1) // max(1, jobs))
    stopped = stop or (lambda: False)
    if jobs == 1 and in_process:
        for c in work:
            if stopped():
                return
            yield _job((c.name, outdir, c.opts, overwrite, c.out_name, threads, debug))
        return
    import queue
    import threading

    results: "queue.Queue[tuple[str, Any]]" = queue.Queue()
    slots = threading.Semaphore(jobs)
    names: list[str] = []
    pool = multiprocessing.get_context("spawn").Pool(jobs, initializer=_ignore_sigint)

    def feed() -> None:
        try:
            for c in work:
                while not slots.acquire(timeout=0.2):
                    if stopped():
                        return
                if stopped():
                    slots.release()
                    return
                names.append(c.output)
                results.put(("started", None))
                pool.apply_async(_job, ((c.name, outdir, c.opts, overwrite, c.out_name, threads, debug),),
                                 callback=lambda r: results.put(("done", r)),
                                 error_callback=lambda e: results.put(("error", e)))
        except BaseException as e:  # the work's own failure: raised where results are taken
            results.put(("error", e))
        finally:
            results.put(("fed", None))

    feeder = threading.Thread(target=feed, name="optimize-feed", daemon=True)
    feeder.start()
    running, fed = 0, False
    try:
        while running or not fed:
            what, value = results.get()
            if what == "started":
                running += 1
            elif what == "fed":
                fed = True
            elif what == "error":
                raise value
            else:
                running -= 1
                slots.release()
                yield value
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
        feeder.join(1.0)
        for n in names:
            remove_stale(outdir, n)


def optimize(names: list[str], outdir: str, opts: Options, overwrite: bool = False,
             jobs: int = 1, out_name: str | None = None,
             on_done: Callable[[Result | Failure], None] | None = None,
             debug: bool = False) -> Summary:
    """Convert every source; failures are collected, not raised (one per
    file, in ``Summary.failures``), so that one bad file does not stop the
    rest. ``on_done`` is called as each file finishes."""
    with raster_env():
        opts.check()
    if out_name is not None and len(names) != 1:
        raise UsageError("--name needs exactly one FILE")
    check_outdir(outdir)
    t0 = time.monotonic()
    summary = Summary()
    seen: dict[str, str] = {}
    work = []
    for n in names:
        out = out_name or output_name(n)
        if out in seen:
            f = Failure(n, f"{n}: same output {out} as {seen[out]}; convert it separately with --name",
                        usage=True)
            summary.failures.append(f)
            if on_done:
                on_done(f)
            continue
        seen[out] = n
        work.append(Conversion(n, opts, out_name))
    jobs = max(1, min(jobs, len(work) or 1))
    for r in optimize_iter(work, outdir, overwrite, jobs, debug):
        (summary.results if isinstance(r, Result) else summary.failures).append(r)
        if on_done:
            on_done(r)
    summary.seconds = time.monotonic() - t0
    return summary
