"""``renderd-py pipeline check|run FILE.json``: JSON pipelines (docs/pipelines.md)."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from ..exitcodes import EXIT_INTERRUPTED
from .seed import Interrupts


def _config(ctx: click.Context, path: str | None, pipeline: Any) -> Any:
    """The configuration, loaded only when a stage needs it."""
    if not pipeline.needs_config:
        return None
    from .. import config as _config_mod
    return _config_mod.load(path or (ctx.find_root().obj or {}).get("config_path"))


def _checked(ctx: click.Context, file: str, config_path: str | None) -> tuple[Any, Any]:
    from ..pipeline import check_config, load
    pipeline = load(file)
    cfg = _config(ctx, config_path, pipeline)
    if cfg is not None:
        check_config(pipeline, cfg)
    return pipeline, cfg


config_opt = click.option("-c", "--config", "config_path", metavar="CONFIG", default=None,
                          help="configuration file (default: $RENDERD_PY_CONFIG, then "
                               "/etc/renderd-py/renderd-py.toml); read only when a stage needs it")


@click.group("pipeline")
def command() -> None:
    """Check or run a JSON pipeline of stages (docs/pipelines.md)."""


@command.command("check")
@config_opt
@click.argument("file", metavar="FILE.json")
@click.pass_context
def check(ctx: click.Context, config_path: str | None, file: str) -> None:
    """Check FILE.json: its JSON, every stage's type and fields, what each
    stage takes and gives, and what it names in the configuration."""
    pipeline, _ = _checked(ctx, file, config_path)
    click.echo(f"pipeline {file}: {len(pipeline.stages)} stages, ok")
    for stage, flow in zip(pipeline.stages, pipeline.flows):
        what = flow.kind
        if flow.keys:
            what += f" (keys {', '.join(flow.keys)})"
        if flow.collection:
            what += f" of collection {flow.collection}"
        if flow.layer:
            what += f" of {'tile set' if flow.tileset and '/' in flow.tileset else 'layer'} {flow.layer}"
        click.echo(f"  {stage.label} gives {what}")


class _Interrupts(Interrupts):
    """First Ctrl-C (or TERM): the pipeline stops cleanly; a second one quits now
    (seed's handlers, with the pipeline's own stop and a note to the user)."""

    def __init__(self, stop: Any, note: Any) -> None:
        super().__init__()
        self.stop = stop
        self.note = note

    def _handle(self, signum: int, frame: Any) -> None:
        if self.stop.is_set():
            raise KeyboardInterrupt
        self.note("stopping: finishing what is in hand (Ctrl-C again to quit now)")
        self.stop.interrupt()


@command.command("run")
@config_opt
@click.argument("file", metavar="FILE.json")
@click.option("--dry-run", is_flag=True, help="print what each stage would read, write or render, "
                                              "and do nothing")
@click.option("--quiet", "-q", is_flag=True, help="no progress output")
@click.option("--json", "as_json", is_flag=True, help="print the summary (or the plan) as JSON")
@click.pass_context
def run(ctx: click.Context, config_path: str | None, file: str, dry_run: bool, quiet: bool,
        as_json: bool) -> None:
    """Run FILE.json: every stage at once, each on the items the one before
    gives as they come; a second run skips what is done."""
    from ..errors import RenderdError, UsageError
    from ..pipeline.engine import Runner, Stop
    from ..pipeline.stages import Env, build

    pipeline, cfg = _checked(ctx, file, config_path)
    stop = Stop()
    debug = bool((ctx.find_root().obj or {}).get("debug"))
    env = Env(cfg, stop, debug=debug, dry_run=dry_run, progress=not (quiet or dry_run))
    stages = build(pipeline, env)
    if dry_run:
        plans = [(s, s.plan()) for s in stages]
        if as_json:
            click.echo(json.dumps({"pipeline": file, "stages": [
                {"stage": s.stage.index, "type": s.stage.type, "plan": lines} for s, lines in plans]}))
            return
        click.echo(f"pipeline {file}: {len(stages)} stages (dry run: nothing is read, written or rendered)")
        for s, lines in plans:
            first, *rest = lines or [""]
            click.echo(f"  {s.label}: {first}")
            for line in rest:
                click.echo(f"    {line}")
        return

    def note(msg: str) -> None:
        if env.progress:
            click.echo(msg, err=True)

    with _Interrupts(stop, note):
        outcome = Runner(stages, stop).run()
    for s in stages:
        s.progress.finish()
    if as_json:
        click.echo(json.dumps({"pipeline": file, "seconds": round(outcome.seconds, 3),
                               "interrupted": outcome.interrupted,
                               "error": outcome.failure.message() if outcome.failure else None,
                               "incomplete": outcome.incomplete,
                               "stages": [s.report() for s in stages]}))
    elif not quiet:
        state = ("stopped" if outcome.interrupted else "failed" if outcome.failure
                 else "incomplete" if outcome.incomplete else "done")
        click.echo(f"pipeline {state}: {file} in {outcome.seconds:.1f} s")
        for s in stages:
            first, *rest = s.lines() or ["not started"]
            click.echo(f"  {s.label}: {first}")
            for line in rest:
                click.echo(f"  {line}")
        for s in stages:
            for w in getattr(s, "warnings", []) or []:
                click.echo(f"renderd-py: {w}", err=True)
    f = outcome.failure
    if f is not None:
        if debug and not isinstance(f.error, RenderdError):
            raise f.error
        raise (UsageError if f.usage else RenderdError)(f.message())
    if outcome.interrupted:
        click.echo("renderd-py: pipeline stopped; run it again to continue", err=True)
        sys.exit(EXIT_INTERRUPTED)
    if outcome.incomplete:
        raise RenderdError("; ".join(outcome.incomplete))
