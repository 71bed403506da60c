"""The shared catalog: PostgreSQL through psycopg2. The spatial index is a
``box`` column with a GiST index (core PostgreSQL, no PostGIS needed)."""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Any, Iterator

from ..errors import CatalogError, CatalogUnavailable
from .base import Catalog
from .model import Bounds

#: seconds to wait for the server to accept a connection
CONNECT_TIMEOUT = 10
#: the advisory lock a first open holds while it makes the tables
_SCHEMA_LOCK = 0x72707963  # "rpyc"


def redact(url: str) -> str:
    """``url`` without its password."""
    return re.sub(r"^(postgres(?:ql)?://[^:/@]*):[^@/]*@", r"\1:***@", url)


class PostgresCatalog(Catalog):
    ph = "%s"
    types = {"id": "BIGSERIAL PRIMARY KEY", "real": "DOUBLE PRECISION", "bigint": "BIGINT",
             "dataset_extra": ", bbox BOX"}

    def __init__(self, url: str, create: bool = True):
        import psycopg2
        self.url = redact(url)
        self.conn = None
        try:
            self.conn = psycopg2.connect(url, connect_timeout=CONNECT_TIMEOUT,
                                         application_name="renderd-py catalog")
        except psycopg2.OperationalError as e:
            raise CatalogUnavailable(f"cannot connect to {self.name}: {_first_line(e)}") from None
        except psycopg2.ProgrammingError as e:  # a malformed URL or option
            raise CatalogError(f"{self.name}: {_first_line(e)}") from None
        self.conn.autocommit = True
        try:
            self._open_schema(create)
        except BaseException:
            self.close()
            raise

    @contextmanager
    def _errors(self) -> Iterator[None]:
        import psycopg2
        try:
            yield
        except psycopg2.errors.UndefinedTable as e:
            raise CatalogError(f"{self.name} is incomplete: {_first_line(e)}") from None
        except psycopg2.Error as e:
            raise CatalogUnavailable(f"{self.name}: {_first_line(e)}") from None

    def _has_schema(self, cur: Any) -> bool:
        cur.execute("SELECT to_regclass('catalog_meta') IS NOT NULL")
        return bool(cur.fetchone()[0])

    def _lock_schema(self, cur: Any) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))

    def _index_schema(self) -> list[str]:
        return ["CREATE INDEX catalog_dataset_bbox ON catalog_dataset USING gist (bbox)"]

    def _index_put(self, cur: Any, dataset_id: int, box: Bounds) -> None:
        w, s, e, n = box
        cur.execute("UPDATE catalog_dataset SET bbox = box(point(%s, %s), point(%s, %s)) WHERE id = %s",
                    (w, s, e, n, dataset_id))

    def _index_delete(self, cur: Any, dataset_id: int) -> None:
        pass  # the box is a column of the row that goes

    def _index_join(self, box: Bounds) -> tuple[str, str, list[Any]]:
        w, s, e, n = box
        return " FROM catalog_dataset d", "d.bbox && box(point(?, ?), point(?, ?))", [w, s, e, n]


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
