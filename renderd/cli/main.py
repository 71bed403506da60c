"""``renderd-py``: a thin click front; one module per subcommand.

Errors become one line on stderr: exit status 2 for bad arguments or
configuration, 1 for runtime failures, 130 when interrupted (the names are
in ``renderd.exitcodes``); a traceback only with ``--debug``.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

from .. import __version__
from ..errors import RenderdError, UsageError
from ..exitcodes import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE

#: subcommand -> module under renderd.cli defining ``command``
COMMANDS = {
    "serve": "serve",
    "worker": "worker",
    "keygen": "keygen",
    "up": "up",
    "nginx-conf": "nginx_conf",
    "render": "render",
    "seed": "seed",
    "expire": "expire",
    "coverage": "coverage",
    "export": "export",
    "stats": "stats",
    "import-meta": "import_meta",
    "gc": "gc",
    "status": "status",
    "optimize-rasters": "optimize_rasters",
    "ingest": "ingest",
    "datasets": "datasets",
    "pipeline": "pipeline",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(n for n, m in COMMANDS.items() if _exists(m))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        mod = COMMANDS.get(name)
        if mod is None or not _exists(mod):
            return None
        return importlib.import_module(f"renderd.cli.{mod}").command


def _exists(mod: str) -> bool:
    return os.path.exists(os.path.join(os.path.dirname(__file__), f"{mod}.py"))


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-c", "--config", "config_path", metavar="CONFIG", default=None,
              help="configuration file")
@click.option("--debug", is_flag=True, help="show tracebacks")
@click.version_option(__version__, prog_name="renderd-py")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, debug: bool) -> None:
    """A map tile stack: render daemon, tile stores and tools."""
    ctx.obj = {"config_path": config_path, "debug": debug}


def _fail(msg: str, code: int) -> None:
    click.echo(f"renderd-py: {msg}", err=True)
    sys.exit(code)


def main(argv: list[str] | None = None) -> Any:
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        return cli.main(args=args, prog_name="renderd-py", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.Abort:
        _fail("aborted", EXIT_INTERRUPTED)
    except click.ClickException as e:
        if debug:
            raise
        ctx = getattr(e, "ctx", None)
        where = f" {ctx.command_path.split(' ', 1)[-1]}" if ctx and " " in ctx.command_path else ""
        _fail(f"error{':' if not where else where + ':'} {e.format_message()}", e.exit_code)
    except UsageError as e:
        if debug:
            raise
        _fail(f"error: {e}", EXIT_USAGE)
    except RenderdError as e:
        if debug:
            raise
        _fail(f"error: {e}", EXIT_FAILURE)
    except KeyboardInterrupt:
        _fail("interrupted", EXIT_INTERRUPTED)
    except BrokenPipeError:
        sys.exit(EXIT_FAILURE)
    except Exception as e:  # a bug: still one line unless --debug
        if debug:
            raise
        _fail(f"internal error: {type(e).__name__}: {e} (run with --debug for a traceback)", EXIT_FAILURE)


if __name__ == "__main__":
    sys.exit(main())
