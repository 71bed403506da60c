"""``renderd-py worker``: workers on this machine for a broker elsewhere."""

import os

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
@click.option("--key", "key", metavar="FILE", default=None,
              help="this host's .key_secret file (renderd-py keygen) for a broker's workers_bind with CURVE")
@click.option("--broker-key", "broker_key", metavar="FILE", default=None,
              help="the broker's public .key file")
def command(cfg, connect, workers, key, broker_key):
    """Run a pool of render workers that connect to a broker over TCP.

    On another host, connect to the broker's [daemon] workers_bind with
    --key and --broker-key (CURVE); the worker's public key must be in the
    broker's [daemon] authorized_workers directory."""
    from ..farm import load_public, load_secret
    if (key is None) != (broker_key is None):
        raise click.UsageError("--key and --broker-key go together")
    curve = None
    if key is not None:
        load_secret(key)             # a bad file: one line, exit 2, before any worker starts
        load_public(broker_key)
        curve = (os.path.abspath(key), os.path.abspath(broker_key))
    setup_logging(cfg.daemon.log_level)
    raise SystemExit(run_pool(cfg, connect or cfg.daemon.broker, workers or cfg.daemon.workers, curve))
