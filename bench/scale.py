#!/usr/bin/env python3
"""Scale-out, in one run: seeding with workers on other hosts against the
same number of local workers, and a Redis Cluster store against one Redis.

    .venv/bin/python bench/scale.py [--hosts 1,2,4] [--rounds 2] [--zooms 5-6]
        [--store-zooms 0-8] [--store-rounds 1] [--read-zoom 6] [--read-rounds 3]
        [--duration 5] [--connections 32] [--store-only | --no-store]
        [--no-memory | --no-read] [--json FILE]

1. Workers (skipped with ``--store-only``). The other hosts are network
   namespaces on this machine (a veth pair each, as tests/fixtures/netns.py
   makes them), each running ``renderd-py worker --workers 1`` against the
   broker's ``[daemon] workers_bind`` over ZeroMQ CURVE; the local side is
   ``renderd-py serve`` with the same number of workers in its own pool.
   Both sides render the same metatiles of the world layer (Natural Earth,
   styles/world.xml) at the bulk priority into a fresh disk store, one side
   after the other, alternating, fresh daemons each run. The machine's
   cores are the same for both sides, so the figure shows the protocol's
   overhead (CURVE, TCP, the veth) and the broker's scheduling, not more
   CPU: with 4 "hosts" on 2 cores both sides are oversubscribed alike.
   Prints per N: metatiles/s and the workers' CPU ms per metatile of each
   side, and the ratio remote/local of the rate per worker; goal >= 0.95.
   Needs root (namespaces).

2. Store (skipped with ``--no-store``): the Redis Cluster store
   (``redis+cluster://``, renderd/store/redis_cluster.py: a hash tag and a
   pool per block of 8x8 metatiles) against one redis-server.

   a. Memory. The world layer at ``--store-zooms`` seeded with
      ``renderd-py seed`` through a daemon (as bench/redis_memory.py does)
      into a fresh redis-server and into a fresh cluster of 3 masters with a
      replica each (tests/fixtures/redis_cluster.py), single and cluster
      taking turns for ``--store-rounds``. For each: the distinct tiles
      (count and bytes, each content once), ``used_memory`` after the seed
      minus before it (daemon connected; on the cluster summed over the 3
      masters: the replicas hold copies and are not counted), their ratio
      (goal: at most 1.1 on both), the keys by kind (count, string bytes,
      ``MEMORY USAGE``), INFO memory's parts (dataset, overhead, the
      replication backlog a master with replicas keeps, ...) and the
      cluster's bytes over the single server's. A tile repeated across
      blocks (sea, land) is stored once per block: the tiles' bytes
      counted once per block are printed beside the distinct bytes.
   b. Reads. ``--read-zoom`` seeded into a redis-server and a cluster, a
      daemon each, and two nginx fronts (``renderd-py nginx-conf``'s
      configuration of each store, this tree's ``lua/``) run by
      bench/http.py's dict-cold Redis case (``[http] hot_ttl`` 1 ms: every
      request reads its tile from the store; 256 tiles, 4 of each of 64
      metatiles: at zoom 6 all of them, one block, so one master serves
      every read; at zoom 8 every fourth metatile across and down, 4 of
      each of the 16 blocks, which the masters serve 24, 20 and 20 of the
      64): wrk alternated single, cluster, static files, single,
      cluster, ... for ``--read-rounds``; the tiles of both fronts checked
      equal byte for byte. Prints req/s, latency, nginx CPU µs/request and
      redis CPU µs/request (the cluster: summed over the masters'
      processes), medians of the rounds, and cluster / single of each;
      goal: the cluster's req/s at least 0.9 of the single server's. Also
      the commands per request each side's servers ran (and their socket
      reads per request: how well the fronts' pipelines batch), the error
      replies they gave (a ``MOVED`` or ``ASK`` would show there), the
      masters' client connections and the lines of each front's error
      log.

Not a test: it asserts nothing. The machine is shared: sides alternate,
figures are medians of the rounds, and CPU per unit of work is printed
beside the rates (it is the steadier figure). The load average is printed
at the start and at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
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
from common import (WORLD_LAYER, cpu_seconds, free_port, render_all, start_daemon,  # noqa: E402
                    stop_daemon, write_config)
from redis_memory import load_http_bench, seed  # noqa: E402

from renderd.client import Client  # noqa: E402
from renderd.store.redis import RedisStore  # noqa: E402
from renderd.store.redis_cluster import RedisClusterStore, block_tag  # noqa: E402
from renderd.tilemath import meta_at, metatile_size  # noqa: E402
from tests.fixtures.netns import make_namespaces, remove_namespaces  # noqa: E402
from tests.fixtures.redis_cluster import RedisClusterServers  # noqa: E402
from tests.fixtures.servers import RedisServer  # noqa: E402

RENDERD = [sys.executable, "-m", "renderd.cli.main"]


def metatiles(zooms: range) -> list:
    out = []
    for z in zooms:
        side = (1 << z) // metatile_size(z)
        out += [meta_at(z, mx, my) for my in range(side) for mx in range(side)]
    return out


def wait_workers(endpoint: str, n: int, proc: subprocess.Popen, timeout: float = 120) -> list[int]:
    deadline = time.monotonic() + timeout
    with Client(endpoint) as c:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"bench: the daemon exited with {proc.returncode}")
            try:
                st = c.status(timeout=1)
                if st["workers"]["total"] >= n:
                    return [w["pid"] for w in st["worker_list"]]
            except Exception:
                pass
            time.sleep(0.2)
    raise SystemExit(f"bench: {n} workers did not come")


def run(tmp: Path, n: int, remote: list | None, keys: Path, metas: list) -> dict:
    """One seed with n workers: local (remote None) or one per namespace."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    store = tmp / f"store-{time.monotonic_ns()}"
    cfg = write_config(tmp, WORLD_LAYER, f'kind = "disk"\npath = "{store}"', endpoint,
                       workers=0 if remote else n)
    port = free_port()
    if remote:
        cfg.write_text(cfg.read_text().replace("[store]", f'workers_bind = "tcp://0.0.0.0:{port}"\n'
                                               f'curve_secret = "{keys / "broker.key_secret"}"\n'
                                               f'authorized_workers = "{keys / "authorized"}"\n[store]', 1))
    daemon = subprocess.Popen(RENDERD + ["serve", "-c", str(cfg)], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pools = []
    try:
        if remote:
            for ns in remote[:n]:
                pools.append(subprocess.Popen(ns.command(RENDERD + [
                    "worker", "-c", str(cfg), "--connect", f"tcp://{ns.host_ip}:{port}", "--workers", "1",
                    "--key", str(keys / "worker.key_secret"), "--broker-key", str(keys / "broker.key")]),
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        pids = wait_workers(endpoint, n, daemon)
        jobs = [("world", m) for m in metas]
        with Client(endpoint) as c:
            render_all(c, jobs[:n])                  # warm up: each worker loads its style
            c0, b0, t0 = cpu_seconds(pids), cpu_seconds([daemon.pid]), time.perf_counter()
            failed = render_all(c, jobs[n:])
            wall = time.perf_counter() - t0
            cpu, broker = cpu_seconds(pids) - c0, cpu_seconds([daemon.pid]) - b0
        count = len(jobs) - n
        return {"wall": wall, "rate": count / wall, "cpu_ms": cpu / count * 1000,
                "broker_ms": broker / count * 1000, "failed": failed}
    finally:
        for p in pools:
            p.send_signal(signal.SIGTERM)
        daemon.send_signal(signal.SIGTERM)
        for p in pools + [daemon]:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(store, ignore_errors=True)



# --- 2. the Redis Cluster store against one Redis ------------------------------

SIDES = ("single", "cluster")


def start_store(tmp: Path, side: str) -> tuple[RedisServer | RedisClusterServers, list[int]]:
    """A fresh redis-server or 3-master cluster, and the ports of its masters."""
    if side == "single":
        srv = RedisServer(tmp)
        srv.start()
        return srv, [srv.port]
    return start_cluster(tmp / f"cluster-{free_port()}")


def start_cluster(folder: Path) -> tuple[RedisClusterServers, list[int]]:
    """A fresh cluster once the node asked sees 3 masters and 3 replicas (just
    after ``--cluster create`` it may still see a replica as a master)."""
    cluster = RedisClusterServers(folder)
    cluster.start()
    deadline = time.monotonic() + 30
    while (len(cluster.masters()), len(cluster.replicas())) != (3, 3):
        if time.monotonic() > deadline:
            cluster.stop()
            raise SystemExit("bench: the cluster's replicas did not join")
        time.sleep(0.2)
    cluster.wait_ok()
    return cluster, cluster.masters()


def on_masters(ports: list[int], fn) -> list:
    """``fn(client)`` of each master."""
    out = []
    for port in ports:
        with redis.Redis(host="127.0.0.1", port=port) as r:
            out.append(fn(r))
    return out


def key_usage(r: redis.Redis) -> dict[str, list[int]]:
    """{kind: [keys, their string bytes, their MEMORY USAGE]} of one server
    (the kind: pk, pt or pool, after the block's hash tag on a cluster)."""
    keys = [k.decode() for k in r.scan_iter("rpy:*", count=1000)]
    out: dict[str, list[int]] = {}
    for i in range(0, len(keys), 500):
        part = keys[i:i + 500]
        pipe = r.pipeline(transaction=False)
        for k in part:
            pipe.strlen(k)
            pipe.memory_usage(k, samples=0)
        got = pipe.execute()
        for k, length, usage in zip(part, got[::2], got[1::2]):
            kind = (k.split("}:", 1)[1] if "}:" in k else k.split(":", 1)[1]).split(":")[0]
            row = out.setdefault(kind, [0, 0, 0])
            row[0], row[1], row[2] = row[0] + 1, row[1] + length, row[2] + (usage or 0)
    return out


def tile_bytes(url: str) -> tuple[int, int, int]:
    """(distinct tiles, their bytes, the bytes with each content counted once
    per block of the cluster store) of the world layer in a store."""
    store = RedisClusterStore(url) if url.startswith("redis+cluster://") else RedisStore(url)
    distinct: dict[str, int] = {}
    blocks: dict[str, dict[str, int]] = {}
    with store:
        for index, sizes in store.iter_sizes("world"):
            distinct.update(sizes)
            blocks.setdefault(block_tag("world", index.meta), {}).update(sizes)
    return len(distinct), sum(distinct.values()), sum(sum(b.values()) for b in blocks.values())


#: INFO memory's fields compared after the seed and before it
MEMORY_FIELDS = ("used_memory", "used_memory_dataset", "used_memory_overhead", "mem_replication_backlog",
                 "mem_clients_slaves", "used_memory_scripts")


def memory_run(tmp: Path, side: str, zooms: str) -> dict:
    """One seed of the world layer into a fresh store of ``side``."""
    srv, ports = start_store(tmp, side)
    endpoint = f"ipc://{tmp}/broker-{side}.sock"
    cfg = write_config(tmp, WORLD_LAYER, f'kind = "redis"\nurl = "{srv.url}"', endpoint)

    def memory() -> dict[str, int]:
        out = dict.fromkeys(MEMORY_FIELDS, 0)
        for got in on_masters(ports, lambda r: r.info("memory")):
            for k in MEMORY_FIELDS:
                out[k] += int(got[k])
        return out
    try:
        daemon = start_daemon(cfg, endpoint)
        try:          # the daemon connected in both figures (its workers write the tiles)
            time.sleep(0.5)
            base = memory()
            seconds = seed(ROOT, cfg, zooms)
            time.sleep(1)                            # the replicas have what the masters wrote
            after = memory()
        finally:
            stop_daemon(daemon)
        used = after["used_memory"] - base["used_memory"]
        count, size, per_block = tile_bytes(srv.url)
        kinds: dict[str, list[int]] = {}
        for got in on_masters(ports, key_usage):
            for kind, row in got.items():
                kinds[kind] = [a + b for a, b in zip(kinds.get(kind, [0, 0, 0]), row)]
    finally:
        srv.stop()
    return {"side": side, "masters": len(ports), "seed_seconds": round(seconds, 1), "distinct_tiles": count,
            "distinct_bytes": size, "block_bytes": per_block, "used_memory": used, "ratio": used / size,
            "baseline": base["used_memory"], "memory": {k: after[k] - base[k] for k in MEMORY_FIELDS},
            "keys": dict(sorted(kinds.items()))}


def server_stats(clients: list[redis.Redis]) -> dict[str, int]:
    """Calls of each command (and its failed or rejected calls, and the error
    replies by kind) and the reads from client sockets (``socket_reads``:
    fewer than commands where clients pipeline) summed over these servers,
    but for the INFO asking them."""
    out: dict[str, int] = {}
    for r in clients:
        out["socket_reads"] = out.get("socket_reads", 0) + r.info("stats")["total_reads_processed"]
        for name, v in {**r.info("commandstats"), **r.info("errorstats")}.items():
            kind, _, what = name.partition("_")
            if kind == "errorstat":
                out[f"error {what}"] = out.get(f"error {what}", 0) + v["count"]
                continue
            if what != "info":
                out[what] = out.get(what, 0) + v["calls"]
            failed = v.get("failed_calls", 0) + v.get("rejected_calls", 0)
            if failed:
                out[f"{what} failed"] = out.get(f"{what} failed", 0) + failed
    return out


def read_paths(zoom: int) -> list[str]:
    """4 tiles of each of 64 metatiles of ``zoom`` (>= 6) spread evenly over
    it, interleaved as bench/http.py's hot paths (at zoom 6, those)."""
    step = 2 ** zoom // 64
    offsets = [(1, 2), (5, 3), (2, 6), (6, 5)]
    return [f"{zoom}/{8 * step * mx + dx}/{8 * step * my + dy}"
            for dx, dy in offsets for mx in range(8) for my in range(8)]


#: the sides of the reads as bench/http.py names their fronts
FRONTS = (("single", "before"), ("cluster", "after"))


def read_run(args: argparse.Namespace, tmp: Path) -> dict:
    """bench/http.py's dict-cold Redis case, a redis-server's front ("before"
    in its terms) against a cluster's ("after")."""
    http = load_http_bench()
    opts = argparse.Namespace(lua_before=str(http.nginx.share_dir("lua")), redis_socket=False, keep=False,
                              only="redis", threads=1, nginx_workers=2, rounds=args.read_rounds,
                              duration=args.duration, connections=args.connections)
    cluster, ports = start_cluster(tmp / "read-cluster")
    pids = [cluster.procs[p].pid for p in ports]

    class Bench(http.Bench):
        def config(self, store, workers=2, hot_ttl=None, front="after"):
            cfg = super().config(store, workers, hot_ttl, front)
            if front == "before":
                return cfg
            path = Path(cfg.path)      # the cluster: its URL, its own daemon
            path.write_text(path.read_text().replace("[daemon]\n", '[daemon]\nlog_level = "warning"\n')
                            .replace(f'url = "redis://127.0.0.1:{self.redis_port}/0"', f'url = "{cluster.url}"')
                            .replace("redis-broker.sock", "redis-cluster-broker.sock"))
            return http._config.load(path, env={})

        def hot_paths(self):
            return read_paths(args.read_zoom)

        def wrk(self, paths, front="after"):
            c0 = cpu_seconds(pids)
            out = super().wrk(paths, front)
            if front == "after":       # the masters', not the single server's
                out["redis_cpu_us"] = (cpu_seconds(pids) - c0) * 1e6 / max(out["requests"], 1)
            return out


    b = Bench(opts)
    try:
        b.start_redis()
        cfgs = {"single": b.config("redis", front="before"), "cluster": b.config("redis")}
        b.start_daemon(cfgs["single"])
        b.procs.append(start_daemon(Path(cfgs["cluster"].path), http.nginx.broker_address(
            cfgs["cluster"].daemon.broker)))
        for side, cfg in cfgs.items():
            http.say(f"seeding zoom {args.read_zoom} into the {side} store")
            seed(ROOT, Path(cfg.path), str(args.read_zoom))
        b.start_fronts("redis")
        zxys = b.prepare()                  # the cluster front's tiles, kept as the static files
        differ = [z for z in zxys if http.get(f"{b.base_of('before')}/tiles/world/{z}.png")[2]
                  != (b.static / "world" / f"{z}.png").read_bytes()]
        b.start_fronts("redis", hot_ttl=0.001)
        time.sleep(0.01)
        http.say(f"X-Cache (before: single, after: cluster) {b.xcache_of(zxys)}")
        servers = {side: [redis.Redis(host="127.0.0.1", port=p) for p in where]
                   for side, where in (("single", [b.redis_port]), ("cluster", ports))}
        for r in servers["single"] + servers["cluster"]:
            r.ping()                        # (its connection's own replies before the first count)
        before = {side: (server_stats(servers[side]), b.xcache_counts(front)) for side, front in FRONTS}
        res = b.compare(zxys)
        commands, errors = {}, {}
        for side, front in FRONTS:
            requests = sum(b.xcache_counts(front).values()) - sum(before[side][1].values())
            grew = {k: v - before[side][0].get(k, 0) for k, v in server_stats(servers[side]).items()}
            commands[side] = {k: round(v / requests, 4) for k, v in grew.items() if v and " " not in k}
            errors[side] = {k: v for k, v in grew.items() if v and " " in k}
        clients = [r.info("clients")["connected_clients"] for r in servers["cluster"]]
        for r in servers["single"] + servers["cluster"]:
            r.close()
        logs = {}
        for side, front in FRONTS:
            log = Path(b.config("redis", hot_ttl=0.001, front=front).http.prefix) / "logs" / "error.log"
            lines = log.read_text().splitlines() if log.exists() else []
            logs[side] = [x for x in lines if "[notice]" not in x]
        return {"single": res["before"], "cluster": {k: v for k, v in res.items() if k != "before"},
                "tiles": len(zxys), "tiles_differ": differ, "masters": len(ports),
                "commands_per_request": commands, "errors": errors,
                "master_clients": clients, "error_log": logs}
    finally:
        b.close()
        cluster.stop()


def store_part(args: argparse.Namespace) -> dict:
    for tool in ("wrk", "nginx", "redis-server", "redis-cli"):
        if not shutil.which(tool):
            raise SystemExit(f"bench: {tool} is not installed (run scripts/setup)")
    tmp = Path(tempfile.mkdtemp(prefix="renderd-bench-cluster-"))
    out: dict = {"memory": []}
    try:
        for r in range(0 if args.no_memory else args.store_rounds):
            for side in SIDES if r % 2 == 0 else SIDES[::-1]:
                print(f"bench: seeding zooms {args.store_zooms} into the {side} store",
                      file=sys.stderr, flush=True)
                m = memory_run(tmp, side, args.store_zooms)
                out["memory"].append(m)
                print(f"  round {r + 1}, {side}: seed {m['seed_seconds']} s, used_memory {m['used_memory']}, "
                      f"ratio {m['ratio']:.3f}", flush=True)
        if not args.no_read:
            out["read"] = read_run(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print_store(args, out)
    return out


def print_store(args: argparse.Namespace, out: dict) -> None:
    if out["memory"]:
        print_memory(args, out["memory"])
    if "read" in out:
        print_reads(args, out["read"])


def print_memory(args: argparse.Namespace, runs: list[dict]) -> None:
    med = statistics.median
    mem = {side: [m for m in runs if m["side"] == side] for side in SIDES}
    print(f"\nworld layer, zooms {args.store_zooms}; used_memory after the seed minus before "
          "(the cluster: summed over its 3 masters; the replicas' copies not counted)\n")
    print("| store | seed s | distinct tiles | their bytes | bytes once per block | used_memory - baseline "
          "| ratio (goal <= 1.1) | keys: count, string bytes, MEMORY USAGE |")
    print("|---|---|---|---|---|---|---|---|")
    for m in runs:
        keys = "; ".join(f"{k} {n}, {s}, {u}" for k, (n, s, u) in m["keys"].items())
        print(f"| {m['side']} | {m['seed_seconds']} | {m['distinct_tiles']} | {m['distinct_bytes']} "
              f"| {m['block_bytes']} | {m['used_memory']} | **{m['ratio']:.3f}** | {keys} |")
    print("\n| store | " + " | ".join(MEMORY_FIELDS) + " | (after minus before, bytes) |")
    print("|---|" + "---|" * (len(MEMORY_FIELDS) + 1))
    for m in runs:
        print(f"| {m['side']} | " + " | ".join(str(m["memory"][k]) for k in MEMORY_FIELDS) + " | |")
    single, cluster = (med([m["used_memory"] for m in mem[s]]) for s in SIDES)
    backlog = med([m["memory"]["mem_replication_backlog"] for m in mem["cluster"]])
    tiles = med([m["block_bytes"] - m["distinct_bytes"] for m in mem["cluster"]])
    print(f"\ncluster - single: {cluster - single:.0f} bytes ({cluster / single - 1:+.1%}); of it the "
          f"replication backlog {backlog:.0f}, the tiles stored once per block beyond once {tiles:.0f}; "
          f"the cluster without its backlog: ratio {(cluster - backlog) / mem['cluster'][0]['distinct_bytes']:.3f}")
    print(f"goal (<= 1.1 on both): {'met' if all(m['ratio'] <= 1.1 for m in runs) else 'NOT met'}")


def print_reads(args: argparse.Namespace, rd: dict) -> None:
    print(f"\nreads: {rd['tiles']} tiles of zoom {args.read_zoom}, dict cold (hot_ttl 1 ms), wrk -t1 "
          f"-c{args.connections} -d{args.duration}s x {args.read_rounds} rounds (medians), nginx 2 workers each\n")
    print("| store | req/s | p50 ms | p99 ms | nginx CPU µs/req | redis CPU µs/req | X-Cache | static req/s |")
    print("|---|---|---|---|---|---|---|---|")
    for side in SIDES:
        v = rd[side]
        t = v["tiles"]
        mix = ", ".join(f"{k} {x:.0%}" for k, x in v["xcache_share"].items())
        print(f"| {side} | {t['rps']:.0f} | {t['p50_ms']:.2f} | {t['p99_ms']:.2f} | {t['cpu_us']:.1f} "
              f"| {t['redis_cpu_us']:.1f} | {mix} | {v['static']['rps']:.0f} |")
    s, c = rd["single"]["tiles"], rd["cluster"]["tiles"]
    ratio = c["rps"] / s["rps"]
    print(f"\ncluster / single: req/s {ratio:.3f} (goal >= 0.9: {'met' if ratio >= 0.9 else 'NOT met'}), "
          f"p99 {c['p99_ms'] / s['p99_ms']:.2f}, nginx CPU per request {c['cpu_us'] / s['cpu_us']:.2f}, "
          f"redis CPU per request {c['redis_cpu_us'] / max(s['redis_cpu_us'], 1e-9):.2f}")
    print(f"tiles differing between the two fronts: {len(rd['tiles_differ'])} of {rd['tiles']}; "
          f"the masters' client connections after the reads: {rd['master_clients']}")
    for side in SIDES:
        calls = ", ".join(f"{k} {v:g}" for k, v in sorted(rd["commands_per_request"][side].items()))
        print(f"{side}: commands per request: {calls}; errors: {rd['errors'][side] or 'none'}")
    for side, lines in rd["error_log"].items():
        print(f"{side} front's error log: {len(lines)} lines" + "".join(f"\n    {x}" for x in lines[:5]))


def workers_part(args: argparse.Namespace) -> dict:
    lo, hi = (int(v) for v in args.zooms.split("-"))
    metas = metatiles(range(lo, hi + 1))
    hosts = [int(v) for v in args.hosts.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="renderd-bench-scale-"))
    keys = tmp / "keys"
    for name in ("broker", "worker"):
        subprocess.run(RENDERD + ["keygen", "-o", str(keys), name], check=True, capture_output=True)
    (keys / "authorized").mkdir()
    shutil.copy(keys / "worker.key", keys / "authorized" / "worker.key")
    try:
        spaces = make_namespaces(max(hosts))
    except BaseException as e:          # (pytest's skip outside pytest)
        raise SystemExit(f"bench: cannot make network namespaces: {e}")
    results: dict[int, dict[str, list[dict]]] = {n: {"local": [], "remote": []} for n in hosts}
    print(f"{len(metas)} metatiles of the world layer, zooms {args.zooms}, per run; "
          f"{os.cpu_count()} cores; rounds alternate local and remote")
    try:
        for r in range(args.rounds):
            for n in hosts:
                order = ("local", "remote") if r % 2 == 0 else ("remote", "local")
                for side in order:
                    res = run(tmp, n, spaces if side == "remote" else None, keys, metas)
                    results[n][side].append(res)
                    print(f"  round {r + 1}, {n} worker(s), {side}: {res['rate']:.1f} metatiles/s, "
                          f"workers' CPU {res['cpu_ms']:.1f} ms/metatile, broker {res['broker_ms']:.2f} ms"
                          + (f", {res['failed']} FAILED" if res["failed"] else ""), flush=True)
    finally:
        remove_namespaces(spaces)
        shutil.rmtree(tmp, ignore_errors=True)
    print("\n| workers | local metatiles/s | remote metatiles/s | remote / local per worker (median) "
          "| local CPU ms/metatile | remote CPU ms/metatile | broker CPU ms/metatile local / remote |")
    print("|---|---|---|---|---|---|---|")
    for n in hosts:
        loc, rem = results[n]["local"], results[n]["remote"]
        ratios = [b["rate"] / a["rate"] for a, b in zip(loc, rem)]
        med = statistics.median
        print(f"| {n} | {med([x['rate'] for x in loc]):.1f} | {med([x['rate'] for x in rem]):.1f} | "
              f"{med(ratios):.3f} ({', '.join(f'{x:.3f}' for x in ratios)}) | "
              f"{med([x['cpu_ms'] for x in loc]):.1f} | {med([x['cpu_ms'] for x in rem]):.1f} | "
              f"{med([x['broker_ms'] for x in loc]):.2f} / {med([x['broker_ms'] for x in rem]):.2f} |")
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hosts", default="1,2,4")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--zooms", default="5-6")
    ap.add_argument("--store-zooms", default="0-8", help="zooms of the memory seeds")
    ap.add_argument("--store-rounds", type=int, default=1, help="memory seeds per store, alternated")
    ap.add_argument("--read-zoom", type=int, default=6,
                    help="the zoom seeded and read (>= 6; 6: one block, one master; 8: 16 blocks)")
    ap.add_argument("--read-rounds", type=int, default=3, help="alternated wrk runs per front")
    ap.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    ap.add_argument("--connections", type=int, default=32, help="wrk connections")
    part = ap.add_mutually_exclusive_group()
    part.add_argument("--store-only", action="store_true",
                      help="the store part only (no namespaces: no root needed)")
    part.add_argument("--no-store", action="store_true", help="the workers part only")
    ap.add_argument("--no-memory", action="store_true", help="the store part: reads only")
    ap.add_argument("--no-read", action="store_true", help="the store part: memory only")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    out: dict = {}
    print(f"load average: {Path('/proc/loadavg').read_text().strip()}")
    if not args.store_only:
        out["workers"] = workers_part(args)
    if not args.no_store:
        out["store"] = store_part(args)
    print(f"\nload average: {Path('/proc/loadavg').read_text().strip()}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
