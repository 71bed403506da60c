"""The catalog of raster datasets (the header cache).

``open_catalog(url)`` opens the catalog of ``[catalog] url``: SQLite
(``sqlite:///abs/path``, the embedded default) or PostgreSQL
(``postgresql://user@host:port/db``), the same schema and API on both (see
``base.Catalog``). ``model`` holds the records it keeps.
"""

from __future__ import annotations

from ..errors import CatalogError
from .base import SCHEMA_VERSION, Catalog
from .model import BandStats, Bounds, Dataset

__all__ = ["BandStats", "Bounds", "Catalog", "Dataset", "SCHEMA_VERSION", "open_catalog"]


def open_catalog(url: str, create: bool = True) -> Catalog:
    """The catalog at ``url``; its tables are made on first use when
    ``create`` (else a catalog that does not exist is a ``CatalogMissing``,
    a ``CatalogError``).
    A catalog of another schema version is a ``CatalogError``; a database
    that cannot be reached a ``CatalogUnavailable``."""
    if url.startswith("sqlite://"):
        from .sqlite import SQLiteCatalog
        return SQLiteCatalog(url, create)
    if url.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresCatalog
        return PostgresCatalog(url, create)
    raise CatalogError(f"catalog URL {url!r} is not sqlite://PATH or postgresql://USER@HOST:PORT/DB")
