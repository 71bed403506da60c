#!/usr/bin/env python3
"""Redis memory of a seeded store against its tiles' bytes, earlier layout
against this one, and the read path through nginx for both, in one run.

    git archive REV | tar -x -C /tmp/before      # the earlier code (REV: before the layout changed)
    .venv/bin/python bench/redis_memory.py --before /tmp/before [--zooms 0-8]
        [--rounds 1] [--read-rounds 3] [--duration 5] [--connections 32]
        [--no-read | --no-memory] [--json FILE]

1. Memory. Seeds the world layer (styles/world.xml, Natural Earth) at
   ``--zooms`` with ``renderd-py seed`` through the daemon into a fresh
   redis-server, once with the earlier code (``--before``: its daemon, its
   store, so the earlier layout) and once with this tree, alternating
   (before, after, before, ... for ``--rounds``). For each it prints the
   distinct tiles (their count and bytes, each content once), the server's
   ``used_memory`` after the seed minus the same server's before it (the
   daemon already connected, so the baseline holds its connections), their
   ratio (goal: at most 1.1), and the keys by kind. The seed's time is
   printed too (it is the renderer's, not the store's).
2. Reads. Both layouts seeded at zoom 6 into one redis-server (their keys
   do not overlap) by two daemons, and two nginx fronts (``--before``'s
   ``lua/`` with its own fill script in its runtime JSON, and this tree's):
   bench/http.py's dict-cold Redis case (``--only redis``: every request
   reads its tile from Redis), the fronts and the same tiles as static files
   alternated; requests/s, latency and the CPU per request of nginx and of
   redis-server. Goal: this layout's reads not slower than the earlier.

Not a test: it asserts nothing. The machine is shared: runs alternate, and
each read figure is the median of the rounds.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# this folder after the standard library: bench/http.py must not hide the stdlib's http
_HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [d for d in sys.path if os.path.abspath(d or os.curdir) != _HERE] + [_HERE]

import redis  # noqa: E402
from common import WORLD_LAYER, start_daemon, write_config  # noqa: E402

from renderd.store.redis import RedisStore  # noqa: E402
from tests.fixtures.servers import RedisServer, free_port  # noqa: E402

BBOX = "-180,-85.0511,180,85.0511"


def load_http_bench():
    """bench/http.py as a module (its name would hide the standard library's http)."""
    spec = importlib.util.spec_from_file_location("bench_http", ROOT / "bench" / "http.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def tree_env(tree: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(tree)}


def seed(tree: Path, cfg: Path, zooms: str) -> float:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "renderd.cli.main", "seed", "-c", str(cfg), "--layer", "world",
                        "--zoom", zooms, "--bbox", BBOX, "--json", "-q", "--force"],
                       capture_output=True, text=True, cwd=tree, env=tree_env(tree))
    if r.returncode != 0:
        raise SystemExit(f"bench: seed failed: {r.stderr.strip()}")
    return time.perf_counter() - t0


def used_memory(r: redis.Redis) -> int:
    return int(r.info("memory")["used_memory"])


def key_kinds(r: redis.Redis, prefix: str = "rpy") -> dict[str, int]:
    out: dict[str, int] = {}
    for k in r.scan_iter(f"{prefix}:*", count=1000):
        kind = k.decode().split(":")[1]
        out[kind] = out.get(kind, 0) + 1
    return dict(sorted(out.items()))


def distinct_tiles(r: redis.Redis, url: str, layout: str) -> tuple[int, int]:
    """(distinct tiles, their bytes, each content once) of the seeded store."""
    if layout == "before":   # a blob per distinct tile
        keys = list(r.scan_iter("rpy:blob:*", count=1000))
        pipe = r.pipeline(transaction=False)
        for k in keys:
            pipe.strlen(k)
        return len(keys), sum(pipe.execute())
    sizes: dict[str, int] = {}
    with RedisStore(url) as store:
        for _, got in store.iter_sizes("world"):
            sizes.update(got)
    return len(sizes), sum(sizes.values())


def memory_round(tmp: Path, tree: Path, layout: str, zooms: str) -> dict:
    srv = RedisServer(tmp)
    srv.start()
    r = redis.Redis.from_url(srv.url)
    folder = tmp / f"mem-{layout}-{free_port()}"
    folder.mkdir()
    endpoint = f"ipc://{folder}/broker.sock"
    cfg = write_config(folder, WORLD_LAYER, f'kind = "redis"\nurl = "{srv.url}"', endpoint)
    daemon = start_daemon(cfg, endpoint, tree=tree)
    try:
        time.sleep(0.5)
        base = used_memory(r)
        seconds = seed(tree, cfg, zooms)
        used = used_memory(r) - base
        count, size = distinct_tiles(r, srv.url, layout)
        kinds = key_kinds(r)
        return {"layout": layout, "seed_seconds": round(seconds, 1), "distinct_tiles": count,
                "distinct_bytes": size, "used_memory": used, "ratio": used / size,
                "keys": sum(kinds.values()), "key_kinds": kinds, "baseline": base}
    finally:
        daemon.terminate()
        daemon.wait(60)
        r.close()
        srv.stop()


def read_bench(args: argparse.Namespace, before: Path) -> dict:
    """bench/http.py's dict-cold Redis case, the earlier layout and front against this one."""
    http = load_http_bench()
    args.lua_before, args.redis_socket, args.keep, args.only = str(before / "lua"), False, False, "redis"
    args.threads, args.nginx_workers = 1, 2
    args.rounds = args.read_rounds

    class Bench(http.Bench):
        def config(self, store, workers=2, hot_ttl=None, front="after"):
            cfg = super().config(store, workers, hot_ttl, front)
            if front != "before":
                return cfg
            # the earlier front talks to the earlier daemon (its own broker)
            path = Path(cfg.path)
            path.write_text(path.read_text().replace("redis-broker.sock", "redis-before-broker.sock"))
            return http._config.load(path, env={})

        def start_nginx(self, cfg, front="after"):
            if front == "before":   # the earlier fill script, as its nginx-conf would write it
                text = subprocess.run([sys.executable, "-c", "from renderd.store.redis_scripts import "
                                       "META_SCRIPT; print(META_SCRIPT, end='')"], capture_output=True,
                                      text=True, check=True, cwd=before, env=tree_env(before)).stdout
                orig = http.nginx.write_conf

                def write_conf(c, prefix, **kw):
                    conf = orig(c, prefix, **kw)
                    rt = Path(prefix) / http.nginx.RUNTIME_JSON
                    doc = json.loads(rt.read_text())
                    doc["store"]["meta_script"] = text
                    rt.write_text(json.dumps(doc))
                    return conf
                http.nginx.write_conf = write_conf
                try:
                    return super().start_nginx(cfg, front)
                finally:
                    http.nginx.write_conf = orig
            return super().start_nginx(cfg, front)

    b = Bench(args)
    try:
        b.start_redis()
        b.start_daemon(b.config("redis"))
        bcfg = b.config("redis", front="before")
        b.procs.append(start_daemon(Path(bcfg.path), http.nginx.broker_address(bcfg.daemon.broker), tree=before))
        b.start_fronts("redis")
        zxys = b.prepare()                                  # this layout, rendered through this front
        for zxy in zxys[:64]:                               # the earlier layout, through the earlier front
            status = http.get(f"{b.base_of('before')}/tiles/world/{zxy}.png")[0]
            if status != 200:
                raise SystemExit(f"bench: the earlier front answered {status} for {zxy}")
        r = redis.Redis(port=b.redis_port)
        kinds = key_kinds(r, "b")
        r.close()
        b.start_fronts("redis", hot_ttl=0.001)
        time.sleep(0.01)
        http.say(f"redis store: X-Cache {b.xcache_of(zxys)}, keys {kinds}")
        res = b.compare(zxys)
        res["keys"] = kinds
        return res
    finally:
        b.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", required=True, type=Path,
                    help="a tree of the earlier code (git archive REV | tar -x -C DIR)")
    ap.add_argument("--zooms", default="0-8")
    ap.add_argument("--rounds", type=int, default=1, help="seeds per layout, alternated")
    ap.add_argument("--read-rounds", type=int, default=3, help="alternated wrk runs per front")
    ap.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    ap.add_argument("--connections", type=int, default=32, help="wrk connections")
    ap.add_argument("--no-read", action="store_true", help="memory only")
    ap.add_argument("--no-memory", action="store_true", help="reads only")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    before = args.before.resolve()
    if not (before / "renderd" / "store" / "redis.py").is_file():
        raise SystemExit(f"bench: {before} is not a tree of renderd-py")
    tmp = Path(tempfile.mkdtemp(prefix="rpy-redis-mem-"))
    runs = []
    for _ in range(0 if args.no_memory else args.rounds):
        for layout, tree in (("before", before), ("after", ROOT)):
            print(f"bench: seeding zooms {args.zooms}, {layout}", file=sys.stderr, flush=True)
            runs.append(memory_round(tmp, tree, layout, args.zooms))
    out: dict = {"memory": runs}
    if not args.no_read:
        out["read"] = read_bench(args, before)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"world layer, zooms {args.zooms}, {os.cpu_count()} CPUs\n")
    print("| layout | seed s | distinct tiles | their bytes | used_memory - baseline | ratio | keys |")
    print("|---|---|---|---|---|---|---|")
    for m in runs:
        kinds = ", ".join(f"{k} {v}" for k, v in m["key_kinds"].items())
        print(f"| {m['layout']} | {m['seed_seconds']} | {m['distinct_tiles']} | {m['distinct_bytes']} "
              f"| {m['used_memory']} | **{m['ratio']:.3f}** | {m['keys']} ({kinds}) |")
    if "read" in out:
        rd = out["read"]
        print("\n| front (dict cold, STORE) | req/s | p50 ms | p99 ms | nginx CPU us/req | "
              "redis CPU us/req | static req/s |")
        print("|---|---|---|---|---|---|---|")
        for name, v in (("before", rd["before"]), ("after", rd)):
            t = v["tiles"]
            print(f"| {name} | {t['rps']:.0f} | {t['p50_ms']:.2f} | {t['p99_ms']:.2f} | {t['cpu_us']:.1f} "
                  f"| {t['redis_cpu_us']:.1f} | {v['static']['rps']:.0f} |")
        b, a = rd["before"]["tiles"], rd["tiles"]
        print(f"\nafter / before: req/s {a['rps'] / b['rps']:.2f}, nginx CPU per request "
              f"{a['cpu_us'] / b['cpu_us']:.2f}, redis CPU per request "
              f"{a['redis_cpu_us'] / max(b['redis_cpu_us'], 1e-9):.2f}")


if __name__ == "__main__":
    main()
