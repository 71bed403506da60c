"""The runtime JSON, the contract between Python and the Lua front, and the
TileJSON documents served beside the tiles.

``runtime(cfg)`` is what ``require("renderd.front").init(path)`` reads
(``lua/renderd/runtime.lua`` checks it): every value the front uses, each
from a configuration option (``renderd/config.py``), so the front has no
defaults of its own. Top-level keys: ``broker``, ``timeout``, ``hot_ttl``,
``retry_after``, ``log_interval``, ``metrics_interval``,
``broker_connect_timeout``, ``broker_retry``, ``status_timeout``,
``store_timeout``, ``store_retry``, ``catalog_ttl``, ``render_rate``,
``render_burst``, ``purge_token``, ``cors``, ``dicts``, ``store`` (``kind``
and what that kind needs), ``layers`` and ``docs_dir``.
"""

from __future__ import annotations

from typing import Any

from ..config import Config, HttpConfig, LayerConfig
from .addresses import broker_address, redis_settings

#: placeholder in the TileJSON files, replaced by nginx with the request's base URL
BASE_PLACEHOLDER = "@RPY_BASE@"
DICTS = {"tiles": "rpy_tiles", "locks": "rpy_locks", "metrics": "rpy_metrics"}
RUNTIME_JSON = "renderd-py.json"


#: the [http] options the Lua front reads, under their own names
FRONT_OPTIONS = ("timeout", "hot_ttl", "retry_after", "log_interval", "metrics_interval",
                 "broker_connect_timeout", "broker_retry", "status_timeout", "store_timeout",
                 "store_retry", "catalog_ttl", "render_rate", "render_burst", "purge_token", "cors")


def front_options(http: HttpConfig) -> dict[str, Any]:
    """The runtime JSON's top-level knobs, from ``[http]``."""
    return {key: getattr(http, key) for key in FRONT_OPTIONS}


def layer_runtime(cfg: Config, lyr: LayerConfig) -> dict[str, Any]:
    return {"name": lyr.name, "minzoom": lyr.minzoom, "maxzoom": lyr.maxzoom,
            "metatile": lyr.metatile, "ext": lyr.ext, "content_type": lyr.content_type,
            "cache_control": lyr.cache_control or cfg.http.cache_control,
            "cors": cfg.http.cors if lyr.cors is None else lyr.cors,
            "tile_size": lyr.tile_size, "keys": list(lyr.keys), "scales": list(lyr.scales)}


def runtime(cfg: Config, docs_dir: str = "") -> dict[str, Any]:
    """The runtime JSON read by ``require("renderd.front").init(path)``;
    ``docs_dir``: where the WMTS and OGC API documents are (written beside
    it by ``write_support``; "" for none)."""
    if cfg.store.kind == "disk":
        store: dict[str, Any] = {"kind": "disk", "path": cfg.store.path}
    else:
        from ..store.redis_scripts import META_SCRIPT   # the hot-cache fill's script, run by nginx
        store = {**redis_settings(cfg.store.url, cfg.store.prefix), "meta_script": META_SCRIPT}
    return {"broker": broker_address(cfg.daemon.broker), **front_options(cfg.http), "store": store,
            "layers": [layer_runtime(cfg, lyr) for lyr in cfg.layers], "dicts": dict(DICTS),
            "docs_dir": docs_dir}


def tilejson(cfg: Config, lyr: LayerConfig, base: str = BASE_PLACEHOLDER) -> dict[str, Any]:
    """TileJSON 3.0.0 of a layer, or of one tile set of a layer with keys
    (``lyr`` named as the tile set, renderd.tilesets); ``base`` is replaced
    by nginx per request. The layer of a layer with keys gets a tile URL
    template with a ``{key}`` segment per key and the list of its ``keys``:
    the concrete URLs are in each tile set's own TileJSON."""
    w, s, e, n = lyr.bounds
    lon, lat = (w + e) / 2, (s + n) / 2
    zoom = max(lyr.minzoom, min(lyr.maxzoom, 2))
    path = lyr.name
    if lyr.keys and "/" not in lyr.name:
        path = "/".join([lyr.name, *(f"{{{k}}}" for k in lyr.keys)])
    doc: dict[str, Any] = {
        "tilejson": "3.0.0",
        "name": lyr.name,
        "tiles": [f"{base}/tiles/{path}/{{z}}/{{x}}/{{y}}.{lyr.ext}"],
        # HiDPI: the same tiles at each further scale ([[layer]] scales), as
        # "tiles@2x" and so on (not in TileJSON 3.0.0, which ignores other keys)
        **{f"tiles@{n}x": [f"{base}/tiles/{path}/{{z}}/{{x}}/{{y}}@{n}x.{lyr.ext}"]
           for n in lyr.scales if n > 1},
        "scheme": "xyz",
        "minzoom": lyr.minzoom,
        "maxzoom": lyr.maxzoom,
        "bounds": [w, s, e, n],
        "center": [round(lon, 6), round(lat, 6), zoom],
    }
    if lyr.description:
        doc["description"] = lyr.description
    if lyr.attribution:
        doc["attribution"] = lyr.attribution
    if lyr.keys and "/" not in lyr.name:
        doc["keys"] = list(lyr.keys)
    return doc


def layers_index(cfg: Config) -> dict[str, Any]:
    """``/layers.json``: what the demo page shows (URLs relative to the page)."""
    return {"layers": [{"name": lyr.name, "tilejson": f"tiles/{lyr.name}.json",
                        "tile_size": lyr.tile_size, "minzoom": lyr.minzoom,
                        "maxzoom": lyr.maxzoom, "description": lyr.description,
                        "scales": list(lyr.scales),
                        **({"keys": list(lyr.keys)} if lyr.keys else {})}
                       for lyr in cfg.layers]}
