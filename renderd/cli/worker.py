"""``renderd-py worker``: workers on this machine for a broker elsewhere."""

import click

from ..daemon import run_pool
from .options import config_option
from .serve import setup_logging


@click.command()
@config_option
@click.option("--connect", metavar="ENDPOINT", default=None,
              help="broker address, e.g. tcp://render-broker:5555 (default: [daemon] broker)")
@click.option("--workers", type=click.IntRange(1, 256), default=None,
              help="worker processes (default: [daemon] workers)")
def command(cfg, connect, workers):
    """Run a pool of render workers that connect to a broker over TCP."""
    setup_logging(cfg.daemon.log_level)
    raise SystemExit(run_pool(cfg, connect or cfg.daemon.broker, workers or cfg.daemon.workers))
