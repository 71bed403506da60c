"""A tiny, dependency-free ``sd_notify`` for ``Type=notify`` services.

systemd passes ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract
namespace); a service reports its state by sending ``KEY=VALUE`` lines to it
in one datagram. Outside systemd the variable is unset and every call here
does nothing and returns False. Nothing here ever raises: a daemon must not
die because its supervisor went away.

Only the main process may notify (the unit has ``NotifyAccess=main``), so
call these from the arbiter, never from a worker.
"""

from __future__ import annotations

import os
import socket
import time

__all__ = ["notify", "ready", "reloading", "stopping", "status", "watchdog"]


def _address(raw: str | None) -> str | None:
    if not raw:
        return None
    if raw[0] == "@":  # abstract namespace: a leading NUL byte on the wire
        return "\0" + raw[1:]
    if raw[0] == "/":
        return raw
    return None  # vsock: and other schemes are not spoken here


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``"READY=1\\nSTATUS=serving"``) to systemd.

    Returns True if the datagram was sent, False outside systemd or on any
    error.
    """
    addr = _address(os.environ.get("NOTIFY_SOCKET"))
    if addr is None:
        return False
    try:
        data = state.encode("utf-8")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(addr)
            sock.sendall(data)
        return True
    except Exception:  # noqa: BLE001 - never raise into the daemon
        return False


def _monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def ready(status_text: str | None = None) -> bool:
    """Start-up (or a reload) finished: the service is serving."""
    msg = "READY=1"
    if status_text:
        msg += f"\nSTATUS={status_text}"
    return notify(msg)


def reloading(status_text: str | None = None) -> bool:
    """A reload (HUP) began; send ``ready()`` when it is done."""
    msg = f"RELOADING=1\nMONOTONIC_USEC={_monotonic_usec()}"
    if status_text:
        msg += f"\nSTATUS={status_text}"
    return notify(msg)


def stopping(status_text: str | None = None) -> bool:
    """Shutdown began."""
    msg = "STOPPING=1"
    if status_text:
        msg += f"\nSTATUS={status_text}"
    return notify(msg)


def status(text: str) -> bool:
    """A one-line status shown by ``systemctl status``."""
    return notify(f"STATUS={text}")


def watchdog() -> bool:
    """Keep-alive ping for units with ``WatchdogSec=``."""
    return notify("WATCHDOG=1")
