"""Wire protocol v1 (docs/protocol.md): frames, encode, decode. No sockets.

Decoders raise ``ProtocolError`` for anything malformed; callers log and
drop, never crash.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field

from . import tilesets
from .errors import ProtocolError
from .tilemath import Meta, Tile, valid_tile

CLIENT = b"RPY1"
WORKER = b"RPW1"

# client commands and replies
RENDER = b"RENDER"
PING = b"PING"
PONG = b"PONG"
STATUS = b"STATUS"
CATALOG = b"CATALOG"
OK = b"OK"
BUSY = b"BUSY"
FAIL = b"FAIL"
INVALID = b"INVALID"

# worker commands
READY = b"READY"
HEARTBEAT = b"HEARTBEAT"
JOB = b"JOB"
DONE = b"DONE"
FAILED = b"FAILED"
STOP = b"STOP"
BYE = b"BYE"

#: priority classes, most urgent first
MISSING, STALE, BULK, EXPIRY = 0, 1, 2, 3
PRIORITY_NAMES = ("missing", "stale", "bulk", "expiry")
#: READY's ``role`` of a reserved worker: given missing and stale jobs only
INTERACTIVE = "interactive"
FLAGS = frozenset({"meta", "nodata", "force", "children"})
#: the flags of a request the broker hands on to the worker
JOB_FLAGS = frozenset({"children"})
MAX_ID = 64
MAX_TIMEOUT_MS = 7 * 24 * 3600 * 1000
#: bytes of a FAILED reason a worker sends at the most
MAX_REASON = 500
#: the ``FAIL`` reason of every request while the broker stops; a client
#: leaves the metatile for another run instead of counting it failed
SHUTTING_DOWN = b"shutting down"
_TILE_RE = re.compile(rb"(\d{1,2})/(\d{1,10})/(\d{1,10})")
MAX_TILESET = 1024


def _int(raw: bytes, what: str, lo: int, hi: int) -> int:
    if not raw.isdigit() or len(raw) > 12:
        raise ProtocolError(f"bad {what} {raw[:20]!r}")
    v = int(raw)
    if not lo <= v <= hi:
        raise ProtocolError(f"{what} {v} out of range")
    return v


def _name(raw: bytes) -> str:
    """A tile set's name: a layer, or LAYER/VALUE/... (renderd.tilesets)."""
    if len(raw) > MAX_TILESET or not tilesets.is_valid(name := raw.decode("ascii", "replace")):
        raise ProtocolError(f"bad layer name {raw[:20]!r}")
    return name


def parse_tile(raw: bytes) -> Tile:
    m = _TILE_RE.fullmatch(raw)
    if not m:
        raise ProtocolError(f"bad tile {raw[:40]!r}")
    z, x, y = (int(g) for g in m.groups())
    if not valid_tile(z, x, y):
        raise ProtocolError(f"tile {z}/{x}/{y} outside the grid")
    return Tile(z, x, y)


@dataclass
class RenderRequest:
    rid: bytes
    layer: str
    tile: Tile
    priority: int = MISSING
    timeout_ms: int = 30000
    flags: frozenset[str] = field(default_factory=frozenset)

    def frames(self) -> list[bytes]:
        return [CLIENT, RENDER, self.rid, self.layer.encode(), str(self.tile).encode(),
                str(self.priority).encode(), str(self.timeout_ms).encode(),
                ",".join(sorted(self.flags)).encode()]


def render_id(frames: list[bytes]) -> bytes:
    """The request id of a RENDER that may not decode (frames after
    ``RPY1 RENDER``), to answer ``INVALID`` to: empty if missing or too long."""
    return frames[0] if frames and len(frames[0]) <= MAX_ID else b""


def decode_render(frames: list[bytes]) -> RenderRequest:
    """Frames after ``RPY1 RENDER``: id, layer, tile, priority, timeout, flags."""
    if len(frames) < 5:
        raise ProtocolError("RENDER needs id, layer, tile, priority, timeout")
    rid = frames[0]
    if len(rid) > MAX_ID:
        raise ProtocolError("request id too long")
    flags: frozenset[str] = frozenset()
    if len(frames) > 5 and frames[5]:
        try:
            flags = frozenset(frames[5].decode("ascii").split(","))
        except UnicodeDecodeError:
            raise ProtocolError("bad flags") from None
        if not flags <= FLAGS:
            raise ProtocolError(f"unknown flags {sorted(flags - FLAGS)}")
    return RenderRequest(
        rid=rid,
        layer=_name(frames[1]),
        tile=parse_tile(frames[2]),
        priority=_int(frames[3], "priority", 0, 3),
        timeout_ms=_int(frames[4], "timeout", 0, MAX_TIMEOUT_MS),
        flags=flags,
    )


def ping_frames(rid: bytes) -> list[bytes]:
    return [CLIENT, PING, rid]


def status_frames(rid: bytes) -> list[bytes]:
    return [CLIENT, STATUS, rid]


def decode_ping(frames: list[bytes]) -> bytes:
    """Frames after ``RPY1 PING`` or ``RPY1 STATUS``: the request id (may be empty)."""
    return frames[0] if frames else b""


def pong_frames(rid: bytes) -> list[bytes]:
    return [CLIENT, PONG, rid]




#: the largest CATALOG question
MAX_QUERY = 16384


def catalog_frames(rid: bytes, query: dict) -> list[bytes]:
    """``RPY1 CATALOG id JSON``: a question about raster layers' datasets
    (renderd.catalog.service: ``op`` keys, datasets, metadata or tilejson)."""
    return [CLIENT, CATALOG, rid, json.dumps(query, separators=(",", ":")).encode()]


def decode_catalog(frames: list[bytes]) -> tuple[bytes, dict]:
    """Frames after ``RPY1 CATALOG``: the request id and the question."""
    if len(frames) < 2:
        raise ProtocolError("CATALOG needs an id and a JSON question")
    rid, raw = frames[0], frames[1]
    if len(rid) > MAX_ID or len(raw) > MAX_QUERY:
        raise ProtocolError("CATALOG id or question too long")
    try:
        query = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError("CATALOG question is not JSON") from None
    if not isinstance(query, dict):
        raise ProtocolError("CATALOG question is not an object")
    return rid, query


def json_reply_frames(rid: bytes, body: dict) -> list[bytes]:
    """``RPY1 OK id JSON``: the answer to ``STATUS`` or ``CATALOG``."""
    return [CLIENT, OK, rid, json.dumps(body, separators=(",", ":")).encode()]


def decode_status(info: bytes) -> dict:
    """The JSON of a ``STATUS`` answer (its info frame)."""
    try:
        status = json.loads(info)
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError("STATUS answer is not JSON") from None
    if not isinstance(status, dict):
        raise ProtocolError("STATUS answer is not an object")
    return status


def ok_info(digest: str | None, rendered: int, data: int, stale: bool, ext: str) -> bytes:
    return f"{digest or '0' * 32} {int(rendered)} {int(data)} {1 if stale else 0} {ext}".encode()


@dataclass
class Reply:
    status: bytes
    rid: bytes
    info: bytes = b""
    tile: bytes = b""
    index: bytes | None = None
    blobs: list[bytes] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == OK

    def fields(self) -> dict[str, str]:
        """``OK`` info as a dict: hash, rendered, data, stale, ext."""
        parts = self.info.decode("ascii", "replace").split()
        return dict(zip(("hash", "rendered", "data", "stale", "ext"), parts))

    def frames(self) -> list[bytes]:
        out = [CLIENT, self.status, self.rid, self.info]
        if self.status == OK:
            out.append(self.tile)
            if self.index is not None:
                out.append(self.index)
                out.extend(self.blobs)
        return out


def decode_reply(frames: list[bytes]) -> Reply:
    if len(frames) < 3 or frames[0] != CLIENT:
        raise ProtocolError("not an RPY1 reply")
    status, rid = frames[1], frames[2]
    info = frames[3] if len(frames) > 3 else b""
    if status != OK:
        return Reply(status, rid, info)
    tile = frames[4] if len(frames) > 4 else b""
    index = frames[5] if len(frames) > 5 else None
    return Reply(status, rid, info, tile, index, list(frames[6:]))


# --- worker messages ------------------------------------------------------

@dataclass
class Job:
    job_id: bytes
    layer: str
    meta: Meta
    timeout_ms: int
    #: how to make it: ``children`` from the next zoom's stored tiles (a
    #: worker that does not know a flag renders from the sources)
    flags: frozenset[str] = frozenset()

    def frames(self) -> list[bytes]:
        m = self.meta
        out = [WORKER, JOB, self.job_id, self.layer.encode(), f"{m.z}/{m.x0}/{m.y0}".encode(),
               str(m.n).encode(), str(self.timeout_ms).encode()]
        if self.flags:
            out.append(",".join(sorted(self.flags)).encode())
        return out


def decode_job(frames: list[bytes]) -> Job:
    """Frames after ``RPW1 JOB``; flags it does not know are left out."""
    if len(frames) < 5:
        raise ProtocolError("JOB needs id, layer, metatile, size, timeout")
    t = parse_tile(frames[2])
    n = _int(frames[3], "metatile size", 1, 64)
    flags: frozenset[str] = frozenset()
    if len(frames) > 5 and frames[5]:
        flags = frozenset(frames[5].decode("ascii", "replace").split(",")) & JOB_FLAGS
    return Job(frames[0], _name(frames[1]), Meta(t.z, t.x, t.y, n),
               _int(frames[4], "timeout", 0, MAX_TIMEOUT_MS), flags)


def ready_frames(info: dict) -> list[bytes]:
    return [WORKER, READY, json.dumps(info, separators=(",", ":")).encode()]


def decode_ready(frames: list[bytes]) -> dict:
    try:
        info = json.loads(frames[0]) if frames else {}
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError("READY info is not JSON") from None
    if not isinstance(info, dict):
        raise ProtocolError("READY info is not an object")
    return info


def decode_worker_message(frames: list[bytes]) -> tuple[bytes, list[bytes]]:
    """A message from the broker as a worker receives it: its command and
    the frames after it."""
    if len(frames) < 2 or frames[0] != WORKER:
        raise ProtocolError("not an RPW1 message")
    return frames[1], frames[2:]


def heartbeat_frames() -> list[bytes]:
    """``RPW1 HEARTBEAT``, sent both ways."""
    return [WORKER, HEARTBEAT]


def stop_frames() -> list[bytes]:
    """``RPW1 STOP`` (broker to worker): finish the current job, then exit."""
    return [WORKER, STOP]


def ask_ready_frames() -> list[bytes]:
    """``RPW1 READY`` (broker to worker): the broker does not know this
    worker; it is to send its ``READY`` with its info again."""
    return [WORKER, READY]


def bye_frames() -> list[bytes]:
    """``RPW1 BYE`` (worker to broker): the worker is leaving."""
    return [WORKER, BYE]


@dataclass
class JobStats:
    """A worker's figures for one job, the STATS of ``DONE``: seconds spent
    drawing, encoding, storing and on the whole job; tiles encoded, and
    encodes saved by deduplication (``reused``)."""

    draw: float = 0.0
    encode: float = 0.0
    store: float = 0.0
    job: float = 0.0
    encoded: int = 0
    reused: int = 0


def decode_stats(raw: bytes) -> JobStats:
    """The STATS frame of ``DONE``: a JSON object; missing figures are 0,
    other keys are ignored."""
    try:
        info = json.loads(raw)
        return JobStats(float(info.get("draw", 0)), float(info.get("encode", 0)),
                        float(info.get("store", 0)), float(info.get("job", 0)),
                        int(info.get("encoded", 0)), int(info.get("reused", 0)))
    except (ValueError, TypeError, AttributeError, OverflowError):
        raise ProtocolError("DONE stats are unreadable") from None


@dataclass
class Done:
    """``RPW1 DONE JOBID STATS INDEX BLOB...``: a job rendered and stored.

    ``index`` is the metatile index as stored (docs/storage.md), ``blobs``
    the bytes of each distinct hash of it in order of first appearance.
    ``stats`` is None when a worker sent STATS that do not parse: the result
    still counts, only the figures are lost.
    """

    job_id: bytes
    stats: JobStats | None
    index: bytes
    blobs: list[bytes] = field(default_factory=list)

    def frames(self) -> list[bytes]:
        stats = json.dumps(asdict(self.stats or JobStats()), separators=(",", ":")).encode()
        return [WORKER, DONE, self.job_id, stats, self.index, *self.blobs]


def decode_done(frames: list[bytes]) -> Done:
    """Frames after ``RPW1 DONE``."""
    if len(frames) < 3:
        raise ProtocolError("DONE needs a job id, stats and an index")
    try:
        stats: JobStats | None = decode_stats(frames[1])
    except ProtocolError:
        stats = None
    return Done(frames[0], stats, frames[2], list(frames[3:]))


@dataclass
class Failed:
    """``RPW1 FAILED JOBID REASON``: the render raised; not retried."""

    job_id: bytes
    reason: str = "render failed"

    def frames(self) -> list[bytes]:
        return [WORKER, FAILED, self.job_id, self.reason.encode()[:MAX_REASON]]


def decode_failed(frames: list[bytes]) -> Failed:
    """Frames after ``RPW1 FAILED``; the reason may be missing."""
    if not frames:
        raise ProtocolError("FAILED needs a job id")
    if len(frames) == 1:
        return Failed(frames[0])
    return Failed(frames[0], frames[1].decode("utf-8", "replace"))
