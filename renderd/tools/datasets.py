"""``datasets``: what the catalog holds about a collection, as a table."""

from __future__ import annotations

from typing import Iterable

from ..catalog.model import BandStats, Dataset
from ..errors import UsageError
from ..tilesets import check_key_value

HEAD = ("path", "keys", "size", "bands", "bounds (W,S,E,N)", "valid", "min / mean / max per band")


def parse_where(items: Iterable[str]) -> dict[str, str]:
    """``KEY=VALUE`` arguments as a dictionary; ``UsageError`` for a bad one."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--where {item!r} is not KEY=VALUE")
        check_key_value(key, "--where key")
        check_key_value(value, f"--where value of {key!r}")
        if key in out and out[key] != value:
            raise UsageError(f"--where names key {key!r} twice")
        out[key] = value
    return out


def _num(v: float) -> str:
    return f"{v:.6g}"


def _band(s: BandStats) -> str:
    if not s.count:
        return "no valid pixel"
    return f"{_num(s.min)} / {_num(s.mean)} / {_num(s.max)}"


def row(ds: Dataset) -> tuple[str, ...]:
    keys = " ".join(f"{k}={v}" for k, v in sorted(ds.keys.items())) or "-"
    nodata = "" if ds.nodata is None else f" nodata {_num(ds.nodata)}"
    bounds = ",".join(f"{c:.4f}" for c in ds.wgs84_bounds)
    stats = "; ".join(_band(s) for s in ds.stats) or "-"
    return (ds.path, keys, f"{ds.width}x{ds.height}", f"{ds.bands} {ds.dtype}{nodata}", bounds,
            f"{100 * ds.valid_share:.1f}%", stats)


def table(datasets: list[Dataset]) -> list[str]:
    """One line per dataset under a header, columns aligned."""
    rows = [HEAD] + [row(d) for d in datasets]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEAD) - 1)]
    return ["  ".join([c.ljust(w) for c, w in zip(r, widths)] + [r[-1]]).rstrip() for r in rows]
