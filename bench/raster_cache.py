#!/usr/bin/env python3
"""Does an lz4-compressed cache of decoded source windows pay in a worker?

For the bench's COGs (bench/raster.py prepares them) and two request
sequences, a seed (every metatile of zooms 3-9 over Europe, row by row, as
``renderd-py seed`` asks) and a pan-around session (a viewport of 2 x 2
metatiles wandering and zooming over Europe at zooms 4-10; metatiles
already rendered are not rendered again, as the store serves them):

- which source blocks (the COG's internal tiles, at the overview level the
  renderer reads) each metatile decodes, and the hit rate of an LRU of
  decoded blocks at several memory budgets, holding blocks raw (what GDAL's
  own block cache does in every worker, since the renderer keeps datasets
  open) or lz4-compressed (1.7-1.9x more blocks in the same memory);
- the hit rate of a cache keyed by whole windows (one entry per metatile
  read), which is what "caching decoded windows" would be without blocks;
- per block: the time to decode it from the COG, to lz4-compress it and to
  decompress it.

Usage: .venv/bin/python bench/raster_cache.py [--cache DIR]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np

_HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [d for d in sys.path if os.path.abspath(d or os.curdir) != _HERE] + [_HERE]

import raster as bench  # noqa: E402
from renderd.render import raster_read as rr  # noqa: E402
from renderd.tilemath import BBox, Meta, meta_at, metatiles_in_bbox  # noqa: E402
from tests.fixtures.rasters import dataset_record  # noqa: E402

EUROPE = BBox(-10.0, 35.0, 30.0, 60.0)
BUDGETS_MB = (16, 64, 256, 1024)


def seed_sequence() -> list[Meta]:
    return [m for z in range(3, 10) for m in metatiles_in_bbox(EUROPE, z)]


def pan_sequence(steps: int = 400, seed: int = 7) -> list[Meta]:
    rnd = random.Random(seed)
    z, mx, my = 6, 4, 2
    done: set[Meta] = set()
    out = []
    for _ in range(steps):
        r = rnd.random()
        if r < 0.1 and z < 10:
            z, mx, my = z + 1, mx * 2 + rnd.randint(0, 1), my * 2 + rnd.randint(0, 1)
        elif r < 0.2 and z > 4:
            z, mx, my = z - 1, mx // 2, my // 2
        else:
            dx, dy = rnd.choice([(1, 0), (-1, 0), (0, 1), (0, -1)])
            mx, my = mx + dx, my + dy
        side = max(1, (1 << z) // 8)
        mx, my = max(0, min(side - 2, mx)), max(0, min(side - 2, my))
        for m in (meta_at(z, mx + i, my + j) for i in range(2) for j in range(2)):
            if m not in done:
                done.add(m)
                out.append(m)
    return out


def blocks_of(pool: rr.DatasetPool, ds, meta: Meta) -> tuple[int, list[tuple], tuple]:
    """The overview level, the blocks a metatile decodes there, and its window."""
    grid = rr.Grid.of(meta)
    level = rr.choose_overview(ds, grid.res)
    h = pool.get(ds, level).handle
    lk = rr.separable_lookup(h.transform, h.width, h.height, grid, rr.crs_kind(ds.crs))
    if lk is None:
        return level, [], ()
    (r0, r1), (c0, c1) = lk.window
    bh, bw = h.block_shapes[0]
    blocks = [(level, br, bc) for br in range(r0 // bh, (r1 - 1) // bh + 1)
              for bc in range(c0 // bw, (c1 - 1) // bw + 1)]
    return level, blocks, (level, r0, r1, c0, c1)


class LRU:
    def __init__(self, budget: int):
        self.budget = budget
        self.items: OrderedDict = OrderedDict()
        self.size = 0
        self.hits = self.misses = 0

    def touch(self, key, size: int) -> None:
        if key in self.items:
            self.items.move_to_end(key)
            self.hits += 1
            return
        self.misses += 1
        self.items[key] = size
        self.size += size
        while self.size > self.budget and self.items:
            _, s = self.items.popitem(last=False)
            self.size -= s

    @property
    def rate(self) -> float:
        return self.hits / max(self.hits + self.misses, 1)


def block_costs(pool: rr.DatasetPool, ds, blocks: list[tuple]) -> dict[tuple, tuple]:
    """Per block: raw bytes, lz4 bytes, decode, compress, decompress seconds (CPU)."""
    import lz4.frame
    import rasterio

    out = {}
    for level, br, bc in blocks:
        h = pool.get(ds, level).handle
        bh, bw = h.block_shapes[0]
        window = ((br * bh, min((br + 1) * bh, h.height)), (bc * bw, min((bc + 1) * bw, h.width)))
        fresh = rasterio.open(ds.path, **({"overview_level": level - 1} if level else {}))
        t0 = time.process_time()
        a = fresh.read(window=window)
        t1 = time.process_time()
        fresh.close()
        raw = a.tobytes()
        t2 = time.process_time()
        packed = lz4.frame.compress(raw)
        t3 = time.process_time()
        lz4.frame.decompress(packed)
        t4 = time.process_time()
        out[(level, br, bc)] = (len(raw), len(packed), t1 - t0, t3 - t2, t4 - t3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "renderd-bench-raster"))
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    cogs, real = bench.prepare(Path(args.cache))
    sequences = {"seed z3-9 over Europe": seed_sequence(), "pan session z4-10": pan_sequence()}
    print(f"COGs from {'data/raster' if real else 'SYNTHETIC STAND-INS'}; "
          + ", ".join(f"{k}: {len(v)} metatiles" for k, v in sequences.items()))
    for cog in ("relief_jpeg", "relief_deflate", "sst_big"):
        ds = dataset_record(str(cogs[cog]))
        pool = rr.DatasetPool()
        per_seq = {name: [blocks_of(pool, ds, m) for m in seq] for name, seq in sequences.items()}
        every = sorted({b for seq in per_seq.values() for _, bl, _ in seq for b in bl})
        sample = every if len(every) <= 300 else random.Random(1).sample(every, 300)
        costs = block_costs(pool, ds, sample)
        raw = np.mean([c[0] for c in costs.values()])
        ratio = raw / np.mean([c[1] for c in costs.values()])
        dec, comp, decomp = (np.mean([c[i] for c in costs.values()]) * 1000 for i in (2, 3, 4))
        print(f"\n{cog}: {len(every)} distinct blocks touched; per block {raw / 1024:.0f} KiB raw, "
              f"lz4 {ratio:.2f}x; CPU ms per block: decode {dec:.2f}, lz4 compress {comp:.2f}, "
              f"decompress {decomp:.2f}")
        for name, seq in per_seq.items():
            uses = sum(len(bl) for _, bl, _ in seq)
            windows = LRU(1 << 40)
            for _, _, w in seq:
                if w:
                    windows.touch(w, 1)
            line = [f"  {name}: {uses} block reads, {len(set(b for _, bl, _ in seq for b in bl))} "
                    f"distinct; whole-window cache hit rate {windows.rate * 100:.1f}%"]
            for mb in BUDGETS_MB:
                plain, packed = LRU(mb << 20), LRU(mb << 20)
                for _, bl, _ in seq:
                    for b in bl:
                        plain.touch(b, int(raw))
                        packed.touch(b, int(raw / ratio))
                extra = packed.hits - plain.hits
                saved = extra * (dec - decomp) - plain.hits * decomp - (packed.misses * comp)
                line.append(f"    {mb:5d} MB: raw blocks (GDAL's cache) {plain.rate * 100:5.1f}% hits, "
                            f"lz4 blocks {packed.rate * 100:5.1f}%; lz4 instead of raw: "
                            f"{saved / max(len(seq), 1):+.2f} ms CPU per metatile")
            print("\n".join(line))
        pool.close()


if __name__ == "__main__":
    main()
