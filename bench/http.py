#!/usr/bin/env python3
"""HTTP benchmark of the nginx + Lua front, with wrk on loopback.

    .venv/bin/python bench/http.py [--duration 5] [--rounds 3] [--connections 32]
                                   [--threads 1] [--nginx-workers 2] [--json FILE]
                                   [--only hot|redis|disk|cold] [--redis-socket]
                                   [--lua-before DIR]

Starts its own redis-server, daemon (``renderd-py serve``) and nginx (the
configuration ``renderd-py nginx-conf`` writes, plus one static location)
under a temp dir on loopback random ports, and measures in one run:

1. hot tiles: shared-dict hits (``X-Cache: HIT``) against the same tile
   bytes served by the same nginx as static files from disk (with an
   ``open_file_cache``: the strongest static baseline);
   goals: requests/s ratio >= 0.9, p99 latency within 1.2x;
2. store hits with the shared dict cold: the Redis store (``X-Cache:
   STORE``; ``[http] hot_ttl`` is set to 1 ms so that no dict
   entry is ever fresh: every request reads its tile from Redis, the index
   up to the tile's entry and then the blob, unless the nginx worker keeps
   it because two or more metatiles use it; the whole metatile goes into the
   dict from a timer, at most once per 5 s) against the same static files;
   goal >= 0.5. The disk store is measured the same way;
3. cold tiles: for metatiles never rendered, the end-to-end latency of one
   request (``X-Cache: RENDER``) minus the in-process render time of the same
   metatile (``renderer.render(meta)``: draw, split, hash, encode, in this
   process right after the request, by a renderer that has rendered the same
   sequence); goal: median overhead under 15 ms. Also shown, from the
   daemon's STATUS for that very job: the end-to-end latency minus the
   worker's own draw + encode time, minus that and the store write, and
   minus the worker's whole job (arrival to reply: what the stack adds
   around the worker), which are free of the noise between two processes.

Beside requests/s and latency it reports the CPU time the nginx workers (and
redis-server) used per request, read from /proc around each wrk run. nginx
runs 2 workers by default, as ``[http] workers`` does (``--nginx-workers``).

``--lua-before DIR`` measures a second Lua front beside this one, in the same
run: a second nginx with ``DIR`` as its Lua directory (for example the
``lua/`` of an earlier commit: ``git archive REV lua | tar -x -C /tmp/before``,
then ``--lua-before /tmp/before/lua``) on the same store and daemon, its
wrk runs alternated with this front's and the static files' (before, after,
static, ...), for the hot and store cases.

wrk and the servers share the machine: runs are alternated (tiles, static,
tiles, static...) and each figure is the median of the rounds. Not a test:
it asserts nothing, it prints a Markdown table (and JSON with --json).
"""

from __future__ import annotations

import os
import sys

# this file is named http.py: keep its folder off the path so that the
# standard library's http package (urllib) is the one imported
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse
import http.client
import json
import re
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from renderd import config as _config  # noqa: E402
from renderd import nginx  # noqa: E402
sys.path.append(_HERE)  # after the standard library's http is imported
from common import cpu_seconds  # noqa: E402
from renderd.tilemath import Meta  # noqa: E402

STYLE = ROOT / "styles" / "world.xml"
HOT_ZOOM = 6
#: tiles taken from each of the 64 metatiles of HOT_ZOOM (the whole world)
TILES_PER_META = 4
COLD_ZOOM = 7
COLD_COUNT = 15

WRK_SCRIPT = """
local paths = {}
for line in io.lines(os.getenv("BENCH_PATHS")) do paths[#paths + 1] = line end
local i = 0
request = function()
  i = i % #paths + 1
  return wrk.format("GET", paths[i])
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"bench: {proc.args[0]} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"bench: port {port} did not open")


def stop(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def get(url: str) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def parse_wrk(text: str) -> dict:
    out: dict = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    out["rps"] = float(m.group(1)) if m else 0.0
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        out[f"p{pct}_ms"] = float(m.group(1)) * UNITS[m.group(2)] if m else None
    m = re.search(r"(\d+) requests in", text)
    out["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    out["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: (.*)", text)
    out["socket_errors"] = m.group(1).strip() if m else ""
    return out


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="rpy-bench-"))
        self.procs: list[subprocess.Popen] = []
        self.redis_port = free_port()
        self.redis_socket = self.tmp / "redis.sock"
        #: the fronts measured: name -> (port, metrics port, Lua directory)
        self.fronts = {"after": (free_port(), free_port(), str(nginx.share_dir("lua")))}
        if args.lua_before:
            self.fronts["before"] = (free_port(), free_port(), os.path.abspath(args.lua_before))
        self.port, self.metrics_port = self.fronts["after"][:2]
        self.nginx_procs: dict[str, subprocess.Popen] = {}
        self.static = self.tmp / "static"
        self.wrk_script = self.tmp / "rotate.lua"
        self.wrk_script.write_text(WRK_SCRIPT)

    # --- the servers ---------------------------------------------------------
    def config(self, store: str, workers: int = 2, hot_ttl: float | None = None,
               front: str = "after") -> _config.Config:
        """``store``: redis, disk or cold (an empty Redis database of its own);
        ``hot_ttl``: [http] hot_ttl (default: the configuration's); ``front``:
        whose listen addresses and prefix."""
        where = (f"unix://{self.redis_socket}?db=" if self.args.redis_socket
                 else f"redis://127.0.0.1:{self.redis_port}/")
        if store == "redis":
            store_toml = f'kind = "redis"\nurl = "{where}0"\nprefix = "b"'
        elif store == "cold":
            store_toml = f'kind = "redis"\nurl = "{where}1"\nprefix = "c"'
        else:
            store_toml = f'kind = "disk"\npath = "{self.tmp / store}"'

        port, metrics_port, _ = self.fronts[front]
        name = f"{store}-{front}" + ("" if hot_ttl is None else f"-ttl{hot_ttl:g}")
        text = f"""
[daemon]
broker = "ipc://{self.tmp / store}-broker.sock"
workers = {workers}
[store]
{store_toml}
[http]
listen = "127.0.0.1:{port}"
metrics = "127.0.0.1:{metrics_port}"
workers = {self.args.nginx_workers}
cache_size = "256m"
timeout = 60
prefix = "{self.tmp / ('nginx-' + store + '-' + front)}"
{"" if hot_ttl is None else f"hot_ttl = {hot_ttl}"}
[[layer]]
name = "world"
style = "{STYLE}"
maxzoom = 10
"""
        path = self.tmp / f"{name}.toml"
        path.write_text(text)
        return _config.load(path, env={})

    def start_redis(self) -> None:
        proc = subprocess.Popen(["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
                                 "--unixsocket", str(self.redis_socket), "--unixsocketperm", "700",
                                 "--save", "", "--appendonly", "no", "--dir", str(self.tmp)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        wait_port(self.redis_port, proc)

    def start_daemon(self, cfg: _config.Config) -> subprocess.Popen:
        from renderd.client import Client
        log = open(self.tmp / f"daemon-{cfg.store.kind}.log", "w")
        proc = subprocess.Popen([sys.executable, "-m", "renderd.cli.main", "serve", "-c", str(cfg.path)],
                                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        self.procs.append(proc)
        deadline = time.monotonic() + 60
        with Client(nginx.broker_address(cfg.daemon.broker), timeout=1.0) as c:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise SystemExit(f"bench: the daemon exited; see {log.name}")
                if c.ping(0.5) and c.status(1.0)["workers"]["total"] >= cfg.daemon.processes:
                    return proc
                time.sleep(0.2)
        raise SystemExit("bench: the daemon did not become ready")

    def start_nginx(self, cfg: _config.Config, front: str = "after") -> None:
        stop(self.nginx_procs.get(front))
        port, _, lua_dir = self.fronts[front]
        static = f"""
# bench only: the same tile bytes as static files
location /static/ {{
    alias {self.static}/;
    open_file_cache max=10000 inactive=60s;
    open_file_cache_valid 60s;
}}
"""
        prefix = Path(cfg.http.prefix)
        conf = nginx.write_conf(cfg, prefix, extra_locations=static, lua_dir=lua_dir)
        proc = subprocess.Popen(["nginx", "-p", str(prefix), "-c", str(conf)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.nginx_procs[front] = proc
        wait_port(port, proc)

    def start_fronts(self, store: str, hot_ttl: float | None = None) -> None:
        """Every front on this store (the daemon of ``store`` running)."""
        for front in self.fronts:
            self.start_nginx(self.config(store, hot_ttl=hot_ttl, front=front), front)

    def close(self) -> None:
        for proc in self.nginx_procs.values():
            stop(proc)
        for p in reversed(self.procs):
            stop(p)
        if not self.args.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # --- measuring -------------------------------------------------------------
    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def base_of(self, front: str) -> str:
        return f"http://127.0.0.1:{self.fronts[front][0]}"

    def hot_paths(self) -> list[str]:
        """TILES_PER_META tiles of every metatile of HOT_ZOOM, interleaved so that
        two requests in a row never share a metatile (for the dict-cold runs,
        a metatile comes back only every 64 requests, well after hot_ttl)."""
        n = 2 ** HOT_ZOOM // 8
        offsets = [(1, 2), (5, 3), (2, 6), (6, 5), (3, 3), (4, 7), (0, 4), (7, 0)][:TILES_PER_META]
        return [f"{HOT_ZOOM}/{8 * mx + dx}/{8 * my + dy}"
                for dx, dy in offsets for mx in range(n) for my in range(n)]

    def prepare(self) -> list[str]:
        """Render the hot metatiles through nginx; copy their tiles as static files."""
        for zxy in self.hot_paths():
            status, headers, body = get(f"{self.base}/tiles/world/{zxy}.png")
            if status != 200:
                raise SystemExit(f"bench: /tiles/world/{zxy}.png answered {status}")
            f = self.static / "world" / f"{zxy}.png"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(body)
        return self.hot_paths()

    def xcache_of(self, zxys: list[str]) -> dict[str, set[str]]:
        return {front: {get(f"{self.base_of(front)}/tiles/world/{zxy}.png")[1].get("x-cache", "?")
                        for zxy in zxys[:16]} for front in self.fronts}

    def xcache_counts(self, front: str = "after") -> dict[str, float]:
        _, _, body = get(f"http://127.0.0.1:{self.fronts[front][1]}/metrics")
        out: dict[str, float] = {}
        for m in re.finditer(r'^renderd_http_requests_total\{cache="(\w+)",status="200"\} (\S+)$',
                             body.decode(), re.M):
            out[m.group(1)] = float(m.group(2))
        return out

    def cpu(self, pids: list[int | str]) -> float:
        """CPU seconds (user + system) used so far by these processes."""
        return cpu_seconds(pids)

    def nginx_cpu(self, front: str = "after") -> float:
        """CPU seconds used so far by the nginx workers of a front."""
        pid = self.nginx_procs[front].pid
        try:
            return self.cpu(Path(f"/proc/{pid}/task/{pid}/children").read_text().split())
        except OSError:
            return 0.0

    def wrk(self, paths: list[str], front: str = "after") -> dict:
        listing = self.tmp / "paths.txt"
        listing.write_text("\n".join(paths) + "\n")
        a = self.args
        cpu0, redis0 = self.nginx_cpu(front), self.cpu([self.procs[0].pid])
        r = subprocess.run(["wrk", "-t", str(a.threads), "-c", str(a.connections), "-d", f"{a.duration}s",
                            "--latency", "-s", str(self.wrk_script), self.base_of(front)],
                           capture_output=True, text=True, env={**os.environ, "BENCH_PATHS": str(listing)},
                           timeout=a.duration + 60)
        if r.returncode != 0:
            raise SystemExit(f"bench: wrk failed: {r.stderr.strip()}")
        out = parse_wrk(r.stdout)
        out["cpu_us"] = (self.nginx_cpu(front) - cpu0) * 1e6 / max(out["requests"], 1)
        out["redis_cpu_us"] = (self.cpu([self.procs[0].pid]) - redis0) * 1e6 / max(out["requests"], 1)
        return out

    def compare(self, zxys: list[str]) -> dict:
        """Each front's tiles against the static files, alternated (the
        before front first, when there is one)."""
        tiles = [f"/tiles/world/{z}.png" for z in zxys]
        static = [f"/static/world/{z}.png" for z in zxys]
        fronts = sorted(self.fronts, key=lambda f: f != "before")
        runs: dict[str, list[dict]] = {f: [] for f in fronts}
        runs["static"] = []
        for front in fronts:      # warm-up: connections, page cache, Lua code
            self.wrk(tiles[:8], front)
        self.wrk(static[:8])
        mix: dict[str, dict[str, float]] = {f: {} for f in fronts}
        for _ in range(self.args.rounds):
            for front in fronts:
                before = self.xcache_counts(front)
                runs[front].append(self.wrk(tiles, front))
                for k, v in self.xcache_counts(front).items():
                    mix[front][k] = mix[front].get(k, 0) + v - before.get(k, 0)
            runs["static"].append(self.wrk(static))
        medians = {}
        for kind, rs in runs.items():
            medians[kind] = {k: statistics.median([r[k] for r in rs if r[k] is not None])
                             for k in ("rps", "p50_ms", "p99_ms", "cpu_us", "redis_cpu_us")}
            medians[kind]["non2xx"] = sum(r["non2xx"] for r in rs)
        st = medians["static"]

        def versus_static(front: str) -> dict:
            t = medians[front]
            total = sum(mix[front].values()) or 1
            return {"tiles": t, "static": st,
                    "xcache_share": {k: round(v / total, 4) for k, v in sorted(mix[front].items()) if v},
                    "rps_ratio": t["rps"] / st["rps"], "p99_ratio": t["p99_ms"] / st["p99_ms"],
                    "cpu_ratio": st["cpu_us"] / t["cpu_us"]}
        out = versus_static("after")
        if "before" in runs:
            out["before"] = versus_static("before")
        return out

    def cold(self) -> dict:
        """End-to-end latency of a cold tile minus the in-process render of its metatile.

        A daemon with one worker on an empty Redis store renders a warm-up
        sequence, then each metatile of the list once, on request through
        nginx. Right after each request this process renders the same
        metatile with a renderer of its own that has rendered the same
        sequence (its own encode memo, so it has seen the same tiles as the
        worker): both renders run under the same load of this shared machine.
        A first unmeasured pass puts the data files in the page cache for both."""
        from renderd.client import Client
        from renderd.render.mapnik_renderer import MapnikRenderer
        from renderd.render.tiles import EncodeMemo
        cfg = self.config("cold", workers=1)
        n = 2 ** COLD_ZOOM // 8
        warmup = [Meta(COLD_ZOOM, 8 * i, 0, 8) for i in range(4)]
        # metatiles across the map's middle rows (land and sea)
        metas = [Meta(COLD_ZOOM, 8 * (i % n), 8 * (5 + (i // n) % 4), 8)
                 for i in range(0, COLD_COUNT * 3, 3)][:COLD_COUNT]
        layer = cfg.layer("world")
        with MapnikRenderer(layer, memo=None) as r:      # page cache
            for m in warmup + metas:
                r.render(m)
        self.start_daemon(cfg)
        self.start_nginx(cfg)
        for m in warmup:
            get(f"{self.base}/tiles/world/{m.z}/{m.x0}/{m.y0}.png")
        status_client = Client(nginx.broker_address(cfg.daemon.broker), timeout=5.0)

        def work_seconds() -> tuple[float, float, float]:
            """The workers' draw + encode seconds, store-write seconds and whole
            job seconds (arrival at the worker to its reply), so far."""
            w = status_client.status(5.0).get("work", {})
            return (float(w.get("draw_seconds", 0)) + float(w.get("encode_seconds", 0)),
                    float(w.get("store_seconds", 0)), float(w.get("job_seconds", 0)))

        e2e, worker, store, job, inproc = [], [], [], [], []
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        mine = MapnikRenderer(layer, memo=EncodeMemo())
        for m in warmup:
            mine.render(m)
        try:
            for m in metas:
                path = f"/tiles/world/{m.z}/{m.x0 + 3}/{m.y0 + 3}.png"
                w0, s0, j0 = work_seconds()
                t0 = time.perf_counter()
                conn.request("GET", path)      # one kept-alive connection: no connect in the figure
                r = conn.getresponse()
                r.read()
                e2e.append(time.perf_counter() - t0)
                if r.status != 200 or r.getheader("x-cache") != "RENDER":
                    raise SystemExit(f"bench: cold {path} answered {r.status} {r.getheader('x-cache')}")
                time.sleep(0.05)
                w1, s1, j1 = work_seconds()
                worker.append(w1 - w0)
                store.append(s1 - s0)
                job.append(j1 - j0)
                t0 = time.perf_counter()
                mine.render(m)
                inproc.append(time.perf_counter() - t0)
        finally:
            mine.close()
            conn.close()
            status_client.close()
        over = [(a - b) * 1000 for a, b in zip(e2e, inproc)]
        over_worker = [(a - b) * 1000 for a, b in zip(e2e, worker)]
        over_stack = [(a - b - c) * 1000 for a, b, c in zip(e2e, worker, store)]
        over_transport = [(a - b) * 1000 for a, b in zip(e2e, job)]
        return {"metatiles": len(metas), "zoom": COLD_ZOOM,
                "e2e_median_ms": statistics.median(e2e) * 1000,
                "render_median_ms": statistics.median(inproc) * 1000,
                "overhead_median_ms": statistics.median(over),
                "overhead_p90_ms": sorted(over)[int(0.9 * (len(over) - 1))],
                "worker_render_median_ms": statistics.median(worker) * 1000,
                "overhead_vs_worker_median_ms": statistics.median(over_worker),
                "store_write_median_ms": statistics.median(store) * 1000,
                "overhead_vs_worker_and_store_median_ms": statistics.median(over_stack),
                "worker_job_median_ms": statistics.median(job) * 1000,
                "overhead_vs_worker_job_median_ms": statistics.median(over_transport),
                "e2e_ms": [round(x * 1000, 1) for x in e2e],
                "render_ms": [round(x * 1000, 1) for x in inproc],
                "worker_ms": [round(x * 1000, 1) for x in worker],
                "store_ms": [round(x * 1000, 1) for x in store],
                "job_ms": [round(x * 1000, 1) for x in job],
                "overhead_ms": [round(o, 1) for o in over]}

    def run(self) -> dict:
        results: dict = {"setup": {
            "nginx_workers": self.args.nginx_workers, "wrk_threads": self.args.threads,
            "connections": self.args.connections, "duration_s": self.args.duration,
            "rounds": self.args.rounds, "cpus": os.cpu_count(),
            "hot_tiles": len(self.hot_paths()),
            "tile_bytes_mean": None}}
        self.start_redis()
        cfg = self.config("redis")
        self.start_daemon(cfg)
        self.start_fronts("redis")
        zxys = self.prepare()
        for front in self.fronts:      # every front's hot cache holds them
            for zxy in zxys:
                get(f"{self.base_of(front)}/tiles/world/{zxy}.png")
        sizes = [f.stat().st_size for f in self.static.rglob("*.png")]
        results["setup"]["tile_bytes_mean"] = round(sum(sizes) / len(sizes))
        only = self.args.only
        if only in ("all", "hot"):
            say(f"hot: X-Cache {self.xcache_of(zxys)}")
            results["hot"] = self.compare(zxys)
        if only in ("all", "redis"):
            self.start_fronts("redis", hot_ttl=0.001)
            time.sleep(0.01)
            say(f"redis store: X-Cache {self.xcache_of(zxys)}")
            results["store_redis"] = self.compare(zxys)
        if only in ("all", "disk"):
            # the disk store, dict cold, the same way
            dcfg = self.config("disk")
            self.start_daemon(dcfg)
            self.start_fronts("disk")
            for zxy in zxys[:64]:               # one request renders each metatile into the disk store
                get(f"{self.base}/tiles/world/{zxy}.png")
            self.start_fronts("disk", hot_ttl=0.001)
            say(f"disk store: X-Cache {self.xcache_of(zxys)}")
            results["store_disk"] = self.compare(zxys)
        if only in ("all", "cold"):
            say("cold tiles")
            results["cold"] = self.cold()
        return results


def say(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def table(res: dict) -> str:
    s = res["setup"]
    lines = [
        f"nginx workers {s['nginx_workers']}, wrk -t{s['wrk_threads']} -c{s['connections']} "
        f"-d{s['duration_s']}s x {s['rounds']} rounds (median), {s['cpus']} CPUs, "
        f"{s['hot_tiles']} tiles of {s['tile_bytes_mean']} bytes on average",
        "",
        "| case | req/s | p50 ms | p99 ms | static req/s | static p99 ms | req/s ratio | p99 ratio "
        "| nginx CPU us/req (static) | goal |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, name, goal in (("hot", "hot tiles (shared dict, HIT)", "ratio >= 0.9, p99 <= 1.2x"),
                            ("store_redis", "Redis store, dict cold (STORE)", "ratio >= 0.5"),
                            ("store_disk", "disk store, dict cold (STORE)", "")):
        r = res.get(key)
        if not r:
            continue
        for label, v in ((" before", r["before"]), ("", r)) if "before" in r else (("", r),):
            t, st = v["tiles"], v["static"]
            mix = ", ".join(f"{k} {x:.0%}" for k, x in v.get("xcache_share", {}).items())
            lines.append(f"| {name}{label} [{mix}] | {t['rps']:.0f} | {t['p50_ms']:.2f} | {t['p99_ms']:.2f} "
                         f"| {st['rps']:.0f} | {st['p99_ms']:.2f} | {v['rps_ratio']:.2f} | {v['p99_ratio']:.2f} "
                         f"| {t['cpu_us']:.1f} ({st['cpu_us']:.1f}) | {goal} |")
    c = res.get("cold")
    if c:
        lines += ["",
                  f"cold tiles: {c['metatiles']} metatiles at zoom {c['zoom']}, one request each: "
                  f"end-to-end median {c['e2e_median_ms']:.1f} ms, in-process render median "
                  f"{c['render_median_ms']:.1f} ms, overhead median {c['overhead_median_ms']:.1f} ms "
                  f"(p90 {c['overhead_p90_ms']:.1f} ms; goal: median under 15 ms); the workers' own "
                  f"draw + encode time median {c['worker_render_median_ms']:.1f} ms, end-to-end minus "
                  f"that: median {c['overhead_vs_worker_median_ms']:.1f} ms; the store write median "
                  f"{c['store_write_median_ms']:.1f} ms, end-to-end minus draw, encode and store write: "
                  f"median {c['overhead_vs_worker_and_store_median_ms']:.1f} ms; end-to-end minus the "
                  f"worker's whole job (arrival to reply): median "
                  f"{c['overhead_vs_worker_job_median_ms']:.1f} ms"]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    ap.add_argument("--rounds", type=int, default=3, help="alternated runs per case")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="wrk threads")
    ap.add_argument("--nginx-workers", type=int, default=2,
                    help="nginx worker processes, for the tiles and the static files alike "
                         "(default 2, as [http] workers)")
    ap.add_argument("--redis-socket", action="store_true",
                    help="nginx, daemon and tools reach Redis over a unix socket, not TCP on loopback")
    ap.add_argument("--json", metavar="FILE", help="write the results as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    ap.add_argument("--only", choices=("all", "hot", "redis", "disk", "cold"), default="all",
                    help="run one case only")
    ap.add_argument("--lua-before", metavar="DIR",
                    help="also measure the Lua front in DIR (an earlier lua/), alternated with this one")
    args = ap.parse_args()
    for tool in ("wrk", "nginx", "redis-server"):
        if not shutil.which(tool):
            raise SystemExit(f"bench: {tool} is not installed (run scripts/setup)")
    b = Bench(args)
    try:
        res = b.run()
    finally:
        b.close()
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    print(table(res))


if __name__ == "__main__":
    main()
