"""A blocking client of the broker (docs/protocol.md) for tools and tests.

``render`` asks for one tile and waits; ``send``/``recv`` keep a window of
requests in flight (seeding). The client owns timeouts: a request whose
deadline passes raises ``TimeoutError_`` here, and the broker drops it.
"""

from __future__ import annotations

import itertools
import time
from typing import Iterable

import zmq

from . import protocol as p
from .errors import BusyError, DaemonError, ProtocolError, TimeoutError_, UsageError
from .tilemath import Tile


class Client:
    def __init__(self, endpoint: str, timeout: float = 30.0, context: zmq.Context | None = None):
        self.endpoint = endpoint
        self.timeout = timeout
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SNDHWM, 100_000)
        self._sock.setsockopt(zmq.RCVHWM, 100_000)
        try:
            self._sock.connect(endpoint)
        except zmq.ZMQError as e:
            self._sock.close()
            raise UsageError(f"cannot connect to broker {endpoint}: {e}") from None
        self._ids = itertools.count(1)

    def close(self) -> None:
        self._sock.close(0)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- windowed use ----------------------------------------------------
    def next_id(self) -> bytes:
        return str(next(self._ids)).encode()

    def send(self, req: p.RenderRequest) -> bytes:
        """Queue a request without waiting; returns its id."""
        if not req.rid:
            req.rid = self.next_id()
        self._sock.send_multipart(req.frames(), copy=False)
        return req.rid

    def recv(self, timeout: float | None = None) -> p.Reply | None:
        """The next reply, or None if nothing came within ``timeout`` seconds."""
        ms = None if timeout is None else max(0, int(timeout * 1000))
        if not self._sock.poll(ms, zmq.POLLIN):
            return None
        frames = self._sock.recv_multipart()
        try:
            return p.decode_reply(frames)
        except ProtocolError:
            return None

    # --- one request at a time -------------------------------------------
    def _wait(self, rid: bytes, timeout: float) -> p.Reply:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError_(f"no answer from the broker at {self.endpoint} in {timeout:g}s")
            reply = self.recv(left)
            if reply is not None and reply.rid == rid:
                return reply

    def render(self, layer: str, tile: Tile, priority: int = p.MISSING,
               timeout: float | None = None, flags: Iterable[str] = ()) -> p.Reply:
        """Render the metatile holding ``tile``; the reply carries the tile."""
        timeout = self.timeout if timeout is None else timeout
        req = p.RenderRequest(self.next_id(), layer, tile, priority, int(timeout * 1000), frozenset(flags))
        self.send(req)
        reply = self._wait(req.rid, timeout)
        if reply.status == p.BUSY:
            raise BusyError(f"broker busy: {reply.info.decode(errors='replace')}")
        if reply.status != p.OK:
            raise DaemonError(f"{reply.status.decode()}: {reply.info.decode(errors='replace')}")
        return reply

    def ping(self, timeout: float = 2.0) -> bool:
        rid = self.next_id()
        self._sock.send_multipart(p.ping_frames(rid))
        try:
            return self._wait(rid, timeout).status == p.PONG
        except TimeoutError_:
            return False

    def status(self, timeout: float = 5.0) -> dict:
        rid = self.next_id()
        self._sock.send_multipart(p.status_frames(rid))
        reply = self._wait(rid, timeout)
        try:
            return p.decode_status(reply.info)
        except ProtocolError:
            raise DaemonError("broker sent a malformed STATUS") from None
