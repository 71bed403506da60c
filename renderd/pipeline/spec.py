"""The stage types of a pipeline: what each takes and gives, and its fields.

One table (``TYPES``) declares every stage type once: the kind of items it
takes (``None`` for a reader, which starts a pipeline) and gives, and each
field with its check and default. A check takes the JSON value (and the
``Context``: the pipeline file's directory, for relative paths) and returns
the clean value, or raises ``FieldError`` with what is wrong, which
``parse`` turns into ``stage N (TYPE): field "F": ...``.

Kinds of items:

- ``rasters``: raster files (a GDAL dataset name, its keys);
- ``datasets``: rows of the catalog;
- ``tiles``: stored metatiles of a tile set;
- ``file``: a file written (an extract): nothing takes it.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import UsageError
from ..tilemath import MAX_ZOOM, parse_bbox, parse_zoom_range
from ..tilesets import VALUE_PART, is_valid as valid_tileset, valid_key_value

RASTERS, DATASETS, TILES, FILE = "rasters", "datasets", "tiles", "file"
KINDS = (RASTERS, DATASETS, TILES, FILE)


class FieldError(Exception):
    """A field's value is bad: the message says why (without the field's name)."""


@dataclass(frozen=True)
class Context:
    """Where relative paths of a pipeline file start: its directory."""

    base: str

    def path(self, text: str) -> str:
        return os.path.normpath(text if os.path.isabs(text) else os.path.join(self.base, text))


Check = Callable[[Any, Context], Any]


@dataclass(frozen=True)
class Field:
    check: Check
    required: bool = False
    default: Any = None
    help: str = ""


@dataclass(frozen=True)
class StageType:
    name: str
    takes: str | None
    gives: str
    fields: dict[str, Field]
    help: str
    #: checks between fields of one stage: (values) -> raises FieldError via ``bad``
    cross: Callable[[dict[str, Any]], None] | None = None


class CrossError(Exception):
    """Two or more fields of one stage do not go together."""

    def __init__(self, field_name: str | None, message: str):
        self.field = field_name
        super().__init__(message)


def show(value: Any) -> str:
    """A JSON value as the user wrote it (``"lzma"``, ``5``, ``true``)."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def kind_of(value: Any) -> str:
    """The JSON kind of a value, for messages."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return "null"


# --- checks -------------------------------------------------------------------

def text(v: Any, ctx: Context) -> str:
    if not isinstance(v, str):
        raise FieldError(f"must be a string, not {kind_of(v)}")
    if not v.strip():
        raise FieldError("must not be empty")
    return v


def choice(*options: str) -> Check:
    def check(v: Any, ctx: Context) -> str:
        if not isinstance(v, str):
            raise FieldError(f"must be a string, not {kind_of(v)}")
        if v not in options:
            raise FieldError(f"{show(v)} is not one of {', '.join(options)}")
        return v
    return check


def integer(lo: int, hi: int) -> Check:
    def check(v: Any, ctx: Context) -> int:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (
                isinstance(v, float) and not v.is_integer()):
            raise FieldError(f"must be a whole number, not {show(v) if not isinstance(v, str) else kind_of(v)}")
        if not lo <= v <= hi:
            raise FieldError(f"{show(v)} is outside {lo}..{hi}")
        return int(v)
    return check


def number(lo: float) -> Check:
    def check(v: Any, ctx: Context) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise FieldError(f"must be a number, not {kind_of(v)}")
        if v <= lo:
            raise FieldError(f"{show(v)} must be above {lo:g}")
        return float(v)
    return check


def boolean(v: Any, ctx: Context) -> bool:
    if not isinstance(v, bool):
        raise FieldError(f"must be true or false, not {show(v)}")
    return v


def blocksize(v: Any, ctx: Context) -> int:
    n = integer(128, 4096)(v, ctx)
    if n & (n - 1):
        raise FieldError(f"{n} is not a power of two from 128 to 4096")
    return n


def key_name(v: Any, ctx: Context) -> str:
    v = text(v, ctx)
    if not valid_key_value(v):
        raise FieldError(f"{show(v)} is not a name ({VALUE_PART}, not . or ..)")
    return v


def where(v: Any, ctx: Context) -> dict[str, str]:
    if not isinstance(v, dict):
        raise FieldError(f"must be an object of key: value, not {kind_of(v)}")
    for k, x in v.items():
        if not valid_key_value(k):
            raise FieldError(f"key {show(k)} is not a name ({VALUE_PART}, not . or ..)")
        if not isinstance(x, str) or not valid_key_value(x):
            raise FieldError(f"the value of {k} must be a string {VALUE_PART}, not {show(x)}")
    return dict(v)


def directory(v: Any, ctx: Context) -> str:
    """A directory to write into (made when the stage runs)."""
    v = text(v, ctx)
    path = ctx.path(v)
    if os.path.exists(path) and not os.path.isdir(path):
        raise FieldError(f"{show(v)} is not a directory")
    return path


def zoom(v: Any, ctx: Context) -> tuple[int, int]:
    if isinstance(v, int) and not isinstance(v, bool):
        v = str(v)
    if not isinstance(v, str):
        raise FieldError(f"must be a zoom range such as \"0-6\", not {kind_of(v)}")
    try:
        return parse_zoom_range(v, 0, MAX_ZOOM)
    except UsageError as e:
        raise FieldError(str(e).replace(f"zoom range {v!r}", show(v))) from None


def bbox(v: Any, ctx: Context):
    if isinstance(v, list):
        if len(v) != 4 or not all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in v):
            raise FieldError(f"{show(v)} is not [W, S, E, N]")
        v = ",".join(repr(float(c)) for c in v)
        shown = None
    elif isinstance(v, str):
        shown = v
    else:
        raise FieldError(f"must be \"W,S,E,N\" or [W, S, E, N], not {kind_of(v)}")
    try:
        return parse_bbox(v)
    except UsageError as e:
        msg = str(e)
        return _raise_bbox(msg, v, shown)


def _raise_bbox(msg: str, v: str, shown: str | None):
    msg = msg.replace(f"bbox {v!r}", show(shown) if shown is not None else "the box")
    if msg.startswith("the box: "):
        msg = msg[len("the box: "):]
    raise FieldError(msg)


def area(v: Any, ctx: Context):
    """A GeoJSON file (relative to the pipeline) or GeoJSON written inline."""
    from ..tools.area import Area
    try:
        if isinstance(v, str):
            if not v.strip():
                raise FieldError("must not be empty")
            return Area.from_geojson(ctx.path(v))
        if isinstance(v, dict):
            return Area.from_geojson_text(json.dumps(v), "(inline GeoJSON)")
    except UsageError as e:
        raise FieldError(str(e)) from None
    raise FieldError(f"must be a GeoJSON file name or a GeoJSON object, not {kind_of(v)}")


def pattern(v: Any, ctx: Context) -> str:
    from ..catalog.pattern import parse_pattern
    from ..errors import IngestError
    v = text(v, ctx)
    path = ctx.path(v)
    try:
        parse_pattern(path)
    except IngestError as e:
        msg = str(e)
        for prefix in (f"pattern {path}: ", f"pattern {path} "):
            if msg.startswith(prefix):
                msg = msg[len(prefix):]
        raise FieldError(msg) from None
    return path


def variable(v: Any, ctx: Context) -> str:
    v = text(v, ctx)
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-]{0,127}", v):
        raise FieldError(f"{show(v)} is not a variable name")
    return v


def split_bands(v: Any, ctx: Context) -> dict[str, str]:
    """``{"key": NAME, "value": "band" | "time:FORMAT"}``: one raster per band."""
    if not isinstance(v, dict):
        raise FieldError(f"must be an object {{\"key\": NAME, \"value\": \"band\" or \"time:%Y-%m\"}}, "
                         f"not {kind_of(v)}")
    unknown = sorted(set(v) - {"key", "value"})
    if unknown:
        raise FieldError(f"has no member {show(unknown[0])} (it has key and value)")
    if "key" not in v:
        raise FieldError("needs a \"key\": the key each band's raster gets")
    try:
        key = key_name(v["key"], ctx)
    except FieldError as e:
        raise FieldError(f"key: {e}") from None
    value = v.get("value", "band")
    if not isinstance(value, str) or not (value == "band" or (value.startswith("time:")
                                                               and "%" in value[5:])):
        raise FieldError(f"value {show(value)} is not \"band\" or \"time:\" and a strftime format "
                         "such as \"time:%Y-%m\"")
    return {"key": key, "value": value}


def crs(v: Any, ctx: Context) -> str:
    v = text(v, ctx)
    from ..tools.cog import parse_crs, raster_env
    try:
        with raster_env():
            parse_crs(v)
    except UsageError:
        raise FieldError(f"{show(v)} is not a CRS rasterio knows (such as EPSG:4326)") from None
    return v


def bounds(v: Any, ctx: Context) -> tuple[float, float, float, float]:
    if isinstance(v, str):
        parts = v.split(",")
    elif isinstance(v, list):
        parts = v
    else:
        raise FieldError(f"must be \"W,S,E,N\" or [W, S, E, N], not {kind_of(v)}")
    try:
        if len(parts) != 4 or any(isinstance(p, bool) for p in parts):
            raise ValueError
        w, s, e, n = (float(p) for p in parts)
    except (TypeError, ValueError):
        raise FieldError(f"{show(v)} is not W,S,E,N (four numbers)") from None
    if not all(math.isfinite(c) for c in (w, s, e, n)) or not (w < e and s < n):
        raise FieldError(f"{show(v)}: west must be below east and south below north")
    return w, s, e, n


def bands(v: Any, ctx: Context) -> tuple[int, ...]:
    if not isinstance(v, list) or not v or not all(
            isinstance(b, int) and not isinstance(b, bool) and 1 <= b <= 65535 for b in v):
        raise FieldError(f"must be a list of band numbers from 1, not {show(v)}")
    return tuple(v)


_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


def placeholders(template: str) -> list[str]:
    return _PLACEHOLDER.findall(template)


def _template(v: str) -> None:
    rest = _PLACEHOLDER.sub("", v)
    if "{" in rest or "}" in rest:
        raise FieldError(f"{show(v)} has an unbalanced {{ or }}")
    for k in placeholders(v):
        if not valid_key_value(k):
            raise FieldError(f"{{{k}}} is not a key name ({VALUE_PART}, not . or ..)")


def tif_name(v: Any, ctx: Context) -> str:
    """An output file name, with ``{key}`` placeholders of the rasters' keys."""
    v = text(v, ctx)
    if "/" in v or v in (".", ".."):
        raise FieldError(f"{show(v)} must be a file name, not a path")
    _template(v)
    if not v.lower().endswith((".tif", ".tiff")):
        raise FieldError(f"{show(v)} must end in .tif")
    return v


def extract_path(ext: str) -> Check:
    def check(v: Any, ctx: Context) -> str:
        v = text(v, ctx)
        _template(v)
        if not v.lower().endswith(ext):
            raise FieldError(f"{show(v)} must end in {ext}")
        return ctx.path(v)
    return check


def layer_name(v: Any, ctx: Context) -> str:
    v = text(v, ctx)
    if not valid_tileset(v):
        raise FieldError(f"{show(v)} is not a layer name or LAYER/VALUE/...")
    return v


# --- cross-field checks ---------------------------------------------------------------

def _one_area(values: dict[str, Any]) -> None:
    if values.get("bbox") is not None and values.get("area") is not None:
        raise CrossError("area", "bbox and area exclude each other: give one")


def _cog(values: dict[str, Any]) -> None:
    from ..tools.cog import LOSSY
    if values.get("quality") is not None and values.get("compression") not in LOSSY:
        raise CrossError("quality", "applies to compression jpeg and webp only")


def _optimize(values: dict[str, Any]) -> None:
    _cog(values)
    if values.get("bounds") is not None and values.get("crs") is None:
        raise CrossError("bounds", "needs \"crs\" too (the CRS of the bounds, such as EPSG:4326)")


def _read_files(values: dict[str, Any]) -> None:
    split = values.get("split_bands")
    if split is not None:
        from ..catalog.pattern import parse_pattern
        if split["key"] in parse_pattern(values["pattern"]).keys:
            raise CrossError("split_bands", f"key {split['key']} is a key of the pattern too")


# --- the table --------------------------------------------------------------------

COMPRESSIONS = ("auto", "deflate", "zstd", "lzw", "jpeg", "webp")
RESAMPLINGS = ("auto", "nearest", "average", "bilinear", "cubic", "lanczos", "mode")

_COG_FIELDS = {
    "output": Field(directory, required=True, help="directory the COGs are written into"),
    "compression": Field(choice(*COMPRESSIONS), default="auto",
                         help="auto: lossless ZSTD with a predictor; jpeg and webp for 8-bit imagery"),
    "blocksize": Field(blocksize, default=512, help="tile size of the COG in pixels"),
    "quality": Field(integer(1, 100), help="jpeg or webp quality (default 85)"),
    "resampling": Field(choice(*RESAMPLINGS), default="auto",
                        help="for overviews (and reprojection); auto: average/bilinear, nearest if paletted"),
    "name": Field(tif_name, help="output file name with {key} placeholders (default: the source's)"),
    "overwrite": Field(boolean, default=False, help="rewrite outputs that are already current"),
    "jobs": Field(integer(1, 64), default=1, help="rasters converted at once, one process each"),
}

TYPES: dict[str, StageType] = {t.name: t for t in (
    StageType("read.files", None, RASTERS, {
        "pattern": Field(pattern, required=True,
                         help="files with {key} placeholders (relative to the pipeline file)"),
        "variable": Field(variable, help="the netCDF variable to read of each file (netcdf:FILE:VAR)"),
        "split_bands": Field(split_bands, help="one raster per band: {\"key\": NAME, \"value\": "
                                               "\"band\" or \"time:%Y-%m\"}"),
    }, "every raster file matching a {key} pattern", _read_files),
    StageType("read.catalog", None, DATASETS, {
        "collection": Field(key_name, required=True, help="the catalog collection"),
        "where": Field(where, default={}, help="only datasets with these key values"),
    }, "datasets already in the catalog"),
    StageType("transform.optimize", RASTERS, RASTERS, {
        **_COG_FIELDS,
        "bands": Field(bands, help="only these bands, in this order"),
        "bounds": Field(bounds, help="georeference W,S,E,N for sources without one (with crs)"),
        "crs": Field(crs, help="CRS for sources without one, such as EPSG:4326"),
    }, "Cloud-Optimized GeoTIFFs (optimize-rasters)", _optimize),
    StageType("transform.reproject", RASTERS, RASTERS, {
        "crs": Field(crs, required=True,
                     help="the CRS to warp to; EPSG:3857 is the Web Mercator tile grid"),
        **_COG_FIELDS,
    }, "COGs warped to another CRS (optimize-rasters --reproject)", _cog),
    StageType("write.catalog", RASTERS, DATASETS, {
        "collection": Field(key_name, required=True, help="the catalog collection"),
        "stats": Field(boolean, default=True, help="false: headers only (ingest --no-stats)"),
    }, "ingest into the catalog (ingest --skip-existing)"),
    StageType("transform.pyramid", DATASETS, TILES, {
        "layer": Field(layer_name, required=True, help="a raster layer (or one tile set LAYER/VALUE)"),
        "zoom": Field(zoom, required=True, help="zoom range A-B"),
        "bbox": Field(bbox, help="lon/lat box W,S,E,N (default: the datasets' bounds)"),
        "area": Field(area, help="GeoJSON file or object (default: the datasets' bounds)"),
        "mode": Field(choice("missing", "force"), default="missing",
                      help="missing: render what is not stored or stale; force: everything"),
        "concurrency": Field(integer(1, 10000), help="renders in flight (default: twice the workers)"),
        "timeout": Field(number(0.0), default=600.0, help="seconds to wait for one metatile"),
    }, "metatiles rendered by the daemon at the bulk priority (seed)", _one_area),
    StageType("read.store", None, TILES, {
        "layer": Field(layer_name, required=True, help="a layer (or one tile set LAYER/VALUE)"),
        "zoom": Field(zoom, required=True, help="zoom range A-B"),
        "bbox": Field(bbox, help="lon/lat box W,S,E,N (default: every stored metatile)"),
        "area": Field(area, help="GeoJSON file or object"),
    }, "metatiles already stored", _one_area),
    StageType("write.mbtiles", TILES, FILE, {
        "path": Field(extract_path(".mbtiles"), required=True,
                      help="file to write; {key} placeholders for a layer with keys"),
    }, "an MBTiles extract (export)"),
    StageType("write.pmtiles", TILES, FILE, {
        "path": Field(extract_path(".pmtiles"), required=True,
                      help="file to write; {key} placeholders for a layer with keys"),
    }, "a PMTiles extract (export)"),
)}

#: the stage types that start a pipeline
READERS = tuple(n for n, t in TYPES.items() if t.takes is None)


@dataclass
class Stage:
    """One checked stage: its place (from 1), type and clean field values;
    ``raw`` holds the values as written."""

    index: int
    type: str
    values: dict[str, Any]
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def spec(self) -> StageType:
        return TYPES[self.type]

    @property
    def label(self) -> str:
        return f"stage {self.index} ({self.type})"

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def get(self, name: str, default: Any = None) -> Any:
        v = self.values.get(name)
        return default if v is None else v
