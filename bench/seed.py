#!/usr/bin/env python3
"""Seeding throughput and storage, in one run.

Seeds the Helsinki extract (OSM style, throwaway PostGIS) at zooms 10-16
and the world style at zooms 0-7 with ``renderd-py seed`` through the
daemon, and renders the same metatiles with 2 plain Mapnik processes (the
in-process limit of bench/render.py). Prints metatiles/s for each and the
ratio. Then compares storage of what was seeded: the disk store (bytes as
``du`` counts them, and files; its packs and its pool apart too) against
the same tiles written as mod_tile ``.meta`` files and as one PNG file per
tile.

The daemon runs with 2 workers and 1 more reserved for interactive
requests (the defaults on 2 cores: seeding has both) and, for comparison,
with none reserved. Usage: .venv/bin/python bench/seed.py
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# this folder after the standard library: bench/http.py must not hide the stdlib's http
_HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [d for d in sys.path if os.path.abspath(d or os.curdir) != _HERE] + [_HERE]

from common import (WORLD_LAYER, free_port, helsinki, osm_layer, osm_lnglat_bbox,  # noqa: E402
                    run_plain, start_daemon, stop_daemon, write_config)
from renderd import config as _config  # noqa: E402
from renderd.store import open_store  # noqa: E402
from renderd.tilemath import index_tile  # noqa: E402
from renderd.tools import metafile  # noqa: E402
from renderd.tools.area import Area  # noqa: E402

WORLD = ("world", "-180,-85,180,85", (0, 7))


def plan(seeds) -> list:
    jobs = []
    for layer, bbox, (lo, hi) in seeds:
        area = Area.from_bbox(bbox)
        for z in range(lo, hi + 1):
            jobs += [(layer, m) for m in area.metatiles(z)]
    return jobs


def seed_all(cfg: Path, seeds) -> tuple[float, list[dict]]:
    t0 = time.perf_counter()
    out = []
    for layer, bbox, (lo, hi) in seeds:
        r = subprocess.run([sys.executable, "-m", "renderd.cli.main", "seed", "-c", str(cfg), "--layer", layer,
                            "--zoom", f"{lo}-{hi}", "--bbox", bbox, "--json", "-q", "--force"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"bench: seed failed: {r.stderr.strip()}")
        out.append(json.loads(r.stdout))
    return time.perf_counter() - t0, out


def du(path: Path) -> tuple[int, int, int]:
    """(bytes on disk as du counts them, apparent bytes, files)."""
    on_disk = int(subprocess.run(["du", "-s", "--block-size=1", str(path)], capture_output=True,
                                 text=True, check=True).stdout.split()[0])
    apparent = int(subprocess.run(["du", "-s", "--apparent-size", "--block-size=1", str(path)],
                                  capture_output=True, text=True, check=True).stdout.split()[0])
    files = sum(len(f) for _, _, f in os.walk(path))
    return on_disk, apparent, files


def write_other_layouts(cfg, layers: list[str], meta_dir: Path, png_dir: Path) -> tuple[int, int, int, int]:
    """The stored tiles again, as mod_tile .meta files and one PNG per tile.
    Returns (tiles, distinct within their metatiles, bytes tile by tile,
    bytes of each distinct content once)."""
    store = open_store(cfg.store)
    tiles = unique = tile_bytes = 0
    sizes: dict[str, int] = {}
    for layer in layers:
        for idx in store.iter_indexes(layer):
            blobs = store.get_metatile(layer, idx.meta)[1]
            by_xy = {}
            for i, h in enumerate(idx.hashes):
                if h in blobs:
                    t = index_tile(idx.meta, i)
                    by_xy[(t.x, t.y)] = blobs[h]
                    tile_bytes += len(blobs[h])
                    sizes[h] = len(blobs[h])
                    p = png_dir / layer / str(t.z) / str(t.x) / f"{t.y}.png"
                    p.parent.mkdir(parents=True, exist_ok=True)
                    p.write_bytes(blobs[h])
            tiles += len(by_xy)
            unique += len(blobs)
            for (x0, y0), mf in metafile.encode_tiles(idx.meta.z, by_xy).items():
                metafile.write(metafile.meta_path(meta_dir, idx.meta.z, x0, y0, style=layer), mf)
    return tiles, unique, tile_bytes, sum(sizes.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--skip-two-workers", action="store_true", help="only the daemon with a reserved worker")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="renderd-bench-seed-"))
    pg = None
    try:
        pg = helsinki()
        seeds = [("osm", osm_lnglat_bbox(pg), (10, 16)), WORLD]
        layers_toml = WORLD_LAYER + osm_layer(pg)
        jobs = plan(seeds)
        print(f"{len(jobs)} metatiles: osm z10-16 over {seeds[0][1]}, world z0-7")

        cfg_path = write_config(tmp, layers_toml, f'kind = "disk"\npath = "{tmp}/unused"', "tcp://127.0.0.1:1")
        t_plain = run_plain(list(_config.load(cfg_path).layers), jobs)
        rate_plain = len(jobs) / t_plain
        print(f"in-process limit, 2 plain Mapnik processes: {rate_plain:7.2f} metatiles/s ({t_plain:.1f} s)")

        results = {"metatiles": len(jobs), "plain_rate": rate_plain}
        variants = [(2, 1)] + ([] if args.skip_two_workers else [(2, 0)])
        for workers, reserved in variants:
            store_dir = tmp / f"store-{workers}"
            endpoint = f"tcp://127.0.0.1:{free_port()}"
            cfg_path = write_config(tmp, layers_toml, f'kind = "disk"\npath = "{store_dir}"', endpoint,
                                    workers=workers, reserved=reserved)
            proc = start_daemon(cfg_path, endpoint, workers + reserved)
            try:
                t, summaries = seed_all(cfg_path, seeds)
            finally:
                stop_daemon(proc)
            rendered = sum(s.get("rendered", 0) for s in summaries)
            rate = len(jobs) / t
            print(f"renderd-py seed, {workers} workers (and {reserved} reserved for interactive): {rate:7.2f} metatiles/s "
                  f"({t:.1f} s, {rendered} rendered)  ratio {rate / rate_plain:.2f}")
            results[f"seed_{workers}w{reserved}r"] = {"rate": rate, "ratio": rate / rate_plain, "rendered": rendered}

        cfg = _config.load(cfg_path)
        store_dir = Path(cfg.store.path)
        meta_dir, png_dir = tmp / "meta", tmp / "png"
        tiles, unique, tile_bytes, distinct_bytes = write_other_layouts(cfg, ["osm", "world"], meta_dir, png_dir)
        dup_share = 1 - unique / tiles if tiles else 0.0
        byte_share = 1 - distinct_bytes / tile_bytes if tile_bytes else 0.0
        print(f"{tiles} tiles stored, {unique} distinct within their metatiles; {tile_bytes / 1e6:.2f} MB "
              f"tile by tile, {distinct_bytes / 1e6:.2f} MB each distinct content once: duplicate share "
              f"{byte_share:.3f} of the bytes")
        ours, meta, png = du(store_dir), du(meta_dir), du(png_dir)
        for name, (on_disk, apparent, files) in (("renderd-py disk store", ours), ("mod_tile .meta", meta),
                                                 ("one PNG per tile", png)):
            print(f"{name:22} {on_disk / 1e6:9.2f} MB on disk ({apparent / 1e6:8.2f} MB apparent), {files:7} files")
        packs, pool = du(store_dir / "tiles"), du(store_dir / "blobs")
        for name, (on_disk, apparent, files) in (("  of which packs", packs), ("  of which the pool", pool)):
            print(f"{name:22} {on_disk / 1e6:9.2f} MB on disk ({apparent / 1e6:8.2f} MB apparent), {files:7} files")
        print(f"store vs .meta: {ours[0] / meta[0]:.3f} of the bytes (goal: at most {1 - byte_share:.3f}); "
              f"files: {png[2] / max(ours[2], 1):.1f}x fewer than one file per tile (goal: 30x)")
        stats = subprocess.run([sys.executable, "-m", "renderd.cli.main", "stats", "-c", str(cfg_path),
                                "--layer", "world", "--json"], capture_output=True, text=True)
        if stats.returncode == 0:
            total = json.loads(stats.stdout).get("total", {})
            print(f"world duplicate share (stats): {total.get('duplicate_share')}")
            results["world_duplicate_share"] = total.get("duplicate_share")
        results.update({"tiles": tiles, "within_metatile_duplicate_share": dup_share,
                        "tile_bytes": tile_bytes, "distinct_bytes": distinct_bytes,
                        "byte_duplicate_share": byte_share, "store": ours,
                        "packs": packs, "pool": pool, "meta": meta, "png": png})
        print(json.dumps(results))
    finally:
        if pg:
            pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
