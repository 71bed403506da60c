"""Catalog keys in names: key values, and the tile-set names of keyed layers.

A raster layer with ``keys = ["date", "band"]`` serves one tile set per key
combination. Its store name (and nginx's purge name) is the layer's name
followed by the values in the layer's key order, ``/``-separated::

    tileset_name("s2", ["2020-06-01", "B04"]) == "s2/2020-06-01/B04"

A layer without keys keeps its plain name. Keys and values are
``[A-Za-z0-9_.-]{1,64}`` and never ``.`` or ``..``, so a value is one safe
path segment and ``/`` never occurs inside one.
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping

from .config import KEY_RE, LayerConfig
from .errors import UsageError

_KEY = re.compile(KEY_RE)


def valid_key_value(text: object) -> bool:
    """Whether ``text`` may be a catalog key, key value or collection name."""
    return isinstance(text, str) and bool(_KEY.fullmatch(text)) and text not in (".", "..")


def check_key_value(text: object, what: str = "key value") -> str:
    """``text`` if valid (see ``valid_key_value``), else a one-line ``UsageError``."""
    if not valid_key_value(text):
        raise UsageError(f"{what} {text!r} is not valid ({KEY_RE}, not . or ..)")
    return text  # type: ignore[return-value]


def tileset_name(layer: str, values: Iterable[str] = ()) -> str:
    """The store's name for ``layer`` at key ``values`` (in the layer's key order)."""
    values = list(values)
    for v in values:
        check_key_value(v)
    return "/".join([layer, *values])


def split_tileset(name: str) -> tuple[str, tuple[str, ...]]:
    """Inverse of ``tileset_name``: ``("s2", ("2020-06-01", "B04"))``."""
    layer, *values = name.split("/")
    return layer, tuple(values)


def layer_tileset(layer: LayerConfig, keys: Mapping[str, str]) -> str | None:
    """The tile set of ``layer`` that a dataset with catalog ``keys`` feeds,
    or None when it feeds none: another collection, keys that do not match
    the layer's ``where``, or a key of the layer's ``keys`` it lacks. The
    collection is the caller's to check."""
    if layer.kind != "raster":
        return None
    if any(keys.get(k) != v for k, v in layer.where.items()):
        return None
    if any(k not in keys for k in layer.keys):
        return None
    return tileset_name(layer.name, [keys[k] for k in layer.keys])
