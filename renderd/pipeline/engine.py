"""Running stages at once: one thread per stage, bounded queues between them.

Each stage reads the items of the stage before from an ``Inbox`` and puts
its own into an ``Outbox``; a queue between two stages holds a few items at
the most (``Stage.queue_size``), so a fast stage waits for a slow one and
memory stays flat however many items pass. CPU-bound work happens outside
the threads (COG conversion in processes of their own, renders in the
daemon's workers), so the stages overlap: a raster optimized is ingested
while the next is converted, a metatile rendered is written while the next
renders.

``Stop`` is set by Ctrl-C (the first: stop cleanly; the second quits at
once, see ``cli.pipeline``) and when a stage fails: every stage then stops
taking work, finishes what it has in hand and returns. The first failure is
what ``Runner.run`` reports (``Outcome.error``), as one line naming the
stage.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

from ..errors import RenderdError, UsageError

#: marks the end of a stage's items
END = object()


class Stop:
    """Set once: interrupted (Ctrl-C) or a stage failed."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.interrupted = False

    def is_set(self) -> bool:
        return self.event.is_set()

    def set(self) -> None:
        self.event.set()

    def interrupt(self) -> None:
        self.interrupted = True
        self.event.set()

    def wait(self, timeout: float) -> bool:
        return self.event.wait(timeout)


class Inbox:
    """The items of the stage before, as they come."""

    def __init__(self, q: "queue.Queue[Any] | None", stop: Stop):
        self.q = q
        self.stop = stop
        self.closed = q is None
        self.taken = 0

    def get(self, timeout: float | None = None) -> Any:
        """The next item; None if none came within ``timeout`` (or at the
        end, or when stopped: see ``closed`` and ``stop``)."""
        if self.closed or self.q is None:
            return None
        end = None if timeout is None else time.monotonic() + timeout
        while not self.stop.is_set():
            wait = 0.2 if end is None else min(0.2, max(0.0, end - time.monotonic()))
            try:
                item = self.q.get(timeout=wait) if wait > 0 else self.q.get_nowait()
            except queue.Empty:
                if end is not None and time.monotonic() >= end:
                    return None
                continue
            if item is END:
                self.closed = True
                return None
            self.taken += 1
            return item
        return None

    def poll(self) -> list[Any]:
        """Whatever items are there now, without waiting."""
        out = []
        while not self.closed and self.q is not None:
            try:
                item = self.q.get_nowait()
            except queue.Empty:
                break
            if item is END:
                self.closed = True
                break
            self.taken += 1
            out.append(item)
        return out

    def __iter__(self) -> Iterator[Any]:
        while True:
            item = self.get()
            if item is None:
                return
            yield item


class Outbox:
    """Where a stage puts its items (nowhere for the last stage: counted)."""

    def __init__(self, q: "queue.Queue[Any] | None", stop: Stop):
        self.q = q
        self.stop = stop
        self.given = 0

    def put(self, item: Any) -> bool:
        """Hand ``item`` on, waiting while the next stage is busy; False if
        stopped first (the item is dropped)."""
        self.given += 1
        if self.q is None:
            return True
        while True:
            try:
                self.q.put(item, timeout=0.2)
                return True
            except queue.Full:
                if self.stop.is_set():
                    return False

    def close(self) -> None:
        if self.q is None:
            return
        while True:
            try:
                self.q.put(END, timeout=0.2)
                return
            except queue.Full:
                if self.stop.is_set():
                    # the next stage stops on its own; make room for the end mark
                    try:
                        self.q.get_nowait()
                    except queue.Empty:
                        pass


@dataclass
class Failure:
    """The first failure of a run: which stage, and the error."""

    index: int
    label: str
    error: BaseException

    @property
    def usage(self) -> bool:
        return isinstance(self.error, UsageError)

    def message(self) -> str:
        e = self.error
        if isinstance(e, RenderdError):
            text = str(e)
        elif isinstance(e, OSError):
            text = e.strerror or str(e)
            if getattr(e, "filename", None):
                text = f"{e.filename}: {text}"
        else:
            text = f"internal error: {type(e).__name__}: {e} (run with --debug for a traceback)"
        return f"{self.label}: {text}"


@dataclass
class Outcome:
    seconds: float
    interrupted: bool
    failure: Failure | None = None
    #: failures a stage reports after it finished its work (metatiles that
    #: failed to render): the run went on, but did not do everything
    incomplete: list[str] = field(default_factory=list)


class Runner:
    """Runs ``stages`` (objects with ``label``, ``queue_size`` and
    ``run(inbox, outbox)``; ``incomplete()`` optional) until every one ends."""

    def __init__(self, stages: list[Any], stop: Stop):
        self.stages = stages
        self.stop = stop
        self.failure: Failure | None = None
        self._lock = threading.Lock()

    def _fail(self, i: int, e: BaseException) -> None:
        with self._lock:
            if self.failure is None:
                self.failure = Failure(i, self.stages[i].label, e)
        self.stop.set()

    def run(self, poll: float = 0.2) -> Outcome:
        t0 = time.monotonic()
        queues: list[queue.Queue[Any] | None] = [queue.Queue(maxsize=max(1, s.queue_size))
                                                  for s in self.stages[:-1]] + [None]
        threads = []
        for i, stage in enumerate(self.stages):
            inbox = Inbox(queues[i - 1] if i else None, self.stop)
            outbox = Outbox(queues[i], self.stop)

            def target(i: int = i, stage: Any = stage, inbox: Inbox = inbox, outbox: Outbox = outbox) -> None:
                try:
                    stage.run(inbox, outbox)
                except BaseException as e:  # noqa: BLE001 - reported as the run's failure
                    self._fail(i, e)
                finally:
                    outbox.close()

            t = threading.Thread(target=target, name=stage.label, daemon=True)
            threads.append(t)
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(poll)
        incomplete = []
        for s in self.stages:
            more = getattr(s, "incomplete", None)
            if more is not None:
                incomplete.extend(more())
        return Outcome(time.monotonic() - t0, self.stop.interrupted, self.failure, incomplete)
