"""Configuration: TOML, every option declared once with default and check.

Precedence is defaults < file < environment (``RENDERD_PY_<SECTION>_<KEY>``,
for the scalar keys of ``[daemon]``, ``[store]`` and ``[http]``). A bad
file is refused as a whole with a ``ConfigError`` naming the key.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import ConfigError
from .tilemath import MAX_ZOOM

DEFAULT_PATH = "/etc/renderd-py/renderd-py.toml"
PRIORITIES = ("missing", "stale", "bulk", "expiry")
RESAMPLING = ("nearest", "bilinear", "cubic", "cubic_spline", "lanczos", "average", "mode")


# --- validators: each takes (value, key) and returns the clean value -----

def _int(lo: int | None = None, hi: int | None = None) -> Callable[[Any, str], int]:
    def check(v: Any, key: str) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"must be a whole number, not {v!r}", key)
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise ConfigError(f"{v} is outside {lo}..{hi}", key)
        return v
    return check


def _float(lo: float = 0.0, lo_ok: bool = False) -> Callable[[Any, str], float]:
    """A number above ``lo`` (or ``lo`` itself with ``lo_ok``)."""
    def check(v: Any, key: str) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < lo or (v == lo and not lo_ok):
            raise ConfigError(f"must be a number {'of at least' if lo_ok else 'above'} {lo}, not {v!r}",
                              key)
        return float(v)
    return check


def _urls(v: Any, key: str) -> tuple[str, ...]:
    """A purge URL, a list of them, "" or "off" (as a tuple: (), ("off",) or the URLs)."""
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, (list, tuple)) or not all(isinstance(u, str) for u in items):
        raise ConfigError(f"must be a URL or a list of URLs, not {v!r}", key)
    items = [u for u in items if u]
    if items == ["off"]:
        return ("off",)
    for u in items:
        if not re.fullmatch(r"https?://\S+", u):
            raise ConfigError(f"{u!r} is not an http:// or https:// URL (or off)", key)
    return tuple(items)


def _networks(v: Any, key: str) -> tuple[str, ...]:
    """A list of addresses or networks (``10.0.0.0/8``, ``::1``)."""
    import ipaddress
    if not isinstance(v, (list, tuple)) or not all(isinstance(a, str) for a in v):
        raise ConfigError(f"must be a list of addresses or networks, not {v!r}", key)
    for a in v:
        try:
            ipaddress.ip_network(a, strict=False)
        except ValueError:
            raise ConfigError(f"{a!r} is not an address or network such as 10.0.0.0/8", key) from None
    return tuple(v)


def _str(pattern: str | None = None, choices: tuple[str, ...] | None = None) -> Callable[[Any, str], str]:
    def check(v: Any, key: str) -> str:
        if not isinstance(v, str):
            raise ConfigError(f"must be a string, not {v!r}", key)
        if choices is not None and v not in choices:
            raise ConfigError(f"{v!r} is not one of {', '.join(choices)}", key)
        if pattern is not None and not re.fullmatch(pattern, v):
            raise ConfigError(f"{v!r} is not valid", key)
        return v
    return check


def _bool(v: Any, key: str) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"must be true or false, not {v!r}", key)
    return v


def _endpoint(v: Any, key: str) -> str:
    v = _str()(v, key)
    if not re.fullmatch(r"(ipc://.+|tcp://[^:]+:\d+|tcp://\*:\d+|inproc://.+)", v):
        raise ConfigError(f"{v!r} is not an ipc:// or tcp://host:port address", key)
    return v


def _endpoint_or_none(v: Any, key: str) -> str:
    return v if v == "" else _endpoint(v, key)


def _hostport(v: Any, key: str) -> str:
    v = _str()(v, key)
    m = re.fullmatch(r"(?:(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.\-]+):)?(\d+)", v)
    if not m or not 0 < int(m.group(2)) < 65536:
        raise ConfigError(f"{v!r} is not host:port", key)
    return v


def _size(v: Any, key: str) -> str:
    v = _str()(v, key)
    if not re.fullmatch(r"\d+[kKmMgG]?", v):
        raise ConfigError(f"{v!r} is not a size such as 64m", key)
    return v


def _bounds(v: Any, key: str) -> tuple[float, float, float, float]:
    if (not isinstance(v, (list, tuple)) or len(v) != 4
            or not all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in v)):
        raise ConfigError("must be [west, south, east, north]", key)
    w, s, e, n = (float(c) for c in v)
    if not (-180 <= w < e <= 180 and -90 <= s < n <= 90):
        raise ConfigError(f"{v!r} is not a valid lon/lat box", key)
    return (w, s, e, n)


KEY_RE = r"[A-Za-z0-9_.\-]{1,64}"


def _key_value(v: str) -> bool:
    """A catalog key or value (URL segments, store paths): no "." or ".."."""
    return bool(re.fullmatch(KEY_RE, v)) and v not in (".", "..")


def _keys(v: Any, key: str) -> tuple[str, ...]:
    if not isinstance(v, (list, tuple)) or not all(isinstance(k, str) and _key_value(k) for k in v):
        raise ConfigError(f"must be a list of key names ({KEY_RE}, not . or ..)", key)
    if len(set(v)) != len(v):
        raise ConfigError("names a key twice", key)
    if len(v) > 8:
        raise ConfigError("names more than 8 keys", key)
    return tuple(v)


def _where(v: Any, key: str) -> dict[str, str]:
    if not isinstance(v, dict) or not all(_key_value(k) and isinstance(x, str) and _key_value(x)
                                          for k, x in v.items()):
        raise ConfigError(f"must be a table of key = \"value\" ({KEY_RE})", key)
    return dict(v)


def _scales(v: Any, key: str) -> tuple[int, ...]:
    if (not isinstance(v, (list, tuple)) or not v
            or not all(isinstance(n, int) and not isinstance(n, bool) and n in (1, 2, 3, 4) for n in v)):
        raise ConfigError("must be a list of scales among 1, 2, 3 and 4, such as [1, 2]", key)
    if len(set(v)) != len(v):
        raise ConfigError("names a scale twice", key)
    if 1 not in v:
        raise ConfigError("must hold 1 (the plain tiles)", key)
    return tuple(sorted(v))


def _bands(v: Any, key: str) -> tuple[int, ...]:
    if (not isinstance(v, (list, tuple)) or len(v) not in (0, 1, 3, 4)
            or not all(isinstance(b, int) and not isinstance(b, bool) and 1 <= b <= 65535 for b in v)):
        raise ConfigError("must be a list of 1, 3 or 4 band numbers (from 1)", key)
    return tuple(v)


RESCALE_ITEM = r"(-?\d+(\.\d+)?([eE][-+]?\d+)?|p\d{1,2}(\.\d+)?)"


def _rescale(v: Any, key: str) -> str:
    """``MIN,MAX`` (numbers or catalog percentiles ``pN``), or one such pair
    per output band, separated by ``;``."""
    v = _str()(v, key)
    pair = rf"{RESCALE_ITEM},{RESCALE_ITEM}"
    if v and not re.fullmatch(rf"{pair}(;{pair})*", v.replace(" ", "")):
        raise ConfigError(f"{v!r} is not MIN,MAX (numbers or percentiles such as p2,p98)", key)
    return v.replace(" ", "")


def _colormap(v: Any, key: str) -> str:
    v = _str()(v, key)
    if v:
        from .rasterenv import import_rasterio
        import_rasterio()           # (rio-tiler makes CRSs on import: PROJ must be rasterio's)
        from rio_tiler.colormap import cmap
        if v.lower() not in cmap.list():
            raise ConfigError(f"unknown colormap {v!r} (for example viridis, terrain, rdbu)", key)
    return v.lower()


def _catalog_url(v: Any, key: str) -> str:
    v = _str()(v, key)
    if not re.fullmatch(r"sqlite://.+|postgres(ql)?://.+", v):
        raise ConfigError(f"{v!r} is not sqlite://PATH or postgresql://USER@HOST:PORT/DB", key)
    return v


def _params(v: Any, key: str) -> dict[str, str]:
    if not isinstance(v, dict) or not all(isinstance(x, (str, int, float)) for x in v.values()):
        raise ConfigError("must be a table of strings", key)
    return {k: str(x) for k, x in v.items()}


@dataclass(frozen=True)
class Option:
    default: Any
    check: Callable[[Any, str], Any]
    help: str


DAEMON = {
    "broker": Option("ipc:///run/renderd-py/broker.sock", _endpoint,
                     "ZeroMQ address the broker binds; clients and workers connect to it"),
    "workers": Option(-1, _int(-1, 256),
                      "worker processes that render any job, seeding included (-1: one per CPU this "
                      "process may use)"),
    "reserved": Option(-1, _int(-1, 256),
                       "more worker processes, on top of workers, at the daemon's CPU priority, kept for "
                       "interactive requests and never given seeding or expiry (-1: one per 4 workers, "
                       "at least 1; 0 when workers = 0)"),
    "nice_gap": Option(10, _int(0, 39),
                       "nice levels between the reserved workers' renders and the other workers' (0: none): "
                       "the reserved ones are raised by it where the daemon may (root, or systemd's Nice= or "
                       "LimitNICE=), otherwise the others are lowered by it"),
    "queue_size": Option(1000, _int(1, 10_000_000), "jobs queued per priority before BUSY"),
    "render_timeout": Option(60.0, _float(), "seconds a metatile may take before its worker is killed"),
    "heartbeat": Option(1.0, _float(), "seconds between heartbeats"),
    "liveness": Option(5, _int(2, 1000), "missed heartbeats before a peer counts as gone"),
    "max_jobs": Option(1000, _int(0, 10_000_000), "jobs after which a worker is recycled (0: never)"),
    "recent_seconds": Option(2.0, _float(-1.0),
                             "a metatile finished this recently answers repeats without a render"),
    "shutdown_timeout": Option(30.0, _float(), "seconds TERM waits for running renders"),
    "log_level": Option("info", _str(choices=("debug", "info", "warning", "error")), "log level"),
    "workers_bind": Option("", _endpoint_or_none,
                           "a second address for workers on other hosts (tcp://0.0.0.0:5556), with "
                           "CURVE unless it is loopback (empty: none)"),
    "curve_secret": Option("", _str(), "the broker's key pair for workers_bind (a .key_secret file "
                                       "of renderd-py keygen; relative to the config file)"),
    "authorized_workers": Option("", _str(), "a directory of the .key files of the workers let in on "
                                             "workers_bind (re-read on HUP; relative to the config file)"),
}

CATALOG = {
    "url": Option("sqlite:///var/lib/renderd-py/catalog.sqlite", _catalog_url,
                  "the catalog of raster datasets: sqlite://PATH (a relative PATH is relative to this "
                  "file) or postgresql://USER@HOST:PORT/DB"),
}

STORE = {
    "kind": Option("disk", _str(choices=("disk", "redis")), "where tiles are kept"),
    "path": Option("/var/cache/renderd-py", _str(), "disk store directory"),
    "url": Option("redis://127.0.0.1:6379/0", _str(r"(redis|redis\+cluster|unix)://.+"),
                  "redis store URL: redis://, unix:// or redis+cluster://HOST:PORT,HOST:PORT,..."),
    "prefix": Option("rpy", _str(r"[A-Za-z0-9_.\-]{1,32}"), "redis key prefix"),
    "fsync": Option(False, _bool, "fsync pack files and pool blobs before they become visible"),
}

HTTP = {
    "listen": Option("127.0.0.1:8080", _hostport, "address nginx listens on"),
    "metrics": Option("127.0.0.1:9180", _hostport, "loopback address of status and metrics"),
    "timeout": Option(30.0, _float(), "seconds a request waits for a missing tile"),
    "cache_size": Option("64m", _size, "size of the shared dict of hot tiles"),
    "cache_control": Option("public, max-age=3600", _str(), "Cache-Control of tiles"),
    "workers": Option(2, _int(1, 256), "nginx worker processes"),
    "prefix": Option("", _str(), "directory for nginx's runtime files (default: beside the store)"),
    "cors": Option("*", _str(r"[!-~]*"),
                   "Access-Control-Allow-Origin of tiles and TileJSON (empty: no such header)"),
    "user": Option("", _str(r"|[A-Za-z0-9_][A-Za-z0-9_.\-]*( [A-Za-z0-9_][A-Za-z0-9_.\-]*)?"),
                   "user (and group) of nginx's workers when nginx starts as root (default: www-data "
                   "or nobody if they can read what nginx serves, else root)"),
    "purge_url": Option((), _urls,
                        "where expire, seed and ingest tell nginx of changed metatiles: a URL, or a "
                        "list of every front's (default: /purge on [http] metrics; off: nowhere)"),
    "purge_token": Option("", _str(r"[!-~]*"),
                          "a shared secret that /purge asks of requests from other hosts (header "
                          "X-Purge-Token) and the tools send; with it, [http] metrics may listen "
                          "beyond loopback"),
    # read by the Lua front from the runtime JSON (renderd/nginx/runtime.py);
    # the front has no defaults of its own
    "hot_ttl": Option(300.0, _float(), "seconds a hot-cache entry counts as fresh; afterwards it is "
                                       "served only when the store and the daemon fail"),
    "retry_after": Option(5, _int(0, 86400), "Retry-After (seconds) of a 503"),
    "log_interval": Option(10.0, _float(), "seconds between two error-log lines of one cause "
                                           "(the ones between are counted)"),
    "metrics_interval": Option(1.0, _float(), "seconds between two flushes of an nginx worker's "
                                              "counters into /metrics"),
    "broker_connect_timeout": Option(2.0, _float(), "seconds nginx waits to connect to the broker"),
    "broker_retry": Option(1.0, _float(), "seconds nginx skips the broker after a failed connect "
                                          "(answering stale or 503 at once)"),
    "status_timeout": Option(2.0, _float(), "seconds /metrics waits for the daemon's STATUS, and the "
                                            "catalog's documents for its answer"),
    "store_timeout": Option(1.0, _float(), "seconds nginx waits for a Redis reply"),
    "store_retry": Option(2.0, _float(), "seconds nginx skips Redis after a failure "
                                         "(serving stale or rendering)"),
    "catalog_ttl": Option(10.0, _float(), "seconds nginx keeps a raster layer's key combinations "
                                          "before asking the daemon again (an ingest's purge: at once)"),
    "render_rate": Option(0.0, _float(lo_ok=True), "renders one client address may start per second through "
                                         "nginx (tiles neither hot nor stored); over it, 429 with "
                                         "Retry-After while stored tiles are still served (0: no limit)"),
    "real_ip_from": Option((), _networks,
                           "proxies (addresses or networks) whose X-Forwarded-For names the client, "
                           "for logs and render_rate: a router's, for example"),
    "render_burst": Option(20, _int(0, 1_000_000), "renders a client may start at once ahead of "
                                                   "render_rate"),
}

LAYER = {
    "name": Option(None, _str(r"[A-Za-z0-9_\-]{1,64}"), "name in URLs"),
    "kind": Option("mapnik", _str(choices=("mapnik", "raster")), "renderer"),
    "style": Option(None, _str(), "Mapnik XML style (relative to the config file)"),
    "minzoom": Option(0, _int(0, MAX_ZOOM), "lowest zoom served"),
    "maxzoom": Option(18, _int(0, MAX_ZOOM), "highest zoom served"),
    "format": Option(None, _str(r"(png|png8|png32|png256|jpeg\d*|webp\d*)(:[a-z0-9=:]+)?"),
                     "tile encoding: mapnik png256 (default), png, png8:z=1, jpeg80...; raster png "
                     "(default), jpeg85, webp, webp90"),
    "metatile": Option(8, _int(1, 16), "tiles along a metatile's side"),
    "buffer": Option(128, _int(0, 4096), "pixels rendered around a metatile so labels are not cut"),
    "tile_size": Option(256, _int(64, 1024), "pixels along a tile's side"),
    "scale": Option(1.0, _float(), "Mapnik scale factor"),
    "scales": Option((1,), _scales, "HiDPI: the scales served, e.g. [1, 2]: /tiles/{layer}/{z}/{x}/{y}@2x.png "
                                    "is a tile of twice the pixels over the same area, a tile set of its own"),
    "cache_control": Option(None, _str(), "Cache-Control of this layer's tiles (default: [http])"),
    "cors": Option(None, _str(r"[!-~]*"), "Access-Control-Allow-Origin of this layer (default: [http])"),
    "description": Option("", _str(), "TileJSON description"),
    "attribution": Option("", _str(), "TileJSON attribution"),
    "bounds": Option((-180.0, -85.0511, 180.0, 85.0511), _bounds, "TileJSON bounds"),
    "params": Option({}, _params, "values for ${name} placeholders in the style"),
    "font_dir": Option("", _str(), "font directory (default: the fonts Mapnik ships)"),
    # raster layers
    "collection": Option(None, _str(KEY_RE), "raster: the catalog collection its datasets come from"),
    "keys": Option((), _keys, "raster: catalog keys named in the URL, in this order"),
    "where": Option({}, _where, "raster: a fixed selection among the collection's datasets"),
    "bands": Option((), _bands, "raster: 3 (RGB), 4 (RGBA) or 1 band (a colormap applies); "
                                "default the first 3 of 3 or more, else band 1"),
    "expression": Option("", _str(), "raster: band math giving one band, e.g. (b4-b3)/(b4+b3)"),
    "rescale": Option("", _rescale, "raster: MIN,MAX to 0..255, numbers or catalog percentiles "
                                    "(p2,p98); one pair, or one per band separated by ;"),
    "colormap": Option("", _colormap, "raster: colormap of a one-band layer (viridis, terrain...)"),
    "resampling": Option("nearest", _str(choices=RESAMPLING), "raster: how source pixels are resampled"),
    "mosaic": Option("first", _str(choices=("first", "last", "highest", "lowest", "mean")),
                     "raster: where several datasets meet a metatile"),
}

#: keys that only a raster layer may set, and only a mapnik layer
RASTER_ONLY = ("collection", "keys", "where", "bands", "expression", "rescale", "colormap",
               "resampling", "mosaic")
MAPNIK_ONLY = ("style", "buffer", "scale", "params", "font_dir")


def _section(raw: Any, schema: dict[str, Option], prefix: str, env: dict[str, str] | None) -> dict[str, Any]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("must be a table", prefix)
    unknown = sorted(set(raw) - set(schema))
    if unknown:
        raise ConfigError("unknown key", f"{prefix}.{unknown[0]}")
    out: dict[str, Any] = {}
    for key, opt in schema.items():
        full = f"{prefix}.{key}"
        value = raw.get(key, opt.default)
        if env is not None:
            envkey = f"RENDERD_PY_{prefix.upper()}_{key.upper()}"
            if envkey in env:
                value = _from_env(env[envkey], opt.default)
        if value is None:
            if key == "name":
                raise ConfigError("is required", full)
            out[key] = None
            continue
        out[key] = opt.check(value, full)
    return out


def _from_env(text: str, default: Any) -> Any:
    if isinstance(default, bool):
        return text.lower() in ("1", "true", "yes", "on")
    if isinstance(default, int):
        try:
            return int(text)
        except ValueError:
            return text
    if isinstance(default, float):
        try:
            return float(text)
        except ValueError:
            return text
    return text


@dataclass(frozen=True)
class DaemonConfig:
    broker: str
    workers: int
    reserved: int
    queue_size: int
    render_timeout: float
    heartbeat: float
    liveness: int
    max_jobs: int
    recent_seconds: float
    shutdown_timeout: float
    log_level: str
    workers_bind: str
    curve_secret: str
    authorized_workers: str
    nice_gap: int = 10

    @property
    def processes(self) -> int:
        """Worker processes serve starts: ``workers`` and the ``reserved`` ones."""
        return self.workers + self.reserved


def cpus() -> int:
    """CPUs this process may run on (os.cpu_count() unless an affinity mask
    or a cpuset says fewer)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _size_pool(dvals: dict[str, Any]) -> None:
    """``workers`` and ``reserved`` of -1 sized from the machine."""
    if dvals["workers"] < 0:
        dvals["workers"] = cpus()
    if dvals["reserved"] < 0:
        dvals["reserved"] = max(1, dvals["workers"] // 4) if dvals["workers"] else 0


@dataclass(frozen=True)
class StoreConfig:
    kind: str
    path: str
    url: str
    prefix: str
    fsync: bool


@dataclass(frozen=True)
class HttpConfig:
    listen: str
    metrics: str
    timeout: float
    cache_size: str
    cache_control: str
    workers: int
    prefix: str
    cors: str
    purge_url: tuple[str, ...]
    purge_token: str
    user: str
    hot_ttl: float
    retry_after: int
    log_interval: float
    metrics_interval: float
    broker_connect_timeout: float
    broker_retry: float
    status_timeout: float
    store_timeout: float
    store_retry: float
    catalog_ttl: float
    render_rate: float
    render_burst: int
    real_ip_from: tuple[str, ...]


@dataclass(frozen=True)
class LayerConfig:
    name: str
    kind: str
    style: str | None
    minzoom: int
    maxzoom: int
    format: str
    metatile: int
    buffer: int
    tile_size: int
    scale: float
    cache_control: str | None
    cors: str | None
    description: str
    attribution: str
    bounds: tuple[float, float, float, float]
    params: dict[str, str] = field(default_factory=dict)
    font_dir: str = ""
    scales: tuple[int, ...] = (1,)
    collection: str | None = None
    keys: tuple[str, ...] = ()
    where: dict[str, str] = field(default_factory=dict)
    bands: tuple[int, ...] = ()
    expression: str = ""
    rescale: str = ""
    colormap: str = ""
    resampling: str = "nearest"
    mosaic: str = "first"

    @property
    def ext(self) -> str:
        if self.format.startswith("jpeg"):
            return "jpg"
        return "webp" if self.format.startswith("webp") else "png"

    @property
    def content_type(self) -> str:
        return {"jpg": "image/jpeg", "webp": "image/webp"}.get(self.ext, "image/png")


@dataclass(frozen=True)
class CatalogConfig:
    url: str


@dataclass(frozen=True)
class Config:
    path: str | None
    daemon: DaemonConfig
    store: StoreConfig
    http: HttpConfig
    layers: tuple[LayerConfig, ...]
    catalog: CatalogConfig = CatalogConfig(CATALOG["url"].default)

    def layer(self, name: str) -> LayerConfig:
        for lyr in self.layers:
            if lyr.name == name:
                return lyr
        from .errors import UsageError
        raise UsageError(f"unknown layer {name!r}")

    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(lyr.name for lyr in self.layers)


def _check_kind(values: dict[str, Any], raw: dict[str, Any], prefix: str) -> None:
    """What a layer of its kind needs, and the keys of the other kind refused."""
    kind = values["kind"]
    for key in (RASTER_ONLY if kind == "mapnik" else MAPNIK_ONLY):
        if key in raw:
            raise ConfigError(f"is only for a {'raster' if kind == 'mapnik' else 'mapnik'} layer",
                              f"{prefix}.{key}")
    fmt = values["format"]
    if kind == "mapnik":
        if not values["style"]:
            raise ConfigError("is required for a mapnik layer", f"{prefix}.style")
        values["format"] = fmt or "png256"
        return
    if not values["collection"]:
        raise ConfigError("is required for a raster layer", f"{prefix}.collection")
    values["format"] = fmt = fmt or "png"
    if not re.fullmatch(r"png|jpeg\d*|webp\d*", fmt):
        raise ConfigError(f"{fmt!r} is not png, jpeg, jpegNN, webp or webpNN for a raster layer",
                          f"{prefix}.format")
    both = sorted(set(values["keys"]) & set(values["where"]))
    if both:
        raise ConfigError(f"key {both[0]!r} is in both keys and where", f"{prefix}.where")
    if values["expression"] and values["bands"]:
        raise ConfigError("a layer has bands or an expression, not both", f"{prefix}.expression")
    if values["expression"]:
        from .render.expression import ExpressionError, parse_expression
        try:
            parse_expression(values["expression"])
        except ExpressionError as e:
            raise ConfigError(str(e), f"{prefix}.expression") from None
    if values["colormap"] and len(values["bands"]) not in (0, 1):
        raise ConfigError("a colormap needs one band (bands = [N] or an expression)", f"{prefix}.colormap")
    pairs = values["rescale"].split(";") if values["rescale"] else []
    if len(pairs) > 1 and len(pairs) != max(len(values["bands"]), 1):
        raise ConfigError(f"{len(pairs)} MIN,MAX pairs for {max(len(values['bands']), 1)} bands",
                          f"{prefix}.rescale")


def parse(data: dict[str, Any], path: str | None = None, env: dict[str, str] | None = None,
          check_files: bool = True) -> Config:
    """Validate a decoded TOML document; relative paths are made absolute."""
    base = Path(path).resolve().parent if path else Path.cwd()
    unknown = sorted(set(data) - {"daemon", "store", "http", "catalog", "layer"})
    if unknown:
        raise ConfigError("unknown section", unknown[0])
    dvals = _section(data.get("daemon"), DAEMON, "daemon", env)
    if dvals["broker"].startswith("ipc://") and not dvals["broker"].startswith("ipc:///"):
        dvals["broker"] = "ipc://" + str(base / dvals["broker"][len("ipc://"):])
    for key in ("curve_secret", "authorized_workers"):
        if dvals[key] and not os.path.isabs(dvals[key]):
            dvals[key] = str(base / dvals[key])
    _size_pool(dvals)
    daemon = DaemonConfig(**dvals)
    store = _section(data.get("store"), STORE, "store", env)
    if not os.path.isabs(store["path"]):
        store["path"] = str(base / store["path"])
    catalog = _section(data.get("catalog"), CATALOG, "catalog", env)
    if catalog["url"].startswith("sqlite://") and not catalog["url"].startswith("sqlite:///"):
        catalog["url"] = "sqlite://" + str(base / catalog["url"][len("sqlite://"):])
    http = _section(data.get("http"), HTTP, "http", env)
    if http["prefix"] and not os.path.isabs(http["prefix"]):
        http["prefix"] = str(base / http["prefix"])
    raw_layers = data.get("layer", [])
    if not isinstance(raw_layers, list):
        raise ConfigError("must be an array of tables ([[layer]])", "layer")
    layers = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_layers):
        prefix = f"layer[{i}]"
        values = _section(raw, LAYER, prefix, None)
        if values["name"] in seen:
            raise ConfigError(f"duplicate layer name {values['name']!r}", f"{prefix}.name")
        seen.add(values["name"])
        if values["minzoom"] > values["maxzoom"]:
            raise ConfigError(f"minzoom {values['minzoom']} is above maxzoom {values['maxzoom']}",
                              f"{prefix}.minzoom")
        if values["metatile"] & (values["metatile"] - 1):
            raise ConfigError("must be a power of two", f"{prefix}.metatile")
        _check_kind(values, raw, prefix)
        for key in ("style", "font_dir"):
            if values[key] and not os.path.isabs(values[key]):
                values[key] = str(base / values[key])
        if check_files and values["style"] and not os.path.isfile(values["style"]):
            raise ConfigError(f"file {values['style']} does not exist", f"{prefix}.style")
        layers.append(LayerConfig(**values))
    return Config(path=str(Path(path).resolve()) if path else None, daemon=daemon,
                  store=StoreConfig(**store), http=HttpConfig(**http), layers=tuple(layers),
                  catalog=CatalogConfig(**catalog))


def load(path: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None,
         check_files: bool = True) -> Config:
    """Read and validate the configuration file at ``path``."""
    path = os.fspath(path or os.environ.get("RENDERD_PY_CONFIG") or DEFAULT_PATH)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} not found") from None
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None
    return parse(data, path, os.environ if env is None else env, check_files)
