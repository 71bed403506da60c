"""The broker's logic, driven directly: no sockets, an injected clock."""

import json

import pytest

from renderd import config, protocol as p
from renderd.broker import Broker, Worker
from renderd.store.index import MetaIndex, content_hash
from renderd.tilemath import Meta, Tile, meta_tiles


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def make_cfg(**daemon):
    d = {"workers": 2, "queue_size": 3, "render_timeout": 10.0, "heartbeat": 1.0, "liveness": 3,
         "recent_seconds": 2.0}
    d.update(daemon)
    return config.parse({"daemon": d, "layer": [
        {"name": "w", "style": "x.xml", "minzoom": 0, "maxzoom": 10}]}, check_files=False, env={})


class Harness:
    def __init__(self, **daemon):
        self.clock = Clock()
        self.sent = []
        self.killed = []
        self.b = Broker(make_cfg(**daemon), self.sent.append, clock=self.clock,
                        kill=self.killed.append, pool="local")

    def worker(self, ident, pid=None, role=None):
        info = {"pid": pid or hash(ident) % 10000, "layers": ["w"], "generation": 0, "pool": "local"}
        if role:
            info["role"] = role
        self.b.handle([ident] + p.ready_frames(info))

    def render(self, client, rid, tile, prio=p.MISSING, timeout_ms=5000, flags=()):
        req = p.RenderRequest(rid, "w", Tile(*tile), prio, timeout_ms, frozenset(flags))
        self.b.handle([client] + req.frames())

    def jobs_for(self, ident):
        return [p.decode_job(f[3:]) for f in self.sent if f[0] == ident and f[2] == p.JOB]

    def replies_to(self, client):
        return [p.decode_reply(f[1:]) for f in self.sent if f[0] == client and f[1] == p.CLIENT]

    def finish(self, ident, job):
        m = job.meta
        tiles = list(meta_tiles(m))
        blobs = {}
        hashes = []
        for t in tiles:
            data = f"tile {t}".encode() if t.x % 2 else b"sea"
            h = content_hash(data)
            blobs[h] = data
            hashes.append(h)
        idx = MetaIndex(m, tuple(hashes), 100, 90, "png")
        stats = b'{"draw":0.01,"encode":0.02,"encoded":2,"reused":62}'
        self.b.handle([ident, p.WORKER, p.DONE, job.job_id, stats, idx.encode()]
                      + [blobs[h] for h in idx.unique()])
        return blobs


def test_render_reply_carries_the_tile():
    h = Harness()
    h.worker(b"w1")
    h.render(b"c1", b"r1", (5, 3, 9))
    [job] = h.jobs_for(b"w1")
    assert job.meta == Meta(5, 0, 8, 8)
    h.finish(b"w1", job)
    [reply] = h.replies_to(b"c1")
    assert reply.ok and reply.rid == b"r1"
    assert reply.tile == b"tile 5/3/9"
    assert reply.fields()["hash"] == content_hash(b"tile 5/3/9")
    assert reply.index is None


def test_meta_flag_returns_index_and_distinct_blobs():
    h = Harness()
    h.worker(b"w1")
    h.render(b"c1", b"r1", (5, 2, 9), flags=("meta",))
    [job] = h.jobs_for(b"w1")
    blobs = h.finish(b"w1", job)
    [reply] = h.replies_to(b"c1")
    assert reply.tile == b"sea"
    idx = MetaIndex.decode(reply.index)
    assert [content_hash(b) for b in reply.blobs] == idx.unique()
    assert set(reply.blobs) == set(blobs.values())


def test_duplicates_join_one_job_and_raise_its_priority():
    h = Harness()
    h.render(b"c1", b"a", (8, 10, 10), prio=p.BULK)
    h.render(b"c2", b"b", (8, 12, 13), prio=p.MISSING)  # same metatile
    assert len(h.b.jobs) == 1
    assert len(h.b.queues[p.BULK]) == 0 and len(h.b.queues[p.MISSING]) == 1
    h.worker(b"w1")
    [job] = h.jobs_for(b"w1")
    h.finish(b"w1", job)
    assert {r.rid for r in h.replies_to(b"c1") + h.replies_to(b"c2")} == {b"a", b"b"}
    assert h.b.counters["rendered"] == 1 and h.b.counters["coalesced"] == 1
    assert h.b.status()["work"]["encodes_saved"] == 62


def test_join_a_running_job():
    h = Harness()
    h.worker(b"w1")
    h.render(b"c1", b"a", (8, 10, 10))
    h.render(b"c2", b"b", (8, 11, 10))
    [job] = h.jobs_for(b"w1")
    h.finish(b"w1", job)
    assert len(h.replies_to(b"c1")) == 1 and len(h.replies_to(b"c2")) == 1


def test_priority_order():
    h = Harness(reserved=0)
    h.render(b"c", b"e", (8, 0, 0), prio=p.EXPIRY)
    h.render(b"c", b"b", (8, 8, 0), prio=p.BULK)
    h.render(b"c", b"s", (8, 16, 0), prio=p.STALE)
    h.render(b"c", b"m", (8, 24, 0), prio=p.MISSING)
    order = []
    h.worker(b"w1")
    for _ in range(4):
        [job] = h.jobs_for(b"w1")[-1:]
        order.append(job.meta.x0)
        h.finish(b"w1", job)
    assert order == [24, 16, 8, 0]


def test_reserved_workers_take_interactive_jobs_only_and_first():
    h = Harness(workers=2, reserved=1)
    h.worker(b"w1")
    h.worker(b"r1", role=p.INTERACTIVE)
    h.worker(b"w2")
    for i in range(3):
        h.render(b"seed", str(i).encode(), (8, 8 * i, 0), prio=p.BULK)
    assert h.b.running == 2  # seeding takes every worker but the reserved one
    assert h.jobs_for(b"r1") == []
    h.render(b"user", b"u", (8, 200, 200), prio=p.MISSING)
    assert [j.meta.x0 for j in h.jobs_for(b"r1")] == [200]
    assert len(h.replies_to(b"seed")) == 0
    # while the user's render runs, a finished seeding render is not replaced: as many
    # renders as workers that are not reserved
    [j0] = h.jobs_for(b"w1")
    h.finish(b"w1", j0)
    assert h.b.running == 2 and len(h.jobs_for(b"w1")) == 1
    [ju] = h.jobs_for(b"r1")
    h.finish(b"r1", ju)  # the user is served: seeding takes both workers again
    assert h.b.running == 2 and len(h.jobs_for(b"w1")) == 2
    # with nothing seeding, an interactive job still goes to the reserved worker first
    h2 = Harness()
    h2.worker(b"w1")
    h2.worker(b"r1", role=p.INTERACTIVE)
    h2.render(b"user", b"u", (8, 0, 0), prio=p.STALE)
    assert len(h2.jobs_for(b"r1")) == 1 and h2.jobs_for(b"w1") == []


def test_full_queue_answers_busy_at_once():
    h = Harness(queue_size=2)
    for i in range(3):
        h.render(b"c", str(i).encode(), (8, 8 * i, 0))
    replies = h.replies_to(b"c")
    assert [r.status for r in replies] == [p.BUSY]
    assert replies[0].rid == b"2"
    # a duplicate of a queued job still joins it
    h.render(b"c", b"dup", (8, 1, 1))
    assert len(h.replies_to(b"c")) == 1


def test_callers_gone_means_job_dropped_unrendered():
    h = Harness()
    h.render(b"c", b"a", (8, 0, 0), timeout_ms=100)
    h.clock.t += 0.5
    h.b.tick()
    assert not h.b.jobs
    h.worker(b"w1")
    assert h.jobs_for(b"w1") == []
    assert h.b.counters["dropped"] == 1


def test_recent_render_answers_repeat_without_a_job():
    h = Harness()
    h.worker(b"w1")
    h.render(b"c", b"a", (8, 0, 0))
    [job] = h.jobs_for(b"w1")
    h.finish(b"w1", job)
    h.render(b"c", b"b", (8, 1, 0))
    assert len(h.jobs_for(b"w1")) == 1
    assert h.replies_to(b"c")[-1].tile == b"tile 8/1/0"
    h.clock.t += 5
    h.render(b"c", b"c", (8, 1, 0))
    assert len(h.jobs_for(b"w1")) == 2


def test_lost_worker_requeues_then_fails_after_two_kills():
    h = Harness()
    h.worker(b"w1", pid=11)
    h.render(b"c", b"a", (8, 0, 0))
    h.b.worker_exited(11)
    assert h.replies_to(b"c") == []
    h.worker(b"w2", pid=12)
    [job] = h.jobs_for(b"w2")
    h.b.worker_exited(12)
    [reply] = h.replies_to(b"c")
    assert reply.status == p.FAIL and b"killed 2 workers" in reply.info


def test_render_timeout_kills_worker():
    h = Harness(render_timeout=3.0)
    h.worker(b"w1", pid=11)
    h.render(b"c", b"a", (8, 0, 0), timeout_ms=60000)
    for _ in range(6):
        h.clock.t += 1
        h.b.handle([b"w1", p.WORKER, p.HEARTBEAT])
        h.b.tick()
    assert [w.pid for w in h.killed] == [11]
    assert len(h.b.queues[p.MISSING]) == 1


def test_silent_worker_is_dropped():
    h = Harness()
    h.worker(b"w1")
    h.clock.t += 10
    h.b.tick()
    assert not h.b.workers


def test_bad_messages_are_dropped_and_invalid_requests_answered():
    h = Harness()
    h.b.handle([b"x"])
    h.b.handle([b"x", b"JUNK", b"JUNK"])
    h.b.handle([b"x", p.CLIENT, b"NOPE", b"1"])
    h.b.handle([b"x", p.WORKER, p.DONE, b"1", b"garbage"])
    h.b.handle([b"c", p.CLIENT, p.RENDER, b"r", b"w", b"99/1/1", b"0", b"100", b""])
    h.b.handle([b"c", p.CLIENT, p.RENDER, b"r2", b"nolayer", b"1/1/1", b"0", b"100", b""])
    h.b.handle([b"c", p.CLIENT, p.RENDER, b"r3", b"w", b"11/1/1", b"0", b"100", b""])
    h.b.handle([b"c", p.CLIENT, p.RENDER, b"r4"])
    statuses = [(r.rid, r.status) for r in h.replies_to(b"c")]
    assert statuses == [(b"r", p.INVALID), (b"r2", p.INVALID), (b"r3", p.INVALID), (b"r4", p.INVALID)]
    h.b.handle([b"c", p.CLIENT, p.PING, b"p"])
    assert h.sent[-1] == [b"c", p.CLIENT, p.PONG, b"p"]


def test_status_is_json():
    h = Harness()
    h.worker(b"w1")
    h.b.handle([b"c", p.CLIENT, p.STATUS, b"s"])
    st = json.loads(h.sent[-1][4])
    assert st["workers"]["total"] == 1 and st["queues"]["missing"] == 0


def test_shutdown_fails_queued_and_stops_workers():
    h = Harness()
    h.render(b"c", b"a", (8, 0, 0))
    h.worker(b"w1")
    h.render(b"c", b"b", (8, 8, 0))
    h.b.shutdown()
    assert [r.status for r in h.replies_to(b"c")] == [p.FAIL]
    assert [b"w1", p.WORKER, p.STOP] in h.sent
    h.render(b"c", b"late", (8, 16, 0))
    assert h.replies_to(b"c")[-1].status == p.FAIL
    h.worker(b"w2")  # started before the shutdown, ready after it: stopped too
    assert [b"w2", p.WORKER, p.STOP] in h.sent


@pytest.mark.parametrize("frames", [
    [b"RPY1", b"RENDER", b"1", b"w", b"1/5/0", b"0", b"1"],
    [b"RPY1", b"RENDER", b"1", b"w", b"a/b/c", b"0", b"1"],
    [b"RPY1", b"RENDER", b"1", b"w", b"1/0/0", b"7", b"1"],
    [b"RPY1", b"RENDER", b"1", b"w", b"1/0/0", b"0", b"-1"],
    [b"RPY1", b"RENDER", b"1", b"w", b"1/0/0", b"0", b"1", b"bogus"],
    [b"RPY1", b"RENDER", b"x" * 100, b"w", b"1/0/0", b"0", b"1"],
])
def test_decode_render_refuses(frames):
    with pytest.raises(p.ProtocolError):
        p.decode_render(frames[2:])


def test_worker_frames_round_trip():
    stats = p.JobStats(0.5, 0.25, 0.125, 1.0, 3, 61)
    done = p.Done(b"7", stats, b"INDEX", [b"a", b"b"])
    frames = done.frames()
    assert frames == [p.WORKER, p.DONE, b"7",
                      b'{"draw":0.5,"encode":0.25,"store":0.125,"job":1.0,"encoded":3,"reused":61}',
                      b"INDEX", b"a", b"b"]
    assert p.decode_done(frames[2:]) == done
    failed = p.Failed(b"8", "style blew up " + "x" * 600)
    frames = failed.frames()
    assert frames[:3] == [p.WORKER, p.FAILED, b"8"] and len(frames[3]) == p.MAX_REASON
    assert p.decode_failed(frames[2:]).reason == frames[3].decode()
    assert p.decode_failed([b"9"]) == p.Failed(b"9", "render failed")
    assert p.stop_frames() == [b"RPW1", b"STOP"] and p.bye_frames() == [b"RPW1", b"BYE"]
    assert p.heartbeat_frames() == [b"RPW1", b"HEARTBEAT"] and p.ask_ready_frames() == [b"RPW1", b"READY"]
    assert p.decode_worker_message([b"RPW1", b"JOB", b"1"]) == (b"JOB", [b"1"])


@pytest.mark.parametrize("decode, frames", [
    (p.decode_done, []), (p.decode_done, [b"1", b"{}"]), (p.decode_failed, []),
    (p.decode_worker_message, [b"RPY1", b"JOB"]), (p.decode_worker_message, [b"RPW1"]),
])
def test_worker_decoders_refuse(decode, frames):
    with pytest.raises(p.ProtocolError):
        decode(frames)


@pytest.mark.parametrize("raw", [b"garbage", b"[1]", b'{"draw":"x"}', b'{"encoded":1e999}', b"\xff"])
def test_unreadable_stats_lose_the_figures_not_the_tiles(raw):
    assert p.decode_done([b"1", raw, b"INDEX"]).stats is None
    h = Harness()
    h.worker(b"w1")
    h.render(b"c1", b"r1", (5, 3, 9))
    [job] = h.jobs_for(b"w1")
    idx = MetaIndex(job.meta, tuple(content_hash(b"sea") for _ in meta_tiles(job.meta)), 100, 90, "png")
    h.b.handle([b"w1", p.WORKER, p.DONE, job.job_id, raw, idx.encode(), b"sea"])
    [reply] = h.replies_to(b"c1")
    assert reply.ok and reply.tile == b"sea"
    assert h.b.counters["bad_messages"] == 1 and h.b.work["encoded"] == 0


def test_a_stalled_broker_does_not_hold_its_stall_against_workers():
    h = Harness(heartbeat=1.0, liveness=3)
    h.worker(b"w1", pid=11)
    h.render(b"c", b"a", (8, 0, 0), timeout_ms=600000)
    h.b.tick()
    h.clock.t += 30  # the daemon was stopped (SIGSTOP) for 30 s
    h.b.tick()
    assert h.killed == [] and b"w1" in h.b.workers
    for _ in range(4):  # but a worker still silent a liveness period later is gone
        h.clock.t += 1
        h.b.tick()
    assert [w.pid for w in h.killed] == [11] and not h.b.workers
    assert h.b.jobs[("w", 8, 0, 0)].kills == 1


def ready_again(h, new, pid, job=None):
    info = {"pid": pid, "layers": ["w"], "generation": 0, "pool": "local"}
    if job is not None:
        info["job"] = job.job_id.decode()
    h.b.handle([new] + p.ready_frames(info))


def test_a_worker_registered_again_under_a_new_identity_is_not_killed():
    h = Harness(reserved=0)
    h.worker(b"w1", pid=11)
    h.worker(b"w2", pid=12)
    h.render(b"c", b"a", (8, 0, 0))
    h.render(b"c", b"b", (8, 8, 0))
    [ja], [jb] = h.jobs_for(b"w1"), h.jobs_for(b"w2")
    # w1 still renders its job and says so; w2 lost its job with its old socket
    ready_again(h, b"w1-new", 11, ja)
    ready_again(h, b"w2-new", 12)
    assert set(h.b.workers) == {b"w1-new", b"w2-new"} and h.killed == []
    assert h.jobs_for(b"w1-new") == []  # kept, not sent again
    [again] = h.jobs_for(b"w2-new")
    assert again.job_id == jb.job_id
    assert all(j.kills == 0 for j in h.b.jobs.values())
    h.finish(b"w1-new", ja)
    h.finish(b"w2-new", again)
    assert sorted(r.rid for r in h.replies_to(b"c") if r.ok) == [b"a", b"b"]
    # a silent record whose process lives on under another one is dropped unkilled
    h.worker(b"w3", pid=13)
    h.b.workers[b"w3-new"] = Worker(b"w3-new", dict(h.b.workers[b"w3"].info), h.clock.t + 100)
    h.b.tick()
    h.clock.t += 0.5
    for _ in range(8):
        h.clock.t += 0.5
        for ident in (b"w1-new", b"w2-new", b"w3-new"):
            h.b.handle([ident, p.WORKER, p.HEARTBEAT])
        h.b.tick()
    assert b"w3" not in h.b.workers and b"w3-new" in h.b.workers and h.killed == []
