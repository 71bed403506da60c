"""``renderd-py optimize-rasters``: rasters to Cloud-Optimized GeoTIFFs."""

from __future__ import annotations

import click

from ..errors import RenderdError, UsageError


def _bounds(ctx: click.Context, param: click.Parameter, value: str | None):
    if value is None:
        return None
    from ..tools.cog import parse_bounds

    try:
        return parse_bounds(value)
    except UsageError as e:
        raise click.BadParameter(str(e).split(": ", 1)[-1]) from None


@click.command("optimize-rasters")
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@click.option("-o", "--output", "outdir", required=True, metavar="DIR",
              help="directory for the COGs (created if missing)")
@click.option("--compression", default="auto", show_default=True,
              type=click.Choice(["auto", "deflate", "zstd", "lzw", "jpeg", "webp"]),
              help="auto: lossless ZSTD with a predictor; jpeg and webp for 8-bit imagery only")
@click.option("--quality", type=int, default=None, metavar="Q",
              help="jpeg/webp quality 1-100 (default 85; webp 100 is lossless)")
@click.option("--reproject", is_flag=True, help="warp onto the Web Mercator (EPSG:3857) tile grid")
@click.option("--overwrite", is_flag=True, help="rewrite outputs that are already current")
@click.option("--jobs", "-j", type=click.IntRange(1, 256), default=1, show_default=True,
              help="files converted at once, one process each")
@click.option("--blocksize", type=int, default=512, show_default=True,
              help="tile size of the COG in pixels (128..4096, a power of two)")
@click.option("--resampling", default="auto", show_default=True,
              type=click.Choice(["auto", "nearest", "average", "bilinear", "cubic", "lanczos",
                                 "mode"]),
              help="for overviews and --reproject; auto: average/bilinear, nearest if paletted")
@click.option("--band", "bands", type=click.IntRange(min=1), multiple=True, metavar="N",
              help="keep only this band (repeat for several, in order)")
@click.option("--bounds", callback=_bounds, default=None, metavar="W,S,E,N",
              help="georeference for sources that have none (with --crs)")
@click.option("--crs", default=None, metavar="CRS",
              help="CRS for sources that have none, e.g. EPSG:4326")
@click.option("--name", "out_name", default=None, metavar="NAME.tif",
              help="output file name (one FILE only; default: the source's name .tif)")
@click.option("--quiet", "-q", is_flag=True, help="no progress output")
def command(files: tuple[str, ...], outdir: str, compression: str, quality: int | None,
            reproject: bool, overwrite: bool, jobs: int, blocksize: int, resampling: str,
            bands: tuple[int, ...], bounds, crs: str | None, out_name: str | None,
            quiet: bool) -> None:
    """Write Cloud-Optimized GeoTIFFs of FILE... into DIR.

    FILE is any raster GDAL reads, netCDF variables as netcdf:FILE:VAR.
    Outputs that are already current (same source, same options) are
    skipped. A bad file is reported and the others go on; the exit status
    is then non-zero (2 when every failure was bad input, else 1).
    """
    from ..tools.cog import Failure, Options, optimize
    from ..tools.progress import Progress

    if out_name is not None:
        if "/" in out_name or out_name in (".", "..") or not out_name.strip():
            raise click.BadParameter("a file name, not a path", param_hint="--name")
        if not out_name.lower().endswith((".tif", ".tiff")):
            out_name += ".tif"
    opts = Options(compression=compression, quality=quality, reproject=reproject,
                   blocksize=blocksize, resampling=resampling, bands=bands, bounds=bounds,
                   crs=crs)
    progress = Progress(len(files), "files", enabled=not quiet and len(files) > 1)

    single = len(files) == 1  # a single bad file: its one line and its own exit status

    def done(r) -> None:
        if isinstance(r, Failure) and not single:
            line = f"renderd-py: error: {r.message}"
            if progress.enabled:
                progress.note(line)
            else:
                click.echo(line, err=True)
        progress.advance(extra=r.source)

    try:
        summary = optimize(list(files), outdir, opts, overwrite=overwrite, jobs=jobs,
                           out_name=out_name, on_done=done,
                           debug=bool((click.get_current_context().obj or {}).get("debug")))
    finally:
        progress.finish()
    if single and summary.failures:
        f = summary.failures[0]
        raise (UsageError if f.usage else RenderdError)(f.message)
    for line in summary.lines():
        click.echo(line)
    if summary.failures:
        n, total = len(summary.failures), len(files)
        msg = f"{n} of {total} files failed"
        raise (UsageError if all(f.usage for f in summary.failures) else RenderdError)(msg)
