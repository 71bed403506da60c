"""A render worker process: ``python -m renderd.worker``.

The main thread renders; an I/O thread owns the socket to the broker, sends
heartbeats while Mapnik draws, and reconnects when the broker goes silent.
The two talk over an inproc pair, so no socket is shared between threads.

A render that passes its timeout is ended by the kernel: the worker arms
``SIGALRM`` with its default action (terminate) around each job, which works
even if a C library holds the interpreter lock. The pool sees the death and
the broker re-queues the job.

Exit status ``EXIT_STYLE`` (3) means a style could not load, ``EXIT_USAGE``
(2) that the configuration did not: the pool stops instead of restarting
workers in a loop (``renderd.exitcodes``).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
from typing import Iterator

import zmq

from . import tilesets
from . import config as _config
from . import protocol as p
from .errors import ConfigError, ProtocolError, RenderdError, StyleError
from .exitcodes import EXIT_OK, EXIT_STYLE, EXIT_USAGE
from .store import MetaIndex, open_store

log = logging.getLogger("renderd.worker")


class BrokerLink:
    """The worker's side of the broker conversation (heartbeats, reconnects).

    ``jobs()`` yields jobs to the main thread; ``done``/``failed`` send
    results back. Everything on the broker socket happens in one I/O thread.
    """

    def __init__(self, endpoint: str, info: dict, heartbeat: float, liveness: int,
                 context: zmq.Context | None = None, curve: tuple[bytes, bytes, bytes] | None = None):
        self.endpoint = endpoint
        self.curve = curve     # (own public, own secret, the broker's public) for CURVE
        self.info = info
        self.heartbeat = heartbeat
        self.liveness = liveness
        self.ctx = context or zmq.Context.instance()
        addr = f"inproc://worker-{uuid.uuid4().hex}"
        self._main = self.ctx.socket(zmq.PAIR)
        self._main.bind(addr)
        self._io_end = self.ctx.socket(zmq.PAIR)
        self._io_end.connect(addr)
        self._stop = threading.Event()
        self.stopping = False
        self._thread = threading.Thread(target=self._io_loop, name="broker-io", daemon=True)
        self._thread.start()

    # --- main thread -----------------------------------------------------
    def jobs(self) -> Iterator[p.Job]:
        while not self.stopping:
            frames = self._main.recv_multipart()
            if frames[0] == p.STOP:
                self.stopping = True
                return
            try:
                yield p.decode_job(frames[2:])
            except ProtocolError as e:
                log.warning("dropped a malformed job: %s", e)

    def done(self, job: p.Job, stats: p.JobStats, raw_index: bytes, blobs: list[bytes]) -> None:
        self._main.send_multipart(p.Done(job.job_id, stats, raw_index, blobs).frames(), copy=False)

    def failed(self, job: p.Job, reason: str) -> None:
        self._main.send_multipart(p.Failed(job.job_id, reason).frames())

    def close(self) -> None:
        """Say BYE and stop the I/O thread."""
        self._main.send_multipart(p.bye_frames())
        self._stop.set()
        self._thread.join(5)
        self._main.close(0)

    # --- I/O thread ------------------------------------------------------
    def _connect(self) -> zmq.Socket:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 2000)
        # (zmq reconnects by itself after a broker restart: from 0.1 s, doubling up to 10 s)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 10_000)
        if self.curve is not None:
            sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = self.curve
        sock.connect(self.endpoint)
        try:
            sock.send_multipart(self._ready(), zmq.NOBLOCK)
        except zmq.Again:
            pass            # (sent again when the broker asks, or on the next reconnect)
        return sock

    def _ready(self) -> list[bytes]:
        """READY, naming the job still being rendered after a reconnect, so
        the broker keeps it with this worker instead of queuing it again."""
        info = dict(self.info, job=self._job.decode()) if self._job else self.info
        return p.ready_frames(info)

    def _io_loop(self) -> None:
        self._job: bytes | None = None  # the job the main thread holds
        broker = self._connect()
        poller = zmq.Poller()
        poller.register(broker, zmq.POLLIN)
        poller.register(self._io_end, zmq.POLLIN)
        heard = time.monotonic()
        next_beat = heard + self.heartbeat
        lost = False
        warned = -1e9

        def send(frames) -> None:
            # never block: with no way to the broker (a refused handshake drops the
            # connection), the message is dropped and the link reconnects
            nonlocal lost
            try:
                broker.send_multipart(frames, zmq.NOBLOCK, copy=False)
            except zmq.Again:
                lost = True

        while True:
            events = dict(poller.poll(int(self.heartbeat * 1000 / 2)))
            now = time.monotonic()
            if self._io_end in events:
                frames = self._io_end.recv_multipart(copy=False)
                send(frames)
                if frames[1].bytes in (p.DONE, p.FAILED):
                    self._job = None
                if frames[1].bytes == p.BYE:
                    break
            if broker in events:
                frames = broker.recv_multipart()
                heard = now
                try:
                    cmd, _ = p.decode_worker_message(frames)
                except ProtocolError:
                    cmd = b""  # not for a worker: ignored
                warned = -1e9
                if cmd == p.JOB:
                    self._job = frames[2] if len(frames) > 2 else None
                    self._io_end.send_multipart(frames)
                elif cmd == p.STOP:
                    self._io_end.send_multipart([p.STOP])
                elif cmd == p.READY:
                    send(self._ready())
            if self._stop.is_set():
                break
            if now >= next_beat:
                send(p.heartbeat_frames())
                next_beat = now + self.heartbeat
            if now - heard > self.heartbeat * self.liveness:
                if now - warned > 60:       # (a broker away for long: a line a minute)
                    log.warning("broker at %s %s for %.0fs: reconnecting", self.endpoint,
                                "unreachable" if lost else "silent", now - heard)
                    warned = now
                poller.unregister(broker)
                broker.close(0)
                broker = self._connect()
                poller.register(broker, zmq.POLLIN)
                heard, lost = now, False
        broker.close()
        self._io_end.close(0)


def set_render_nice(value: int) -> None:
    """The nice value of the calling thread, the one that renders (on Linux
    nice values are per thread): the I/O thread started before keeps the
    pool's, so heartbeats flow however busy the machine is."""
    try:
        if os.getpriority(os.PRIO_PROCESS, 0) != value:
            os.setpriority(os.PRIO_PROCESS, 0, value)
    except OSError as e:
        log.warning("cannot render at nice %d (%s): rendering at the pool's priority", value, e)


def serve_jobs(cfg: _config.Config, link: BrokerLink, renderers: dict, store, max_jobs: int) -> int:
    """Render jobs until told to stop or recycled; returns jobs done."""
    done = 0
    for job in link.jobs():
        started = time.perf_counter()
        base, values = tilesets.split(job.layer)
        renderer = renderers.get(base)
        if renderer is None:
            link.failed(job, f"unknown layer {base}")
            continue
        layer = renderer.layer
        signal.setitimer(signal.ITIMER_REAL, max(job.timeout_ms, 1) / 1000.0)
        try:
            result = None
            if "children" in job.flags and layer.kind == "raster":
                # from the next zoom's stored tiles; None: one is missing, from the sources then
                from .render.pyramid import from_children
                result = from_children(store, job.layer, job.meta, layer)
            if result is not None:
                data_time = result.data_time
            else:
                # (a tile set of a layer with keys: its values, renderd.tilesets)
                result = (renderer.render(job.meta, keys=dict(zip(layer.keys, values))) if values
                          else renderer.render(job.meta))
                data_time = getattr(renderer, "data_time", None)
            now = int(time.time())
            data_time = data_time or now
            index = MetaIndex(job.meta, tuple(result.hashes), now, int(data_time), layer.ext)
            t_store = time.perf_counter()
            store.put_metatile(job.layer, index, result.blobs)
            store_seconds = time.perf_counter() - t_store
        except RenderdError as e:
            signal.setitimer(signal.ITIMER_REAL, 0)
            log.error("metatile %s %s failed: %s", job.layer, job.meta, e)
            link.failed(job, str(e))
        except Exception as e:  # a render must not kill the worker silently
            signal.setitimer(signal.ITIMER_REAL, 0)
            log.exception("metatile %s %s failed", job.layer, job.meta)
            link.failed(job, f"{type(e).__name__}: {e}")
        else:
            signal.setitimer(signal.ITIMER_REAL, 0)
            stats = p.JobStats(round(result.draw_seconds, 6), round(result.encode_seconds, 6),
                               round(store_seconds, 6), round(time.perf_counter() - started, 6),
                               result.encoded, result.reused)
            link.done(job, stats, index.encode(), [result.blobs[h] for h in index.unique()])
        done += 1
        if max_jobs and done >= max_jobs:
            log.info("recycling after %d jobs", done)
            break
    return done


def run(args: argparse.Namespace) -> int:
    from .render import open_renderer

    try:
        cfg = _config.load(args.config)
    except ConfigError as e:
        print(f"renderd-py worker: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=getattr(logging, cfg.daemon.log_level.upper()),
                        format=f"renderd-py worker[{os.getpid()}]: %(levelname)s %(message)s")
    renderers = {}
    try:
        for part, layer in tilesets.layer_parts(cfg).items():    # (each scale its own renderer)
            r = open_renderer(layer, cfg.catalog.url)
            r.__enter__()
            renderers[part] = r
    except StyleError as e:
        print(f"renderd-py worker: error: {e}", file=sys.stderr)
        return EXIT_STYLE
    store = open_store(cfg.store)
    info = {"pid": os.getpid(), "host": socket.gethostname(), "layers": list(renderers),
            "generation": args.generation, "pool": args.pool}
    curve = None
    if args.key:
        from .farm import load_public, load_secret
        try:
            public, secret = load_secret(args.key)
            curve = (public, secret, load_public(args.broker_key))
        except ConfigError as e:
            print(f"renderd-py worker: error: {e}", file=sys.stderr)
            return EXIT_USAGE
    if args.role == p.INTERACTIVE:
        info["role"] = p.INTERACTIVE
    link = BrokerLink(args.connect or cfg.daemon.broker, info, cfg.daemon.heartbeat, cfg.daemon.liveness,
                      curve=curve)
    if args.nice is not None:
        set_render_nice(args.nice)
    max_jobs = cfg.daemon.max_jobs if args.max_jobs is None else args.max_jobs
    try:
        serve_jobs(cfg, link, renderers, store, max_jobs)
    finally:
        link.close()
        for r in renderers.values():
            r.__exit__(None, None, None)
        store.close()
    return EXIT_OK


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="renderd-py worker-process")
    ap.add_argument("-c", "--config", required=True)
    ap.add_argument("--connect", default=None, help="broker address (default: [daemon] broker)")
    ap.add_argument("--generation", type=int, default=0)
    ap.add_argument("--pool", default="")
    ap.add_argument("--max-jobs", type=int, default=None)
    ap.add_argument("--parent", type=int, default=0, help="end when this process (the pool) ends")
    ap.add_argument("--key", default="", help="this worker's .key_secret file (CURVE)")
    ap.add_argument("--broker-key", default="", help="the broker's .key file (CURVE)")
    ap.add_argument("--role", choices=("any", p.INTERACTIVE), default="any",
                    help="interactive: a reserved worker, given no seeding or expiry")
    ap.add_argument("--nice", type=int, default=None, help="nice value of the rendering thread")
    return ap.parse_args(argv)


def end_with_parent(parent: int) -> None:
    """Have the kernel send SIGTERM (which ends a worker at once) when the pool that
    started this worker dies, however it dies; exit now if it is gone already."""
    if sys.platform.startswith("linux"):
        import ctypes
        PR_SET_PDEATHSIG = 1
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            log.warning("cannot ask to end with the pool: %s", os.strerror(ctypes.get_errno()))
    if os.getppid() != parent:
        sys.exit(EXIT_OK)


def main(argv: list[str] | None = None) -> None:
    # the pool handles Ctrl-C and reloads; a worker only obeys the broker
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    args = parse_args(argv)
    if args.parent:
        end_with_parent(args.parent)
    sys.exit(run(args))


if __name__ == "__main__":
    main()
