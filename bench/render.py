#!/usr/bin/env python3
"""Render throughput: plain Mapnik processes vs the daemon, in one run.

(a) the limit: 2 plain processes calling Mapnik directly, each metatile
    drawn once and every one of its tiles encoded into memory;
(b) ``renderd-py serve`` with 2 workers, the same metatiles asked for over
    ZeroMQ, written to the disk store, then to a Redis store.

Prints metatiles/s for each, the ratios to (a), and the PNG encodes that
deduplication saved. The metatiles: the sample world style at zooms 2-6
and, unless --no-osm, the Helsinki extract in a throwaway PostGIS at zooms
14-18. Usage: .venv/bin/python bench/render.py [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

# this folder after the standard library: bench/http.py must not hide the stdlib's http
_HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [d for d in sys.path if os.path.abspath(d or os.curdir) != _HERE] + [_HERE]

from common import (WORLD_LAYER, RedisServer, free_port, helsinki, osm_layer,  # noqa: E402
                    osm_metatiles, run_daemon, run_plain, world_metatiles, write_config)
from renderd import config as _config  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--no-osm", action="store_true", help="world style only (no PostGIS)")
    ap.add_argument("--repeat", type=int, default=1, help="render the set this many times per side")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="renderd-bench-"))
    layers_toml = WORLD_LAYER
    pg = redis = None
    try:
        jobs = [("world", m) for m in world_metatiles()]
        if not args.no_osm:
            pg = helsinki()
            layers_toml += osm_layer(pg)
            jobs += [("osm", m) for m in osm_metatiles(pg)]
        jobs = jobs * args.repeat
        cfg_plain = write_config(tmp, layers_toml, f'kind = "disk"\npath = "{tmp}/unused"', "tcp://127.0.0.1:1")
        layers = list(_config.load(cfg_plain).layers)
        zooms = sorted({m.z for _, m in jobs})
        print(f"{len(jobs)} metatiles ({sum(m.n * m.n for _, m in jobs)} tiles), zooms {zooms}, "
              f"layers {sorted({n for n, _ in jobs})}, 2 processes / 2 workers")

        t_plain = run_plain(layers, jobs)
        rate_plain = len(jobs) / t_plain
        print(f"(a) plain Mapnik, 2 processes:        {rate_plain:7.2f} metatiles/s  ({t_plain:.2f} s)")

        results = {}
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        cfg = write_config(tmp, layers_toml, f'kind = "disk"\npath = "{tmp}/disk"', endpoint)
        t, st = run_daemon(cfg, endpoint, jobs)
        results["disk"] = (t, st)
        redis = RedisServer(tmp)
        redis.start()
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        cfg = write_config(tmp, layers_toml, f'kind = "redis"\nurl = "{redis.url}"', endpoint)
        results["redis"] = run_daemon(cfg, endpoint, jobs)

        out = {"metatiles": len(jobs), "plain_rate": rate_plain}
        for kind, (t, st) in results.items():
            rate = len(jobs) / t
            work = st.get("work", {})
            print(f"(b) renderd-py serve, {kind:5} store:     {rate:7.2f} metatiles/s  ({t:.2f} s)  "
                  f"ratio {rate / rate_plain:.2f}  encodes {int(work.get('encoded', 0))}, "
                  f"saved by dedup {int(work.get('encodes_saved', 0))}")
            out[kind] = {"rate": rate, "ratio": rate / rate_plain, "encoded": work.get("encoded"),
                         "encodes_saved": work.get("encodes_saved")}
        print(json.dumps(out))
    finally:
        if redis:
            redis.stop()
        if pg:
            pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
