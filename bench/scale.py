#!/usr/bin/env python3
"""Scale-out: seeding with workers on other hosts against the same number of
local workers, in one run.

    .venv/bin/python bench/scale.py [--hosts 1,2,4] [--rounds 2] [--zooms 5-6] [--json FILE]

The other hosts are network namespaces on this machine (a veth pair each,
as tests/fixtures/netns.py makes them), each running ``renderd-py worker
--workers 1`` against the broker's ``[daemon] workers_bind`` over ZeroMQ
CURVE; the local side is ``renderd-py serve`` with the same number of
workers in its own pool. Both sides render the same metatiles of the world
layer (Natural Earth, styles/world.xml) at the bulk priority into a fresh
disk store, one side after the other, alternating, fresh daemons each run.
The machine's cores are the same for both sides, so the figure shows the
protocol's overhead (CURVE, TCP, the veth) and the broker's scheduling,
not more CPU: with 4 "hosts" on 2 cores both sides are oversubscribed
alike.

Prints per N: metatiles/s and the workers' CPU ms per metatile of each
side, and the ratio remote/local of the rate per worker; goal >= 0.95.
Needs root (namespaces). Not a test: it asserts nothing.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import WORLD_LAYER, cpu_seconds, free_port, render_all, write_config  # noqa: E402
from renderd.client import Client  # noqa: E402
from renderd.tilemath import meta_at, metatile_size  # noqa: E402
from tests.fixtures.netns import make_namespaces, remove_namespaces  # noqa: E402

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hosts", default="1,2,4")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--zooms", default="5-6")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
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
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
