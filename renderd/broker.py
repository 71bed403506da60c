"""The broker: priority queues of metatile jobs, coalescing, deadlines,
backpressure, and the workers that take the jobs (docs/protocol.md).

The broker owns no socket loop: ``handle`` takes one message (the peer
identity first), ``tick`` does the periodic work, and replies go out through
the ``send`` callable, so tests drive it directly with a fake clock. A
malformed message is logged (rate-limited) and dropped; it never raises.
"""

from __future__ import annotations

import collections
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

from . import tilesets
from . import protocol as p
from .config import Config
from .catalog.service import CatalogService
from .errors import ProtocolError, RenderdError, StoreError, UsageError
from .store.index import MetaIndex
from .tilemath import Meta, Tile, metatile_of

log = logging.getLogger("renderd.broker")

Send = Callable[[list[bytes]], None]
JobKey = tuple[str, int, int, int]


@dataclass
class Waiter:
    ident: bytes
    rid: bytes
    tile: Tile
    deadline: float
    flags: frozenset[str]
    since: float


@dataclass
class Job:
    job_id: bytes
    layer: str
    meta: Meta
    priority: int
    queued_at: float
    waiters: list[Waiter] = field(default_factory=list)
    worker: "Worker | None" = None
    started: float = 0.0
    kills: int = 0

    @property
    def key(self) -> JobKey:
        return (self.layer, self.meta.z, self.meta.x0, self.meta.y0)


@dataclass
class Worker:
    ident: bytes
    info: dict
    expiry: float
    job: Job | None = None
    jobs_done: int = 0
    stopping: bool = False

    @property
    def pid(self) -> int | None:
        pid = self.info.get("pid")
        return pid if isinstance(pid, int) else None

    @property
    def reserved(self) -> bool:
        return self.info.get("role") == p.INTERACTIVE

    @property
    def generation(self) -> int:
        g = self.info.get("generation", 0)
        return g if isinstance(g, int) else 0


@dataclass
class Recent:
    at: float
    index: MetaIndex
    raw_index: bytes
    blobs: dict[str, bytes]
    size: int


class RateLimitedLog:
    """Logs a message kind at most once per ``period`` seconds, with a count."""

    def __init__(self, period: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.period = period
        self.clock = clock
        self._last: dict[str, float] = {}
        self._dropped: collections.Counter[str] = collections.Counter()

    def warning(self, kind: str, msg: str) -> None:
        now = self.clock()
        if now - self._last.get(kind, -1e18) >= self.period:
            extra = f" ({self._dropped[kind]} more since)" if self._dropped[kind] else ""
            log.warning("%s%s", msg, extra)
            self._last[kind] = now
            self._dropped[kind] = 0
        else:
            self._dropped[kind] += 1


class Broker:
    RECENT_BYTES = 64 << 20

    def __init__(self, cfg: Config, send: Send, clock: Callable[[], float] = time.monotonic,
                 kill: Callable[[Worker], None] | None = None, pool: str = ""):
        self.cfg = cfg
        self.send = send
        self.clock = clock
        self.kill = kill or (lambda w: None)
        self.pool = pool
        self.layers = tilesets.layer_parts(cfg)     # (a layer at each of its scales)
        self.catalog = CatalogService(cfg)   # opened at the first question
        d = cfg.daemon
        self.queue_size = d.queue_size
        self.render_timeout = d.render_timeout
        self.heartbeat = d.heartbeat
        self.liveness = d.liveness
        self.recent_seconds = d.recent_seconds
        self.queues: list[collections.OrderedDict[JobKey, Job]] = [
            collections.OrderedDict() for _ in p.PRIORITY_NAMES]
        self.jobs: dict[JobKey, Job] = {}
        self.by_id: dict[bytes, Job] = {}
        self.workers: dict[bytes, Worker] = {}
        self.recent: collections.OrderedDict[JobKey, Recent] = collections.OrderedDict()
        self.recent_bytes = 0
        self.accepting = True
        self._ids = itertools.count(1)
        self._next_beat = 0.0
        self._last_tick: float | None = None
        self._next_purge = float("inf")  # earliest deadline of any waiter
        self.badlog = RateLimitedLog(clock=clock)
        self.counters: collections.Counter[str] = collections.Counter()
        self.render_seconds = [0.0] * len(p.PRIORITY_NAMES)
        self.render_count = [0] * len(p.PRIORITY_NAMES)
        self.work: dict[str, float] = collections.defaultdict(float)

    # --- entry points ----------------------------------------------------
    def handle(self, frames: list[bytes]) -> None:
        """One message from the ROUTER: identity, then the peer's frames."""
        if len(frames) < 3:
            self._bad("short", f"dropped a message of {len(frames)} frames")
            return
        ident, proto, cmd, rest = frames[0], frames[1], frames[2], frames[3:]
        try:
            if proto == p.CLIENT:
                self.handle_client(ident, cmd, rest)
            elif proto == p.WORKER:
                self.handle_worker(ident, cmd, rest)
            else:
                self._bad("proto", f"dropped a message with unknown protocol {proto[:16]!r}")
        except ProtocolError as e:
            self._bad("malformed", f"dropped a malformed {cmd[:16]!r}: {e}")

    def tick(self) -> None:
        """Periodic work: heartbeats, deadlines, silent workers, dispatch."""
        now = self.clock()
        self.credit_stall(now)
        if now >= self._next_beat:
            for w in self.workers.values():
                self.send([w.ident] + p.heartbeat_frames())
            self._next_beat = now + self.heartbeat
        self.purge_waiters(now)
        self.purge_workers(now)
        self.dispatch()

    # --- clients ---------------------------------------------------------
    def handle_client(self, ident: bytes, cmd: bytes, rest: list[bytes]) -> None:
        if cmd == p.RENDER:
            try:
                req = p.decode_render(rest)
            except ProtocolError as e:
                self.counters["invalid"] += 1
                self._bad("render", f"refused a RENDER: {e}")
                self.reply(ident, p.Reply(p.INVALID, p.render_id(rest), str(e).encode()))
                return
            self.request(ident, req)
        elif cmd == p.PING:
            self.send([ident] + p.pong_frames(p.decode_ping(rest)))
        elif cmd == p.STATUS:
            self.send([ident] + p.json_reply_frames(p.decode_ping(rest), self.status()))
        elif cmd == p.CATALOG:
            self.answer_catalog(ident, rest)
        else:
            raise ProtocolError(f"unknown client command {cmd[:16]!r}")

    def answer_catalog(self, ident: bytes, rest: list[bytes]) -> None:
        """A CATALOG question (renderd.catalog.service), answered at once."""
        try:
            rid, question = p.decode_catalog(rest)
        except ProtocolError as e:
            self._bad("catalog", f"refused a CATALOG: {e}")
            return self.reply(ident, p.Reply(p.INVALID, p.render_id(rest), str(e).encode()))
        try:
            body = self.catalog.answer(question)
        except UsageError as e:
            return self.reply(ident, p.Reply(p.INVALID, rid, str(e).encode()[:p.MAX_REASON]))
        except RenderdError as e:
            self._bad("catalog", f"catalog unavailable: {e}")
            return self.reply(ident, p.Reply(p.FAIL, rid, str(e).encode()[:p.MAX_REASON]))
        self.send([ident] + p.json_reply_frames(rid, body))

    def request(self, ident: bytes, req: p.RenderRequest) -> None:
        """A RENDER: answer from a recent render, join a job, or queue one."""
        base, values = tilesets.split(req.layer)
        layer = self.layers.get(base)
        if layer is None:
            return self._refuse(ident, req.rid, f"unknown layer {base}")
        if len(values) != len(layer.keys):
            return self._refuse(ident, req.rid, f"layer {base} takes {len(layer.keys)} key values, "
                                                f"not {len(values)}")
        t = req.tile
        if not layer.minzoom <= t.z <= layer.maxzoom:
            return self._refuse(ident, req.rid, f"zoom {t.z} outside {layer.minzoom}-{layer.maxzoom}")
        if not self.accepting:
            self.counters["failed"] += 1
            return self.reply(ident, p.Reply(p.FAIL, req.rid, p.SHUTTING_DOWN))
        now = self.clock()
        meta = metatile_of(t.z, t.x, t.y, layer.metatile)
        key = (req.layer, meta.z, meta.x0, meta.y0)
        waiter = Waiter(ident, req.rid, t, now + req.timeout_ms / 1000.0, req.flags, now)
        self._next_purge = min(self._next_purge, waiter.deadline)
        if "force" not in req.flags and self._answer_recent(key, waiter, now):
            return
        job = self.jobs.get(key)
        if job is not None:
            self.counters["coalesced"] += 1
            job.waiters.append(waiter)
            if req.priority < job.priority:
                self._raise_priority(job, req.priority)
            return
        queue = self.queues[req.priority]
        if len(queue) >= self.queue_size:
            self.counters["busy"] += 1
            return self.reply(ident, p.Reply(p.BUSY, req.rid, f"{p.PRIORITY_NAMES[req.priority]} queue full".encode()))
        job = Job(str(next(self._ids)).encode(), req.layer, meta, req.priority, now, [waiter])
        self.jobs[key] = job
        self.by_id[job.job_id] = job
        queue[key] = job
        self.counters["queued"] += 1
        self.dispatch()

    def _refuse(self, ident: bytes, rid: bytes, why: str) -> None:
        self.counters["invalid"] += 1
        self.reply(ident, p.Reply(p.INVALID, rid, why.encode()))

    def _raise_priority(self, job: Job, priority: int) -> None:
        if job.worker is None:
            del self.queues[job.priority][job.key]
            self.queues[priority][job.key] = job
        job.priority = priority

    def _answer_recent(self, key: JobKey, waiter: Waiter, now: float) -> bool:
        r = self.recent.get(key)
        if r is None or now - r.at > self.recent_seconds:
            return False
        self.counters["recent"] += 1
        self.answer(waiter, r.index, r.raw_index, r.blobs)
        return True

    def reply(self, ident: bytes, reply: p.Reply) -> None:
        self.send([ident] + reply.frames())

    def answer(self, w: Waiter, index: MetaIndex, raw_index: bytes, blobs: dict[str, bytes]) -> None:
        digest = index.tile_hash(w.tile.x, w.tile.y)
        info = p.ok_info(digest, index.rendered, index.data, False, index.ext)
        tile = b"" if "nodata" in w.flags or digest is None else blobs.get(digest, b"")
        reply = p.Reply(p.OK, w.rid, info, tile)
        if "meta" in w.flags:
            reply.index = raw_index
            reply.blobs = [blobs[h] for h in index.unique() if h in blobs]
        self.reply(w.ident, reply)

    # --- workers ---------------------------------------------------------
    def handle_worker(self, ident: bytes, cmd: bytes, rest: list[bytes]) -> None:
        now = self.clock()
        worker = self.workers.get(ident)
        if cmd == p.READY:
            info = p.decode_ready(rest)
            new = Worker(ident, info, now + self.heartbeat * self.liveness)
            stale = [w for w in self.workers.values() if w.ident == ident or self._same_process(w, new)]
            self.workers[ident] = new
            for old in stale:
                self.retire(old, new)
            log.info("worker %s ready (pid %s, generation %s)", ident.hex(), info.get("pid"),
                     info.get("generation"))
            self.send([ident] + p.heartbeat_frames())  # heard at once: no second reconnect
            if not self.accepting:  # started before a shutdown, ready after it
                self.stop_worker(new)
            self.dispatch()
            return
        if worker is None:
            if cmd in (p.HEARTBEAT, p.DONE, p.FAILED):
                # we restarted or dropped it: ask it to introduce itself again
                self.send([ident] + p.ask_ready_frames())
            return
        worker.expiry = now + self.heartbeat * self.liveness
        if cmd == p.HEARTBEAT:
            return
        if cmd == p.DONE:
            self.job_done(worker, p.decode_done(rest), now)
        elif cmd == p.FAILED:
            self.job_failed(worker, p.decode_failed(rest))
        elif cmd == p.BYE:
            self.lose_worker(worker, "left")
        else:
            raise ProtocolError(f"unknown worker command {cmd[:16]!r}")
        self.dispatch()

    def _take_job(self, worker: Worker, job_id: bytes) -> Job | None:
        job = worker.job
        if job is None or job.job_id != job_id:
            self._bad("stray", f"worker {worker.ident.hex()} answered job {job_id[:16]!r} it does not hold")
            return None
        worker.job = None
        worker.jobs_done += 1
        self._forget(job)
        return job

    def job_done(self, worker: Worker, done: p.Done, now: float) -> None:
        job = self._take_job(worker, done.job_id)
        if job is None:
            return
        try:
            index = MetaIndex.decode(done.index)
        except StoreError as e:
            self._fail_waiters(job, f"worker sent a bad index: {e}")
            return
        self._count_stats(done.stats)
        raw_index = done.index
        blobs = dict(zip(index.unique(), done.blobs))
        elapsed = now - job.started
        self.render_seconds[job.priority] += elapsed
        self.render_count[job.priority] += 1
        self.counters["rendered"] += 1
        for w in job.waiters:
            if w.deadline >= now:
                self.answer(w, index, raw_index, blobs)
        self._remember(job.key, index, raw_index, blobs, now)

    def _count_stats(self, stats: p.JobStats | None) -> None:
        """Add a worker's per-job figures (draw and encode time, encodes
        done and saved by deduplication) to the totals in STATUS."""
        if stats is None:
            self._bad("stats", "worker sent unreadable stats")
            return
        self.work["draw_seconds"] += stats.draw
        self.work["encode_seconds"] += stats.encode
        self.work["store_seconds"] += stats.store
        self.work["job_seconds"] += stats.job
        self.work["encoded"] += stats.encoded
        self.work["encodes_saved"] += stats.reused

    def job_failed(self, worker: Worker, failed: p.Failed) -> None:
        job = self._take_job(worker, failed.job_id)
        if job is not None:
            reason = failed.reason[:200]
            log.error("metatile %s %s failed: %s", job.layer, job.meta, reason)
            self._fail_waiters(job, reason)

    def _fail_waiters(self, job: Job, reason: str) -> None:
        self.counters["failed"] += 1
        for w in job.waiters:
            self.reply(w.ident, p.Reply(p.FAIL, w.rid, reason.encode()[:200]))

    def _forget(self, job: Job) -> None:
        self.jobs.pop(job.key, None)
        self.by_id.pop(job.job_id, None)
        self.queues[job.priority].pop(job.key, None)

    def _remember(self, key: JobKey, index: MetaIndex, raw: bytes, blobs: dict[str, bytes], now: float) -> None:
        if self.recent_seconds <= 0:
            return
        old = self.recent.pop(key, None)
        if old is not None:
            self.recent_bytes -= old.size
        size = len(raw) + sum(len(b) for b in blobs.values())
        self.recent[key] = Recent(now, index, raw, blobs, size)
        self.recent_bytes += size
        while self.recent and (self.recent_bytes > self.RECENT_BYTES
                               or now - next(iter(self.recent.values())).at > self.recent_seconds):
            _, r = self.recent.popitem(last=False)
            self.recent_bytes -= r.size

    @staticmethod
    def _same_process(a: Worker, b: Worker) -> bool:
        """Two records of one worker process: it reconnected (a new socket,
        so a new identity) after hearing nothing from the broker."""
        return (a is not b and a.pid is not None and a.pid == b.pid
                and a.info.get("host") == b.info.get("host") and a.info.get("pool") == b.info.get("pool"))

    def _other_record(self, worker: Worker) -> Worker | None:
        return next((w for w in self.workers.values() if self._same_process(w, worker)), None)

    def retire(self, old: Worker, new: Worker | None) -> None:
        """Drop a stale record of a worker that is alive under another
        record: nobody is killed and its job is not held against the
        metatile. The new record keeps the job if the worker says it is
        still rendering it (``job`` in its READY); otherwise it is queued
        again."""
        if self.workers.get(old.ident) is old:
            del self.workers[old.ident]
        job, old.job = old.job, None
        new = new or self._other_record(old)
        if job is not None and new is not None and new.job is None and new.info.get("job") == job.job_id.decode():
            job.worker, new.job = new, job
            log.info("worker %s registered again as %s, still rendering %s %s", old.ident.hex(),
                     new.ident.hex(), job.layer, job.meta)
            return
        log.info("worker %s registered again%s", old.ident.hex(), f" as {new.ident.hex()}" if new else "")
        if job is not None:
            self._requeue(job)

    def lose_worker(self, worker: Worker, why: str) -> None:
        """A worker is gone: its job goes back to the head of its queue,
        unless this metatile has now killed two workers."""
        self.workers.pop(worker.ident, None)
        job = worker.job
        worker.job = None
        if job is None:
            log.info("worker %s %s", worker.ident.hex(), why)
            return
        job.kills += 1
        if job.kills >= 2:
            job.worker = None
            log.error("metatile %s %s failed: killed %d workers (last: %s)", job.layer, job.meta, job.kills, why)
            self._forget(job)
            self._fail_waiters(job, f"metatile killed {job.kills} workers")
            return
        log.warning("worker %s %s while rendering %s %s: queued again", worker.ident.hex(), why,
                    job.layer, job.meta)
        self._requeue(job)

    def _requeue(self, job: Job) -> None:
        """A running job back to the head of its queue."""
        job.worker = None
        queue = self.queues[job.priority]
        queue[job.key] = job
        queue.move_to_end(job.key, last=False)
        self._next_purge = min(self._next_purge, self.clock())  # drop it if nobody waits

    def worker_exited(self, pid: int) -> None:
        """Called by the local pool when one of its processes has died."""
        for w in list(self.workers.values()):
            if w.pid == pid and w.info.get("pool") == self.pool:
                self.lose_worker(w, f"died (pid {pid})")

    def credit_stall(self, now: float) -> None:
        """Time the broker itself did not run (the daemon stopped, or starved
        of CPU) is not held against the workers: a gap between two ticks of
        more than a heartbeat moves every worker's expiry and every running
        job's start on by the gap, so the workers get a full liveness period
        to be heard (or to register again) before anyone counts as silent."""
        last, self._last_tick = self._last_tick, now
        gap = 0.0 if last is None else now - last
        if gap <= self.heartbeat:
            return
        log.warning("the broker did not run for %.1fs: workers get %.1fs to be heard again", gap,
                    self.heartbeat * self.liveness)
        for w in self.workers.values():
            w.expiry = max(w.expiry + gap, now + self.heartbeat * self.liveness)
            if w.job is not None:
                w.job.started += gap

    def purge_workers(self, now: float) -> None:
        for w in list(self.workers.values()):
            if w.expiry < now:
                if self._other_record(w) is not None:
                    # it registered again under another identity: only the record is stale
                    self.retire(w, None)
                    continue
                self.kill(w)
                self.lose_worker(w, "went silent")
            elif w.job is not None and now - w.job.started > self.render_timeout + 2 * self.heartbeat:
                self.kill(w)
                self.lose_worker(w, f"passed the render timeout of {self.render_timeout:g}s")

    def purge_waiters(self, now: float) -> None:
        """Drop callers past their deadline, and queued jobs nobody waits for.

        Walks the jobs only once the earliest deadline has passed, so a long
        seeding queue costs nothing per tick."""
        if now < self._next_purge:
            return
        nxt = float("inf")
        for job in list(self.jobs.values()):
            if any(w.deadline < now for w in job.waiters):
                before = len(job.waiters)
                job.waiters = [w for w in job.waiters if w.deadline >= now]
                self.counters["timed_out"] += before - len(job.waiters)
            if not job.waiters and job.worker is None:
                self.counters["dropped"] += 1
                self._forget(job)
            for w in job.waiters:
                nxt = min(nxt, w.deadline)
        self._next_purge = nxt

    # --- dispatch --------------------------------------------------------
    def dispatch(self) -> None:
        """Give queued jobs to idle workers, most urgent first. Reserved
        workers (role ``interactive``) take no bulk or expiry work, and
        interactive jobs go to them first (they render at a higher CPU
        priority); bulk work starts only while fewer renders run than there
        are workers that are not reserved (docs/tools.md)."""
        idle = [w for w in self.workers.values() if w.job is None and not w.stopping]
        # renders at once that bulk work may bring the total to: the workers that are not
        # reserved (one per CPU by default), so a user's render adds no CPU contention
        # beyond the seeding renders already running when it starts
        slots = sum(1 for w in self.workers.values() if not w.reserved)
        running = self.running
        for prio, queue in enumerate(self.queues):
            while queue and idle:
                if prio >= p.BULK and running >= slots:
                    return
                key, job = next(iter(queue.items()))
                worker = self._pick(idle, job.layer, prio >= p.BULK)
                if worker is None:
                    break
                del queue[key]
                idle.remove(worker)
                self.start(worker, job)
                running += 1

    @staticmethod
    def _pick(idle: list[Worker], layer: str, bulk: bool) -> Worker | None:
        base = tilesets.split(layer)[0]
        fit = [w for w in idle if (not isinstance(w.info.get("layers"), list) or base in w.info["layers"])
               and not (bulk and w.reserved)]
        return max(fit, key=lambda w: w.reserved, default=None)

    def start(self, worker: Worker, job: Job) -> None:
        job.worker = worker
        job.started = self.clock()
        worker.job = job
        # built from the next zoom's tiles only when every caller asked for it
        # (a user's request that joined the job gets a render from the sources)
        flags = frozenset.intersection(*(w.flags & p.JOB_FLAGS for w in job.waiters)) \
            if job.waiters else frozenset()
        self.send([worker.ident] + p.Job(job.job_id, job.layer, job.meta,
                                         int(self.render_timeout * 1000), flags).frames())

    # --- lifecycle -------------------------------------------------------
    def stop_workers(self, generation: int | None = None) -> None:
        """Ask workers (of one generation, or all) to leave after their job."""
        for w in self.workers.values():
            if generation is None or w.generation == generation:
                self.stop_worker(w)

    def stop_worker(self, worker: Worker) -> None:
        """Ask one worker to leave after its job (once)."""
        if not worker.stopping:
            worker.stopping = True
            self.send([worker.ident] + p.stop_frames())

    def shutdown(self) -> None:
        """Refuse new work, fail what is queued, let running jobs finish."""
        self.accepting = False
        for queue in self.queues:
            for job in list(queue.values()):
                self._forget(job)
                self._fail_waiters(job, p.SHUTTING_DOWN.decode())
        self.stop_workers()

    @property
    def running(self) -> int:
        return sum(1 for w in self.workers.values() if w.job is not None)

    def status(self) -> dict:
        states = collections.Counter("busy" if w.job else "idle" for w in self.workers.values())
        return {
            "queues": {name: len(q) for name, q in zip(p.PRIORITY_NAMES, self.queues)},
            "running": self.running,
            "workers": {"idle": states["idle"], "busy": states["busy"], "total": len(self.workers)},
            "hosts": dict(collections.Counter(str(w.info.get("host")) for w in self.workers.values())),
            "counters": dict(self.counters),
            "render_seconds": dict(zip(p.PRIORITY_NAMES, self.render_seconds)),
            "render_count": dict(zip(p.PRIORITY_NAMES, self.render_count)),
            "work": dict(self.work),
            "worker_list": [{"pid": w.pid, "host": w.info.get("host"), "jobs": w.jobs_done,
                             "busy": w.job is not None, "generation": w.generation,
                             "role": w.info.get("role", "any")}
                            for w in self.workers.values()],
        }

    def _bad(self, kind: str, msg: str) -> None:
        self.counters["bad_messages"] += 1
        self.badlog.warning(kind, msg)
