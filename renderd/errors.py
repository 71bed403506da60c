"""One error family for the whole package.

The CLI turns a ``UsageError`` into exit status 2 and any other
``RenderdError`` into exit status 1, each as one line on stderr.
"""

from contextlib import contextmanager
from typing import Iterator


class RenderdError(Exception):
    """Root of every error this package raises on purpose."""


class UsageError(RenderdError, ValueError):
    """Bad input from the user: arguments, a request, an area file."""


@contextmanager
def file_errors_as_usage(what: str) -> Iterator[None]:
    """Turn an ``OSError`` of opening or reading ``what`` (e.g. "area file
    PATH", a file the user named) into a one-line ``UsageError``."""
    try:
        yield
    except FileNotFoundError:
        raise UsageError(f"{what} not found") from None
    except IsADirectoryError:
        raise UsageError(f"{what} is a directory") from None
    except OSError as e:
        raise UsageError(f"cannot read {what}: {e.strerror or e}") from None


class ConfigError(UsageError):
    """The configuration file is missing, unreadable or invalid.

    ``key`` names the offending key (``layer[2].maxzoom``) when there is one.
    """

    def __init__(self, message: str, key: str | None = None):
        self.key = key
        super().__init__(f"{key}: {message}" if key else message)


class TileError(UsageError):
    """A tile or metatile address outside the grid or the layer's zooms."""


class StyleError(RenderdError):
    """A style (Mapnik XML, raster source) could not be loaded."""


class RenderError(RenderdError):
    """Rendering a metatile failed."""


class StoreError(RenderdError, OSError):
    """The tile store could not be read or written."""


class ProtocolError(RenderdError):
    """A message on the wire is malformed or of an unknown version."""


class DaemonError(RenderdError):
    """The daemon answered with a failure, is busy, or did not answer."""


class BusyError(DaemonError):
    """The broker's queue for that priority is full."""


class TimeoutError_(DaemonError, TimeoutError):
    """No answer before the deadline."""


class CatalogError(UsageError):
    """The catalog cannot be used as asked: of another schema version, not a
    catalog, missing where it must exist, an invalid collection or key."""


class CatalogMissing(CatalogError):
    """There is no catalog where one must exist (it is not to be made)."""


class CatalogUnavailable(RenderdError, OSError):
    """The catalog's database cannot be reached or written (a runtime failure)."""


class PipelineError(UsageError):
    """A pipeline file that cannot run as written: not JSON, an unknown stage
    type or field, a missing field, a bad value, a stage taking what the one
    before does not give. The message is one line naming the stage
    (``stage 3 (write.mbtiles) takes tiles, stage 2 (write.catalog) gives
    datasets``)."""


class IngestError(UsageError):
    """A file or pattern given to ``ingest`` cannot go into the catalog:
    no raster, a corrupt TIFF, no CRS, a file name without a key's value."""
