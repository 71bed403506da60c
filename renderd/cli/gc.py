"""``renderd-py gc``: delete blobs no metatile references any more."""

from __future__ import annotations

import json

import click

from ..store import open_store
from ..tools.importmeta import format_bytes
from .options import config_option


@click.command("gc")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
@config_option
def command(cfg, as_json: bool) -> None:
    """Collect garbage: delete the blobs that no metatile index uses.

    Safe while the daemon runs: blobs a writer is adding are spared.
    """
    with open_store(cfg.store) as store:
        st = store.collect_garbage()
    if as_json:
        click.echo(json.dumps({"blobs_seen": st.blobs_seen, "blobs_deleted": st.blobs_deleted,
                               "bytes_freed": st.bytes_freed}))
    else:
        click.echo(f"examined {st.blobs_seen} blobs, deleted {st.blobs_deleted}, "
                   f"freed {format_bytes(st.bytes_freed)}")
