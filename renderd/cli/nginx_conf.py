"""``renderd-py nginx-conf``: the nginx configuration for a CONFIG."""

from __future__ import annotations

import click

from .. import nginx
from .options import config_option


@click.command("nginx-conf")
@config_option
@click.option("-o", "--output-dir", "outdir", metavar="DIR", default=None,
              type=click.Path(file_okay=False),
              help="write nginx.conf (or renderd-py.site), the runtime JSON and the "
                   "TileJSON files into DIR instead of printing the configuration")
@click.option("--site", is_flag=True,
              help="a site file for Debian's nginx (/etc/nginx/sites-enabled) instead of "
                   "a whole nginx.conf")
@click.option("--prefix", metavar="DIR", default=None,
              help="nginx's runtime directory (logs, pid, temp files); default: DIR of -o, "
                   "else [http] prefix, else beside the store")
@click.option("--user", metavar="USER", default=None,
              help="user (and group) of nginx's worker processes when started as root "
                   "(default: [http] user, else www-data or nobody if they can read what nginx "
                   "serves, else root)")
@click.option("--router", "router", metavar="NODE,...", default=None,
              help="instead, a router on [http] listen that sends each metatile's tiles to one of "
                   "these cache nodes (HOST:PORT of each node's nginx) by consistent hashing")
def command(cfg, outdir, site, prefix, user, router):
    """Print the nginx configuration for CONFIG, or write it with -o DIR.

    A whole nginx.conf runs our own nginx in the foreground:
    `nginx -p PREFIX -c PREFIX/nginx.conf` (what `renderd-py up` does).
    With --site, a file for Debian's stock nginx to include instead.
    With --router, an nginx in front of several nodes (docs/http.md).
    """
    if router is not None:
        if site:
            raise click.UsageError("--router writes a whole nginx.conf, not --site")
        nodes = nginx.parse_nodes(router)
        if outdir:
            if prefix and click.format_filename(prefix) != click.format_filename(outdir):
                raise click.UsageError("with -o, the router keeps everything in DIR; leave out --prefix")
            path = nginx.write_router(cfg, nodes, outdir, user=user)
            click.echo(f"wrote {path}; run: nginx -p {path.parent} -c {path}", err=True)
        else:
            click.echo(nginx.render_router(cfg, nodes, prefix or nginx.default_prefix(cfg), user=user),
                       nl=False)
        return
    if site:
        if prefix or user:
            raise click.UsageError("--prefix and --user apply to a whole nginx.conf, not --site")
        if outdir:
            path = nginx.write_site(cfg, outdir)
            click.echo(f"wrote {path} and the runtime files beside it; enable it with "
                       f"ln -s {path} /etc/nginx/sites-enabled/renderd-py", err=True)
        else:
            click.echo(nginx.render_site(cfg), nl=False)
        return
    if outdir:
        where = prefix or outdir
        if prefix and click.format_filename(prefix) != click.format_filename(outdir):
            raise click.UsageError("with -o, a whole nginx.conf keeps everything in DIR; "
                                   "leave out --prefix or give the same directory")
        path = nginx.write_conf(cfg, where, user=user)
        click.echo(f"wrote {path}; run: nginx -p {path.parent} -c {path}", err=True)
    else:
        click.echo(nginx.render_conf(cfg, prefix or nginx.default_prefix(cfg), user=user), nl=False)
