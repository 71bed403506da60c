"""A blocking client of the broker (docs/protocol.md) for tools and tests.

``Client.render`` asks for one tile and waits; ``send``/``recv`` leave
requests in flight. ``Window`` keeps a bounded number of them in flight for
the tools that ask for many metatiles (seed, expire, export), and
``connect`` opens a client the tools can use, checked with a PING. The
client owns timeouts: a request whose deadline passes raises
``TimeoutError_`` here (or is failed by the window), and the broker drops it.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable, Protocol

import zmq

from . import protocol as p
from .errors import BusyError, DaemonError, ProtocolError, TimeoutError_, UsageError
from .tilemath import Meta, Tile


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


#: the broker's address, or a factory of connected clients (tests)
Endpoint = str | Callable[[], Client]


class StopFlag(Protocol):
    """What tells a long run to stop (a ``threading.Event``, the CLI's Ctrl-C handler)."""

    def is_set(self) -> bool: ...


class Never:
    """A ``StopFlag`` that is never set."""

    def is_set(self) -> bool:
        return False


# --- the window of requests in flight ------------------------------------

@dataclass
class _Pending:
    meta: Meta
    flags: frozenset[str]
    deadline: float
    busy: int = 0
    layer: str | None = None      # the tile set, when not the window's own
    tag: object = None            # what the callbacks get instead of the metatile

    @property
    def key(self) -> object:
        return self.meta if self.tag is None else self.tag


class Window:
    """Keeps up to ``size`` render requests in flight on one ``Client``.

    ``submit`` blocks while the window is full, handling replies as they
    come; ``finish`` waits for the rest (``drain`` for a while).
    ``on_ok(meta, reply)`` and ``on_fail(meta, reason)`` are called once per
    metatile. A request may name a tile set of its own (``submit(...,
    layer=)``) and a ``tag``, which the callbacks then get instead of the
    metatile (one window for the metatiles of several tile sets).
    """

    def __init__(self, client: Client, layer: str, priority: int, size: int,
                 timeout: float, on_ok: Callable[[Meta, p.Reply], None],
                 on_fail: Callable[[Meta, str], None], flags: Iterable[str] = ("nodata",),
                 stop: StopFlag | None = None, tick: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        if size < 1:
            raise UsageError("concurrency must be at least 1")
        self.client = client
        self.layer = layer
        self.priority = priority
        self.size = size
        self.timeout = timeout
        self.flags = frozenset(flags)
        self.on_ok = on_ok
        self.on_fail = on_fail
        self.stop = stop or Never()
        self.tick = tick
        self.clock = clock
        self.in_flight: dict[bytes, _Pending] = {}
        self.retry: deque[tuple[float, _Pending]] = deque()
        self.busy_answers = 0
        self.sent = 0
        #: with requests in flight and no answer for this long, PING the broker
        self.liveness = min(30.0, timeout)
        self._heard = clock()
        #: why the daemon cannot be used any more (shutting down, not answering)
        self.gone: str | None = None

    def __len__(self) -> int:
        return len(self.in_flight) + len(self.retry)

    def outstanding(self) -> int:
        """Requests still to be answered (BUSY retries count until the daemon is gone)."""
        return len(self.in_flight) + (0 if self.gone else len(self.retry))

    def _send(self, pend: _Pending) -> None:
        req = p.RenderRequest(self.client.next_id(), pend.layer or self.layer,
                              Tile(pend.meta.z, pend.meta.x0, pend.meta.y0),
                              self.priority, int(self.timeout * 1000), pend.flags)
        pend.deadline = self.clock() + self.timeout + 5.0
        self.client.send(req)
        self.in_flight[req.rid] = pend
        self.sent += 1

    def submit(self, meta: Meta, extra_flags: Iterable[str] = (), layer: str | None = None,
               tag: object = None) -> bool:
        """Queue ``meta`` (of tile set ``layer``, default the window's);
        False if stopped (or the daemon went) before it could be sent."""
        while len(self) >= self.size:
            if self.stop.is_set() or self.gone:
                return False
            self.poll(0.2)
        if self.stop.is_set() or self.gone:
            return False
        self._send(_Pending(meta, self.flags | frozenset(extra_flags), 0.0, layer=layer, tag=tag))
        return True

    def poll(self, wait: float) -> None:
        """Handle replies for up to ``wait`` seconds, resend BUSY ones, expire late ones."""
        now = self.clock()
        while self.retry and self.retry[0][0] <= now and not self.gone:
            _, pend = self.retry.popleft()
            self._send(pend)
        if self.retry:
            wait = min(wait, max(0.0, self.retry[0][0] - now))
        reply = self.client.recv(wait) if self.in_flight else (time.sleep(wait) if wait > 0 else None)
        while reply is not None:
            self._heard = self.clock()
            self._handle(reply)
            reply = self.client.recv(0)
        now = self.clock()
        if not self.in_flight:
            self._heard = now
        elif now - self._heard > self.liveness:
            self._check_broker()
        late = [rid for rid, pend in self.in_flight.items() if pend.deadline < now]
        for rid in late:
            pend = self.in_flight.pop(rid)
            self.on_fail(pend.key, f"no answer in {self.timeout:g}s")
        if self.tick is not None:
            self.tick()

    def _check_broker(self) -> None:
        """Long silence: a PING on a socket of its own (this one's replies
        must not be consumed) tells a slow render from a daemon gone. When
        it is gone, what is in flight is given up (not failed)."""
        probe = Client(self.client.endpoint)
        try:
            alive = probe.ping(min(5.0, max(1.0, self.liveness)))
        finally:
            probe.close()
        self._heard = self.clock()
        if not alive:
            self.gone = f"the daemon at {self.client.endpoint} stopped answering"
            self.abandon()

    def _handle(self, reply: p.Reply) -> None:
        pend = self.in_flight.pop(reply.rid, None)
        if pend is None:
            return  # an answer to a request already given up on
        if reply.status == p.OK:
            self.on_ok(pend.key, reply)
        elif reply.status == p.FAIL and reply.info == p.SHUTTING_DOWN:
            # not the metatile's fault: it is left for the next run
            self.gone = f"the daemon at {self.client.endpoint} is shutting down"
        elif reply.status == p.BUSY:
            self.busy_answers += 1
            pend.busy += 1
            backoff = min(5.0, 0.1 * (2 ** min(pend.busy, 6)))
            self.retry.append((self.clock() + backoff, pend))
        else:
            reason = reply.info.decode("utf-8", "replace") or reply.status.decode()
            self.on_fail(pend.key, f"{reply.status.decode()}: {reason}")

    def drain(self, limit: float | None = None) -> bool:
        """Wait for every request; True if none is left (False after ``limit`` s)."""
        end = None if limit is None else self.clock() + limit
        while self.outstanding():
            if end is not None and self.clock() >= end:
                return False
            self.poll(0.2 if end is None else max(0.0, min(0.2, end - self.clock())))
        return True

    def finish(self, grace: float = 0.0, waiting: Callable[[int], None] | None = None) -> list:
        """Wait for every answer unless stopped; once stopped, wait up to
        ``grace`` more seconds for what is in flight (``waiting(n)`` is told
        how many first), then abandon the rest. Returns what was abandoned."""
        while self.outstanding() and not self.stop.is_set():
            self.poll(0.2)
        if self.outstanding():
            if waiting is not None:
                waiting(self.outstanding())
            self.drain(grace)
        return self.abandon()

    def abandon(self) -> list:
        """Forget what is still pending (the broker may still render it);
        the metatiles (or tags) given up."""
        left = [pend.key for pend in self.in_flight.values()] + [pend.key for _, pend in self.retry]
        self.in_flight.clear()
        self.retry.clear()
        return left


def connect(endpoint: Endpoint, timeout: float = 5.0) -> Client:
    """A client of the broker at ``endpoint``, checked with a PING
    (``DaemonError`` if none answers); a factory is called instead."""
    if callable(endpoint):
        return endpoint()
    client = Client(endpoint)
    if not client.ping(timeout):
        client.close()
        raise DaemonError(f"no daemon answers at {endpoint} (is `renderd-py serve` running?)")
    return client
