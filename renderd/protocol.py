"""Wire protocol v1 (docs/protocol.md): frames, encode, decode. No sockets.

Decoders raise ``ProtocolError`` for anything malformed; callers log and
drop, never crash.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from .errors import ProtocolError
from .tilemath import Meta, Tile, valid_tile

CLIENT = b"RPY1"
WORKER = b"RPW1"

# client commands and replies
RENDER = b"RENDER"
PING = b"PING"
PONG = b"PONG"
STATUS = b"STATUS"
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
FLAGS = frozenset({"meta", "nodata", "force"})
MAX_ID = 64
MAX_TIMEOUT_MS = 7 * 24 * 3600 * 1000
_TILE_RE = re.compile(rb"(\d{1,2})/(\d{1,10})/(\d{1,10})")
_NAME_RE = re.compile(rb"[A-Za-z0-9_\-]{1,64}")


def _int(raw: bytes, what: str, lo: int, hi: int) -> int:
    if not raw.isdigit() or len(raw) > 12:
        raise ProtocolError(f"bad {what} {raw[:20]!r}")
    v = int(raw)
    if not lo <= v <= hi:
        raise ProtocolError(f"{what} {v} out of range")
    return v


def _name(raw: bytes) -> str:
    if not _NAME_RE.fullmatch(raw):
        raise ProtocolError(f"bad layer name {raw[:20]!r}")
    return raw.decode("ascii")


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

    def frames(self) -> list[bytes]:
        m = self.meta
        return [WORKER, JOB, self.job_id, self.layer.encode(), f"{m.z}/{m.x0}/{m.y0}".encode(),
                str(m.n).encode(), str(self.timeout_ms).encode()]


def decode_job(frames: list[bytes]) -> Job:
    """Frames after ``RPW1 JOB``."""
    if len(frames) < 5:
        raise ProtocolError("JOB needs id, layer, metatile, size, timeout")
    t = parse_tile(frames[2])
    n = _int(frames[3], "metatile size", 1, 64)
    return Job(frames[0], _name(frames[1]), Meta(t.z, t.x, t.y, n),
               _int(frames[4], "timeout", 0, MAX_TIMEOUT_MS))


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
