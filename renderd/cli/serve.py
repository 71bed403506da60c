"""``renderd-py serve``: the broker and the worker pool in the foreground."""

import logging
import os

import click

from ..daemon import Daemon
from .options import config_option


def setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper()),
                        format=f"renderd-py[{os.getpid()}]: %(levelname)s %(message)s")


@click.command()
@config_option
@click.option("--workers", type=click.IntRange(0, 256), default=None,
              help="worker processes (default: [daemon] workers)")
def command(cfg, workers):
    """Run the broker and the worker pool in the foreground."""
    setup_logging(cfg.daemon.log_level)
    daemon = Daemon(cfg)
    if workers is not None:
        daemon.pool.size = workers
    raise SystemExit(daemon.run())
