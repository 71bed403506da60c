"""``renderd-py serve``: the broker's socket loop and the local worker pool.

One process runs the broker and supervises the workers (separate processes
started with a fresh interpreter, so Mapnik and database connections are
set up after the split, never shared). Signal handlers only note the
signal; the loop dispatches ``handle_<signal>``: TERM and INT stop
gracefully, HUP reloads the configuration and styles with a new generation
of workers, CHLD reaps and replaces dead workers.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Callable

import zmq

from . import config as _config
from . import protocol as p
from .broker import Broker, Worker
from .farm import REMOTE, WorkersEndpoint, is_local_endpoint
from .errors import ConfigError, DaemonError
from .exitcodes import BOOT_FAILURES, EXIT_OK, EXIT_STYLE
from .sdnotify import notify

log = logging.getLogger("renderd.daemon")

SIGNALS = {signal.SIGTERM: "term", signal.SIGINT: "int", signal.SIGHUP: "hup", signal.SIGCHLD: "chld"}


def _may_set_nice(value: int) -> bool:
    """Whether this process may set a thread's nice value to ``value``: tried
    in a short-lived thread (nice values are per thread on Linux), so the
    daemon's own priority does not change."""
    ok: list[bool] = []

    def probe() -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, value)
            ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, name="nice-probe")
    t.start()
    t.join()
    return bool(ok)


def render_nice(gap: int, may: Callable[[int], bool] = _may_set_nice) -> dict[str, int]:
    """Nice values of the reserved workers' renders and of the others', ``gap``
    apart: the reserved ones raised above the daemon's priority where that is
    allowed (root, CAP_SYS_NICE, systemd's Nice= or LimitNICE=), so that
    seeding keeps the priority of everything else on the machine; otherwise
    the others lowered below it."""
    base = os.getpriority(os.PRIO_PROCESS, 0)
    if gap and base - gap >= -20 and may(base - gap):
        return {p.INTERACTIVE: base - gap, "any": base}
    return {p.INTERACTIVE: base, "any": min(19, base + gap)}


@dataclass
class Child:
    proc: subprocess.Popen
    generation: int
    started: float
    role: str = "any"
    ready: bool = False


class Pool:
    """Worker processes of this machine, connected to ``endpoint``: ``size``
    that take any job and ``reserved`` more kept for interactive requests."""

    def __init__(self, config_path: str, endpoint: str, size: int, token: str, reserved: int = 0,
                 nice_gap: int = 0, nice: dict[str, int] | None = None,
                 curve: tuple[str, str] | None = None):
        #: the nice value each role renders at
        self.nice = nice or render_nice(nice_gap)
        self.config_path = config_path
        self.endpoint = endpoint
        self.curve = curve          # (the worker's .key_secret, the broker's .key) for CURVE
        self.size = size
        self.reserved = reserved
        self.token = token
        self.generation = 0
        self.children: dict[int, Child] = {}
        self.boot_error: str | None = None

    def spawn(self, generation: int | None = None, role: str = "any") -> Child:
        gen = self.generation if generation is None else generation
        cmd = [sys.executable, "-m", "renderd.worker", "-c", self.config_path, "--connect", self.endpoint,
               "--generation", str(gen), "--pool", self.token, "--role", role,
               "--nice", str(self.nice[role]), "--parent", str(os.getpid())]
        if self.curve:
            cmd += ["--key", self.curve[0], "--broker-key", self.curve[1]]
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, start_new_session=False)
        child = Child(proc, gen, time.monotonic(), role)
        self.children[proc.pid] = child
        return child

    def fill(self) -> None:
        for role, size in (("any", self.size), (p.INTERACTIVE, self.reserved)):
            have = sum(1 for c in self.children.values() if c.generation == self.generation and c.role == role)
            for _ in range(size - have):
                self.spawn(role=role)

    def reap(self) -> list[tuple[int, Child, int]]:
        """Children that have exited: (pid, child, status)."""
        gone = []
        for pid, child in list(self.children.items()):
            code = child.proc.poll()
            if code is not None:
                del self.children[pid]
                gone.append((pid, child, code))
        return gone

    def kill(self, pid: int) -> None:
        if pid in self.children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def terminate_all(self, timeout: float) -> None:
        for child in self.children.values():
            if child.proc.poll() is None:
                child.proc.terminate()
        deadline = time.monotonic() + timeout
        for child in self.children.values():
            try:
                child.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()
        self.children.clear()


class Daemon:
    def __init__(self, cfg: _config.Config):
        if cfg.path is None:
            raise ConfigError("serve needs a configuration file")
        self.cfg = cfg
        nice = render_nice(cfg.daemon.nice_gap)
        if nice[p.INTERACTIVE] < os.getpriority(os.PRIO_PROCESS, 0):
            # allowed to raise the reserved workers: the broker, which every job passes
            # through twice, runs as high, so that a busy machine does not leave workers
            # waiting for their next job (before any thread or worker is started: they
            # inherit it; the seeding workers lower their render thread again)
            os.setpriority(os.PRIO_PROCESS, 0, nice[p.INTERACTIVE])
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.sock.setsockopt(zmq.SNDHWM, 100_000)
        self.sock.setsockopt(zmq.RCVHWM, 100_000)
        self.token = uuid.uuid4().hex
        if not is_local_endpoint(cfg.daemon.broker):
            raise ConfigError(f"{cfg.daemon.broker!r} is not a loopback address: nginx, the tools and the "
                              "local workers talk to the broker on ipc:// or loopback; workers on other "
                              "hosts connect to daemon.workers_bind, with CURVE", "daemon.broker")
        self.remote = WorkersEndpoint(self.ctx, cfg.daemon.workers_bind, cfg.daemon.curve_secret,
                                      cfg.daemon.authorized_workers) if cfg.daemon.workers_bind else None
        self.pool = Pool(cfg.path, cfg.daemon.broker, cfg.daemon.workers, self.token, cfg.daemon.reserved,
                         nice=nice)
        self.broker = Broker(cfg, self._send, kill=self._kill_worker, pool=self.token)
        self.pending: list[str] = []
        self.stopping = False
        self.stop_deadline = 0.0
        self.notified_ready = False
        self.reload_generation: int | None = None

    def _send(self, frames: list[bytes]) -> None:
        """The broker's replies: to the workers' endpoint for its peers, else the main one."""
        if self.remote is not None and frames[0][:1] == REMOTE:
            self.remote.sock.send_multipart([frames[0][1:]] + frames[1:])
        else:
            self.sock.send_multipart(frames)

    def _from_remote(self) -> None:
        for _ in range(1000):
            try:
                frames = self.remote.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) >= 2 and frames[1] == p.WORKER:    # workers' messages only
                self.broker.handle([REMOTE + frames[0]] + frames[1:])

    # --- setup -----------------------------------------------------------
    def bind(self) -> None:
        endpoint = self.cfg.daemon.broker
        if endpoint.startswith("ipc://"):
            path = endpoint[len("ipc://"):]
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            if os.path.exists(path):
                if self._ipc_alive(endpoint):
                    raise DaemonError(f"another broker is serving {endpoint}")
                os.unlink(path)
        try:
            self.sock.bind(endpoint)
        except zmq.ZMQError as e:
            raise DaemonError(f"cannot bind {endpoint}: {e}") from None
        if self.remote is not None:
            self.remote.bind()

    def _ipc_alive(self, endpoint: str) -> bool:
        path = endpoint[len("ipc://"):]
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(path)
                return True
            except OSError:
                return False

    def _install_signals(self) -> socket.socket:
        rsock, wsock = socket.socketpair()
        rsock.setblocking(False)
        wsock.setblocking(False)
        signal.set_wakeup_fd(wsock.fileno(), warn_on_full_buffer=False)
        for sig in SIGNALS:
            signal.signal(sig, self._note_signal)
        self._wsock = wsock
        return rsock

    def _note_signal(self, signum: int, frame: object) -> None:
        self.pending.append(SIGNALS[signum])

    # --- main loop -------------------------------------------------------
    def run(self) -> int:
        self.bind()
        wake = self._install_signals()
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(wake, zmq.POLLIN)
        if self.remote is not None:
            poller.register(self.remote.sock, zmq.POLLIN)
            log.info("workers from other hosts on %s (%s)", self.remote.endpoint,
                     "CURVE" if self.remote.keys is not None else "loopback, no CURVE")
        self.pool.fill()
        log.info("broker on %s with %d workers (rendering at nice %d) and %d reserved for interactive "
                 "requests (at nice %d)", self.cfg.daemon.broker, self.pool.size, self.pool.nice["any"],
                 self.pool.reserved, self.pool.nice[p.INTERACTIVE])
        if self.pool.size + self.pool.reserved == 0:
            self._ready()
        try:
            while True:
                events = dict(poller.poll(50))
                if self.sock in events:
                    for _ in range(1000):
                        try:
                            frames = self.sock.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self.broker.handle(frames)
                if self.remote is not None and self.remote.sock in events:
                    self._from_remote()
                if wake.fileno() in events or wake in events:
                    try:
                        wake.recv(4096)
                    except BlockingIOError:
                        pass
                while self.pending:
                    getattr(self, f"handle_{self.pending.pop(0)}")()
                self.handle_chld()
                if self.pool.boot_error:
                    log.error("%s", self.pool.boot_error)
                    return EXIT_STYLE
                self.broker.tick()
                self._check_ready()
                if self.stopping and self._stopped():
                    return EXIT_OK
        finally:
            notify("STOPPING=1")
            self.pool.terminate_all(5.0)
            self.sock.close(0)
            if self.remote is not None:
                self.remote.close()
            if self.cfg.daemon.broker.startswith("ipc://"):
                try:
                    os.unlink(self.cfg.daemon.broker[len("ipc://"):])
                except OSError:
                    pass

    def _check_ready(self) -> None:
        ready_gens = {w.generation for w in self.broker.workers.values() if w.info.get("pool") == self.token}
        if not self.notified_ready and self.pool.generation in ready_gens:
            self._ready()
        if self.reload_generation is not None and self.reload_generation in ready_gens:
            old = [w for w in self.broker.workers.values()
                   if w.info.get("pool") == self.token and w.generation < self.reload_generation]
            for w in old:
                self.broker.stop_worker(w)
            log.info("reloaded: generation %d serving", self.reload_generation)
            self.reload_generation = None
            notify("READY=1")

    def _ready(self) -> None:
        self.notified_ready = True
        notify("READY=1")
        log.info("ready")

    def _stopped(self) -> bool:
        if not self.pool.children:
            return True
        return time.monotonic() > self.stop_deadline

    # --- signals ---------------------------------------------------------
    def handle_term(self) -> None:
        if self.stopping:
            return
        log.info("stopping: %d renders to finish", self.broker.running)
        notify("STOPPING=1")
        self.stopping = True
        self.stop_deadline = time.monotonic() + self.cfg.daemon.shutdown_timeout
        self.broker.shutdown()

    handle_int = handle_term

    def handle_hup(self) -> None:
        if self.stopping:
            return
        try:
            cfg = _config.load(self.cfg.path)
        except ConfigError as e:
            log.error("reload refused, keeping the running configuration: %s", e)
            return
        notify("RELOADING=1")
        if self.remote is not None:
            try:
                self.remote.reload()
            except ConfigError as e:
                log.error("authorized workers not re-read, keeping the keys known: %s", e)
        self.cfg = cfg
        self.broker.layers = {lyr.name: lyr for lyr in cfg.layers}
        self.pool.generation += 1
        self.pool.size = cfg.daemon.workers
        self.pool.reserved = cfg.daemon.reserved
        self.reload_generation = self.pool.generation
        log.info("reloading: starting worker generation %d", self.pool.generation)
        self.pool.fill()

    def handle_chld(self) -> None:
        for pid, child, code in self.pool.reap():
            self.broker.worker_exited(pid)
            if self.stopping:
                continue
            if code in BOOT_FAILURES:
                what = "style" if code == EXIT_STYLE else "configuration"
                if child.generation == self.reload_generation:
                    log.error("reload failed: a new worker could not load its %s; keeping generation %d",
                              what, child.generation - 1)
                    self._abort_reload(child.generation)
                    continue
                self.pool.boot_error = f"a worker could not load its {what} (see the line above); stopping"
                return
            if code != 0 and code != -signal.SIGKILL:
                log.warning("worker %d exited with status %s", pid, code)
            if child.generation == self.pool.generation:
                self.pool.spawn(role=child.role)

    def _abort_reload(self, generation: int) -> None:
        self.reload_generation = None
        self.pool.generation = generation - 1
        for pid, c in list(self.pool.children.items()):
            if c.generation == generation:
                self.pool.kill(pid)
        notify("READY=1")

    def _kill_worker(self, worker: Worker) -> None:
        pid = worker.pid
        if pid is not None and worker.info.get("pool") == self.token:
            log.warning("killing worker %d", pid)
            self.pool.kill(pid)


def run_pool(cfg: _config.Config, endpoint: str, size: int, curve: tuple[str, str] | None = None) -> int:
    """``renderd-py worker``: a pool of workers for a broker elsewhere (``curve``: the
    worker's .key_secret and the broker's .key files)."""
    if cfg.path is None:
        raise ConfigError("worker needs a configuration file")
    if curve is None and not is_local_endpoint(endpoint):
        raise ConfigError(f"{endpoint!r} is not a loopback address: a worker on another host connects "
                          "with CURVE (--key and --broker-key)")
    # (no reserved workers here: no gap to keep)
    pool = Pool(cfg.path, endpoint, size, uuid.uuid4().hex, curve=curve)
    pending: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda s, f: pending.append(s))
    pool.fill()
    notify("READY=1")
    try:
        while not pending:
            time.sleep(0.2)
            for pid, child, code in pool.reap():
                if code in BOOT_FAILURES:
                    log.error("a worker could not load its style or configuration; stopping")
                    return EXIT_STYLE
                pool.spawn()
    finally:
        notify("STOPPING=1")
        pool.terminate_all(cfg.daemon.shutdown_timeout)
    return EXIT_OK
