"""``renderd-py status``: what the running daemon's broker is doing."""

from __future__ import annotations

import json
from typing import Any

import click

from ..errors import DaemonError
from .options import config_option


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="print the broker's status as JSON")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=3.0, show_default=True,
              metavar="SECONDS", help="how long to wait for the daemon")
@config_option
def command(cfg, as_json: bool, timeout: float) -> None:
    """Show queue depths, workers and counters of the running daemon.

    Exit status 1 if the daemon does not answer.
    """
    from ..client import Client

    endpoint = cfg.daemon.broker
    try:
        with Client(endpoint, timeout=timeout) as client:
            status = client.status(timeout=timeout)
    except DaemonError as e:
        raise DaemonError(f"the daemon does not answer at {endpoint} ({e})") from None
    if as_json:
        click.echo(json.dumps(status, indent=2, sort_keys=True))
    else:
        click.echo(format_status(status))


def _scalar(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return str(v)


def _table(rows: list[dict], indent: str = "  ") -> list[str]:
    cols: list[str] = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    cells = [[c.upper() for c in cols]] + [[_scalar(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    return [indent + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in cells]


def format_status(status: dict) -> str:
    """A short human table of a broker STATUS reply (any shape is printed)."""
    status = dict(status)
    lines: list[str] = []
    seconds = status.pop("render_seconds", None)
    counts = status.pop("render_count", None)
    lists = {k: status.pop(k) for k in list(status)
             if isinstance(status[k], list) and all(isinstance(r, dict) for r in status[k])}
    width = max([len(k) for k in status] + [len("render time")])
    for key, value in status.items():
        if isinstance(value, dict):
            text = ", ".join(f"{k} {_scalar(v) if not isinstance(v, (dict, list)) else json.dumps(v)}"
                             for k, v in value.items()) or "-"
        elif isinstance(value, list):
            text = ", ".join(_scalar(v) for v in value) or "-"
        else:
            text = _scalar(value)
        lines.append(f"{key.replace('_', ' ').ljust(width)}  {text}")
    if isinstance(seconds, dict) and isinstance(counts, dict):
        parts = []
        for name, n in counts.items():
            s = float(seconds.get(name, 0.0) or 0.0)
            if n:
                parts.append(f"{name} {n} in {s:.1f} s (mean {s / n:.2f} s)")
            else:
                parts.append(f"{name} 0")
        lines.append(f"{'render time'.ljust(width)}  {', '.join(parts)}")
    for key, rows in lists.items():
        label = key.replace("_", " ")
        lines.append(f"{label}:" if rows else f"{label}: none")
        if rows:
            lines.extend(_table(rows))
    return "\n".join(lines)
