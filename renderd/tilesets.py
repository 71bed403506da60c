"""Tile sets: a layer, or a raster layer with one value for each of its keys.

A raster layer with ``keys = ["month"]`` serves one tile set per month:
``/tiles/sst/07/{z}/{x}/{y}.png`` is the tile set ``sst/07``. Its name, the
layer's name and the values in the order of ``keys``, each after a ``/``,
is what the rest of the stack keys tiles by: the broker's queues, the
stores (Redis ``{prefix}:pk:sst/07:...``, disk ``tiles/sst/@07/...``), the
hot cache, purges and every tool (``--layer sst --key month=07``). A layer
without keys is a tile set of its own name, so nothing changes for it.

A layer with ``scales = [1, 2]`` also serves HiDPI tiles, tiles of twice
the pixels over the same area (``/tiles/world/{z}/{x}/{y}@2x.png``): the
tile set ``world@2x``, and ``sst@2x/07`` for a layer with keys (the scale
goes with the layer's part of the name, so the store keeps it apart from
scale 1 as it does the key values: Redis ``{prefix}:pk:world@2x:...``, disk
``tiles/world@2x/...``, ``tiles/sst@2x/@07/...``). Its configuration is the
layer's with ``tile_size``, Mapnik's ``scale`` and ``buffer`` multiplied
(``scaled``).

Layer names are ``[A-Za-z0-9_-]{1,64}`` and values ``[A-Za-z0-9_.-]{1,64}``
other than ``.`` and ``..``, so a name splits back unambiguously.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import TYPE_CHECKING, Iterable, Mapping

from .errors import UsageError

if TYPE_CHECKING:
    from .config import Config, LayerConfig

#: most keys a layer may have
MAX_KEYS = 8
#: the scales a layer may serve (``[[layer]] scales``)
SCALES = (1, 2, 3, 4)
LAYER_PART = r"[A-Za-z0-9_\-]{1,64}(@[2-4]x)?"
VALUE_PART = r"[A-Za-z0-9_.\-]{1,64}"
NAME_RE = re.compile(rf"{LAYER_PART}(/{VALUE_PART}){{0,{MAX_KEYS}}}")
SCALE_RE = re.compile(r"(.*)@([2-4])x")


def valid_key_value(text: object) -> bool:
    """Whether ``text`` may be a catalog key, key value or collection name."""
    return isinstance(text, str) and bool(re.fullmatch(VALUE_PART, text)) and text not in (".", "..")


def check_key_value(text: object, what: str = "key value") -> str:
    """``text`` if valid (see ``valid_key_value``), else a one-line ``UsageError``."""
    if not valid_key_value(text):
        raise UsageError(f"{what} {text!r} is not valid ({VALUE_PART}, not . or ..)")
    return text  # type: ignore[return-value]


def name(layer: str, values: Iterable[str] = ()) -> str:
    """The tile set of ``layer`` with these key values (in the order of its
    keys); ``UsageError`` for a value that is not valid."""
    values = [check_key_value(v) for v in values]
    return "/".join((layer, *values))


def split(tileset: str) -> tuple[str, tuple[str, ...]]:
    """``(layer, values)`` of a tile set name (not checked: see ``is_valid``);
    ``layer`` with its scale (``world@2x``, see ``split_scale``)."""
    layer, *values = tileset.split("/")
    return layer, tuple(values)


def split_scale(layer: str) -> tuple[str, int]:
    """``("world", 2)`` for ``world@2x``, ``("world", 1)`` for ``world``."""
    m = SCALE_RE.fullmatch(layer)
    return (m.group(1), int(m.group(2))) if m else (layer, 1)


def with_scale(tileset: str, scale: int) -> str:
    """The tile set ``tileset`` (of scale 1) at ``scale``: ``sst/07`` at 2 is ``sst@2x/07``."""
    if scale == 1:
        return tileset
    layer, values = split(tileset)
    return "/".join((f"{layer}@{scale}x", *values))


def scaled(lyr: "LayerConfig", scale: int) -> "LayerConfig":
    """The configuration that renders ``lyr`` at ``scale``: tiles of
    ``scale`` times the pixels, Mapnik's scale factor and buffer with them,
    named ``LAYER@{scale}x``."""
    if scale == 1:
        return lyr
    return replace(lyr, name=f"{lyr.name}@{scale}x", tile_size=lyr.tile_size * scale,
                   scale=lyr.scale * scale, buffer=lyr.buffer * scale)


def layer_parts(cfg: "Config") -> dict[str, "LayerConfig"]:
    """Every layer at every scale it serves, by the layer part of its tile
    sets' names (``world``, ``world@2x``): what the broker and the workers
    take jobs for."""
    return {f"{lyr.name}@{n}x" if n > 1 else lyr.name: scaled(lyr, n)
            for lyr in cfg.layers for n in lyr.scales}


def is_valid(tileset: object) -> bool:
    """Whether ``tileset`` is a well-formed tile set name."""
    return (isinstance(tileset, str) and NAME_RE.fullmatch(tileset) is not None
            and not any(v in (".", "..") for v in tileset.split("/")[1:]))


def layer_of(cfg: "Config", tileset: str) -> "LayerConfig":
    """The layer configuration of a tile set, named as the tile set (so that
    code keyed by ``layer.name`` keys by the tile set); ``UsageError`` for an
    unknown layer or a count of values that is not the layer's count of keys."""
    if not is_valid(tileset):
        raise UsageError(f"{tileset!r} is not a layer name or LAYER/VALUE/...")
    part, values = split(tileset)
    base, scale = split_scale(part)
    lyr = cfg.layer(base)
    if len(values) != len(lyr.keys):
        if lyr.keys:
            raise UsageError(f"layer {base} needs a value for each of its keys "
                             f"{', '.join(lyr.keys)} (--key KEY=VALUE)")
        raise UsageError(f"layer {base} has no keys")
    if scale not in lyr.scales:
        raise UsageError(f"layer {base} has no scale {scale} (its scales: "
                         f"{', '.join(map(str, lyr.scales))})")
    lyr = scaled(lyr, scale)
    return lyr if tileset == lyr.name else replace(lyr, name=tileset)


def from_options(cfg: "Config", layer: str, key_options: Iterable[str], scale: int = 1) -> str:
    """The tile set named by ``--layer L``, ``--key KEY=VALUE`` and ``--scale N`` options."""
    lyr = cfg.layer(layer)
    if scale not in lyr.scales:
        raise UsageError(f"--scale {scale}: layer {layer} has the scales {', '.join(map(str, lyr.scales))} "
                         f"([[layer]] scales)")
    given: dict[str, str] = {}
    for opt in key_options:
        key, eq, value = opt.partition("=")
        if not eq or not key or not value:
            raise UsageError(f"--key {opt!r}: give KEY=VALUE")
        if key not in lyr.keys:
            raise UsageError(f"--key {key}: layer {layer} has "
                             + (f"the keys {', '.join(lyr.keys)}" if lyr.keys else "no keys"))
        if key in given:
            raise UsageError(f"--key {key} given twice")
        given[key] = value
    missing = [k for k in lyr.keys if k not in given]
    if missing:
        raise UsageError(f"layer {layer} needs --key {missing[0]}=VALUE")
    ts = name(layer, [given[k] for k in lyr.keys])
    if not is_valid(ts):
        raise UsageError(f"--key values must be {VALUE_PART}, not . or ..")
    return with_scale(ts, scale)


def key_values(lyr: "LayerConfig") -> dict[str, str]:
    """The key values of a layer configuration that ``layer_of`` named as a tile set
    (for one of ``scaled`` too)."""
    _, values = split(lyr.name)
    return dict(zip(lyr.keys, values))


def layer_tileset(layer: "LayerConfig", keys: Mapping[str, str]) -> str | None:
    """The tile set of ``layer`` that a dataset with catalog ``keys`` feeds,
    or None when it feeds none: a layer that is not a raster layer, keys
    that do not match the layer's ``where``, or a key of the layer's
    ``keys`` it lacks. The collection is the caller's to check."""
    if layer.kind != "raster":
        return None
    if any(keys.get(k) != v for k, v in layer.where.items()):
        return None
    if any(k not in keys for k in layer.keys):
        return None
    return name(layer.name, [keys[k] for k in layer.keys])
