"""``renderd-py keygen``: a CURVE key pair for the render farm."""

from __future__ import annotations

import click


@click.command("keygen")
@click.option("-o", "--output-dir", "outdir", metavar="DIR", required=True,
              type=click.Path(file_okay=False), help="where to write NAME.key and NAME.key_secret")
@click.argument("name")
def command(outdir: str, name: str) -> None:
    """Write a CURVE key pair: DIR/NAME.key (public) and DIR/NAME.key_secret.

    The broker's pair goes in [daemon] curve_secret, its .key to every
    remote worker (--broker-key); each worker's .key goes into the broker's
    [daemon] authorized_workers directory (then HUP the daemon). Existing
    files are never overwritten."""
    from ..farm import keygen
    public, secret = keygen(outdir, name)
    click.echo(f"wrote {public} (public) and {secret} (secret, mode 0600)")
