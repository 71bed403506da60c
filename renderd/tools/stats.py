"""Duplicate statistics of a layer's stored tiles, per zoom and in total.

For each zoom: ``tiles`` (non-empty tiles of the stored metatiles),
``unique_tiles`` (distinct contents), ``duplicate_share`` (1 - unique/tiles:
the share of tiles that need no storage of their own), ``bytes`` (the
tiles' sizes added tile by tile, what a one-file-per-tile cache would hold
without its per-file overhead) and ``bytes_deduplicated`` (each distinct
content once; the disk store may hold a little more: a tile that occurs
once in each of several metatiles is kept in each of their packs). The
total counts distinct contents across all zooms, so its ``unique_tiles`` is
not the sum of the zooms' (an ocean tile is the same at every zoom).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable

from ..store.base import Store
from ..store.index import EMPTY


@dataclass
class Row:
    zoom: int | None
    metatiles: int = 0
    tiles: int = 0
    unique_tiles: int = 0
    bytes: int = 0
    bytes_deduplicated: int = 0

    @property
    def duplicate_share(self) -> float:
        return 1.0 - self.unique_tiles / self.tiles if self.tiles else 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        d["duplicate_share"] = round(self.duplicate_share, 4)
        if self.zoom is None:
            del d["zoom"]
        return d


def stats(store: Store, layer: str, zooms: Iterable[int]) -> tuple[list[Row], Row]:
    """Per-zoom rows (zooms with nothing stored included) and the total."""
    sizes: dict[str, int] = {}
    total = Row(None)
    all_hashes: set[str] = set()
    rows = []
    for z in zooms:
        row = Row(z)
        counts: dict[str, int] = {}
        for idx, stored in store.iter_sizes(layer, z):
            row.metatiles += 1
            sizes.update(stored)
            for h in idx.hashes:
                if h != EMPTY:
                    counts[h] = counts.get(h, 0) + 1
        for h, c in counts.items():
            size = sizes.get(h, 0)
            row.tiles += c
            row.bytes += c * size
            row.bytes_deduplicated += size
        row.unique_tiles = len(counts)
        all_hashes.update(counts)
        total.metatiles += row.metatiles
        total.tiles += row.tiles
        total.bytes += row.bytes
        rows.append(row)
    total.unique_tiles = len(all_hashes)
    total.bytes_deduplicated = sum(sizes.get(h, 0) for h in all_hashes)
    return rows, total


def report(layer: str, rows: list[Row], total: Row) -> dict:
    return {"layer": layer, "zooms": [r.as_dict() for r in rows], "total": total.as_dict()}


def table(layer: str, rows: list[Row], total: Row) -> list[str]:
    head = f"{'zoom':>5} {'metatiles':>10} {'tiles':>12} {'unique':>12} {'dup share':>9} " \
           f"{'bytes':>15} {'bytes dedup':>15}"
    out = [f"layer {layer}", head]

    def line(label: str, r: Row) -> str:
        return (f"{label:>5} {r.metatiles:>10} {r.tiles:>12} {r.unique_tiles:>12} "
                f"{r.duplicate_share:>9.1%} {r.bytes:>15} {r.bytes_deduplicated:>15}")

    for r in rows:
        out.append(line(str(r.zoom), r))
    out.append(line("total", total))
    return out
