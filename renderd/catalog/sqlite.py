"""The embedded catalog: one SQLite file (stdlib ``sqlite3``), in WAL mode so
readers (workers, the front) never wait for an ingest, with an R*Tree on
the WGS84 bounds."""

from __future__ import annotations

import os
import sqlite3
from contextlib import contextmanager
from typing import Any, Iterator

from ..errors import CatalogError, CatalogMissing, CatalogUnavailable
from .base import Catalog
from .model import Bounds

#: seconds a writer waits for another writer's transaction
BUSY_TIMEOUT = 30.0


def sqlite_path(url: str) -> str:
    """The file of ``sqlite:///abs/path`` or ``sqlite://relative`` (to the
    working directory; the configuration makes it relative to its file)."""
    if not url.startswith("sqlite://") or len(url) <= len("sqlite://"):
        raise CatalogError(f"{url!r} is not sqlite://PATH")
    path = url[len("sqlite://"):]
    return path if path == ":memory:" else os.path.abspath(path)


class SQLiteCatalog(Catalog):
    types = {"id": "INTEGER PRIMARY KEY", "real": "REAL", "bigint": "INTEGER"}
    begin_sql = "BEGIN IMMEDIATE"

    def __init__(self, url: str, create: bool = True):
        self.url = url
        self.path = sqlite_path(url)
        self.conn = None
        if self.path != ":memory:" and not os.path.exists(self.path):
            if not create:
                raise CatalogMissing(f"{self.name} does not exist (renderd-py ingest makes it)")
            try:
                os.makedirs(os.path.dirname(self.path), exist_ok=True)
            except OSError as e:
                raise CatalogUnavailable(f"cannot make the directory of {self.name}: {e.strerror}") from None
        with self._errors():
            self.conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None)
            try:
                self.conn.execute("PRAGMA journal_mode = WAL")
                self.conn.execute("PRAGMA synchronous = NORMAL")
                self.conn.execute("PRAGMA foreign_keys = ON")
            except BaseException:
                self.close()
                raise
        try:
            self._open_schema(create)
        except BaseException:
            self.close()
            raise

    @property
    def name(self) -> str:
        return f"catalog {self.path}"

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            if "not a database" in msg or "malformed" in msg:
                raise CatalogError(f"{self.name} is not an SQLite database ({msg})") from None
            if "no such module: rtree" in msg:
                raise CatalogError("this SQLite has no R*Tree module; the catalog needs one") from None
            if isinstance(e, sqlite3.OperationalError) and "no such table" in msg:
                raise CatalogError(f"{self.name} is incomplete: {msg}") from None
            raise CatalogUnavailable(f"{self.name}: {msg}") from None

    def _has_schema(self, cur: Any) -> bool:
        cur.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'catalog_meta'")
        return cur.fetchone() is not None

    def _index_schema(self) -> list[str]:
        return ["CREATE VIRTUAL TABLE catalog_rtree USING rtree (id, west, east, south, north)"]

    def _index_put(self, cur: Any, dataset_id: int, box: Bounds) -> None:
        w, s, e, n = box
        cur.execute("INSERT OR REPLACE INTO catalog_rtree (id, west, east, south, north) "
                    "VALUES (?, ?, ?, ?, ?)", (dataset_id, w, e, s, n))

    def _index_delete(self, cur: Any, dataset_id: int) -> None:
        cur.execute("DELETE FROM catalog_rtree WHERE id = ?", (dataset_id,))

    def _index_join(self, box: Bounds) -> tuple[str, str, list[Any]]:
        w, s, e, n = box
        # CROSS JOIN: SQLite keeps this order, the R*Tree drives
        return (" FROM catalog_rtree r CROSS JOIN catalog_dataset d ON d.id = r.id",
                "r.west <= ? AND r.east >= ? AND r.south <= ? AND r.north >= ?", [e, w, n, s])
