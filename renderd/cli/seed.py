"""``renderd-py seed``: render every metatile of an area through the daemon."""

from __future__ import annotations

import json
import signal
import threading
from typing import Any

import click

from .. import tilesets
from ..exitcodes import EXIT_INTERRUPTED
from ..tilemath import parse_zoom_range
from .options import area_options, config_option, layer_option, zoom_option


class Interrupts:
    """First Ctrl-C (or TERM) asks the seed to stop cleanly; a second one quits now."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._old: dict[int, Any] = {}

    def is_set(self) -> bool:
        return self.event.is_set()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.event.is_set():
            raise KeyboardInterrupt
        self.event.set()

    def __enter__(self) -> "Interrupts":
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


@click.command("seed")
@config_option
@layer_option()
@zoom_option()
@area_options
@click.option("--missing", "mode", flag_value="missing", default=True,
              help="render metatiles not stored or marked stale (default)")
@click.option("--force", "mode", flag_value="force", help="render every metatile")
@click.option("--older-than", "older_than", metavar="ISO8601", default=None,
              help="also render metatiles rendered before this time (naive times are UTC)")
@click.option("--concurrency", "-n", type=click.IntRange(1, 10000), default=None,
              help="requests in flight (default: twice [daemon] workers, at least 4)")
@click.option("--timeout", type=click.FloatRange(min=0.001), default=600.0, show_default=True,
              help="seconds to wait for one metatile")
@click.option("--max-failures", default="0", show_default=True, metavar="N|P%",
              help="exit with status 1 when more metatiles fail than this")
@click.option("--grace", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="seconds Ctrl-C waits for renders in flight")
@click.option("--quiet", "-q", is_flag=True, help="no progress output")
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
def command(cfg, layer: str, zoom: str, bbox: str | None, area: str | None,
            mode: str, older_than: str | None, concurrency: int | None, timeout: float,
            max_failures: str, grace: float, quiet: bool, as_json: bool) -> None:
    """Ask the daemon for every metatile of an area (resumable)."""
    from ..store import open_store
    from ..tools.area import Area
    from ..tools.progress import Progress
    from ..tools.purge import front_purge
    from ..tools.seed import SeedOptions, parse_older_than, seed

    lyr = tilesets.layer_of(cfg, layer)
    zooms = parse_zoom_range(zoom, lyr.minzoom, lyr.maxzoom)
    region = Area.from_options(bbox, area)
    if older_than is not None:
        if mode == "force":
            raise click.BadParameter("--force and --older-than exclude each other", param_hint="--older-than")
        mode = "older"
    opts = SeedOptions(mode=mode, older_than=parse_older_than(older_than) if older_than else None,
                       concurrency=concurrency or max(4, 2 * cfg.daemon.workers),
                       timeout=timeout, max_failures=max_failures, grace=grace)
    progress = Progress(0, "metatiles", enabled=not quiet)
    # nginx's hot copies of metatiles rendered again are dropped
    front = front_purge(cfg, lyr.name, "delete")
    try:
        with open_store(cfg.store) as store, Interrupts() as stop:
            summary = seed(store, cfg.daemon.broker, lyr.name, region, zooms, opts,
                           meta=lyr.metatile, progress=progress, stop=stop, changed=front.add)
    finally:
        front.close()
    if as_json:
        click.echo(json.dumps({**summary.as_dict(), "hot_cache": front.report()}))
    else:
        for line in summary.lines():
            click.echo(line)
        if front.purged and front.error is None:
            click.echo(front.line())
    if front.warning():
        click.echo(f"renderd-py: {front.warning()}", err=True)
    if summary.gone:
        from ..errors import DaemonError
        raise DaemonError(f"{summary.gone}; run the same command again when it is back")
    if summary.over_threshold(max_failures):
        from ..errors import RenderdError
        raise RenderdError(f"{summary.failed} metatiles failed (more than --max-failures {max_failures})")
    if summary.interrupted:
        click.echo("renderd-py: seed stopped; run the same command again to continue", err=True)
        raise SystemExit(EXIT_INTERRUPTED)
