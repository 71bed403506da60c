"""What both catalog backends do, in SQL they share.

A backend (``sqlite.SQLiteCatalog``, ``postgres.PostgresCatalog``) says how
to connect, how its tables are made, how placeholders are written, and how
its spatial index is kept and asked; everything else is here. Every write
is one transaction: a failure leaves the catalog as it was.

Tables (docs/raster.md, "The catalog"):

- ``catalog_meta(name, value)``: ``schema_version`` and ``changes`` (a counter
  every write moves on, so readers notice ingests with one cheap query).
- ``catalog_collection(name, changes, updated)``: per collection.
- ``catalog_dataset``: one row per dataset, ``codec.COLUMNS``; unique
  ``(collection, path)``.
- ``catalog_key(dataset_id, collection, name, value)``: the keys again, one
  row each, indexed by ``(collection, name, value)`` for ``where`` filters.
- the spatial index on the WGS84 bounds: an R*Tree table (SQLite) or a
  ``box`` column with a GiST index (PostgreSQL).
"""

from __future__ import annotations

import abc
import time
from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Sequence

from ..errors import CatalogError, CatalogMissing
from ..tilesets import check_key_value, valid_key_value
from . import codec
from .model import Bounds, Dataset

#: The layout of the tables; a catalog of another version is refused.
SCHEMA_VERSION = 1

_COLUMNS = "SELECT d.id, " + ", ".join(f"d.{c}" for c in codec.COLUMNS)
_FROM = " FROM catalog_dataset d"
_SELECT = _COLUMNS + _FROM


def index_box(wgs84: Bounds) -> Bounds:
    """The box the spatial index holds for these bounds: a dataset across
    the antimeridian (west > east) takes every longitude."""
    w, s, e, n = wgs84
    return (-180.0, s, 180.0, n) if w > e else (w, s, e, n)


def bounds_meet(ds: Bounds, q: Bounds) -> bool:
    """Whether two lon/lat boxes share more than an edge; either may cross
    the antimeridian (west > east)."""
    if not (ds[1] < q[3] and q[1] < ds[3]):
        return False

    def spans(b: Bounds) -> list[tuple[float, float]]:
        return [(b[0], 180.0), (-180.0, b[2])] if b[0] > b[2] else [(b[0], b[2])]

    return any(a0 < b1 and b0 < a1 for a0, a1 in spans(ds) for b0, b1 in spans(q))


def check_collection(name: str) -> str:
    """``name`` if it may name a collection, else ``CatalogError``."""
    if not valid_key_value(name):
        raise CatalogError(f"collection name {name!r} is not valid ([A-Za-z0-9_.-]{{1,64}}, not . or ..)")
    return name


def _check_where(where: Mapping[str, str] | None) -> dict[str, str]:
    where = dict(where or {})
    for k, v in where.items():
        check_key_value(k, "key")
        check_key_value(v, f"value of key {k!r}")
    return where


class Catalog(abc.ABC):
    """The catalog of raster datasets; a context manager (``close`` on exit)."""

    #: the placeholder of the backend's driver
    ph = "?"
    url: str

    # --- what a backend provides ----------------------------------------
    #: the open DB-API connection, in autocommit mode (transactions are explicit)
    conn: Any
    #: how a write transaction starts
    begin_sql = "BEGIN"

    @abc.abstractmethod
    def _errors(self) -> Any:
        """A context manager turning the driver's errors into ours."""

    @abc.abstractmethod
    def _index_put(self, cur: Any, dataset_id: int, box: Bounds) -> None:
        """Keep the spatial index of a dataset row that was just written."""

    @abc.abstractmethod
    def _index_delete(self, cur: Any, dataset_id: int) -> None: ...

    @abc.abstractmethod
    def _index_join(self, box: Bounds) -> tuple[str, str, list[Any]]:
        """(FROM clause, WHERE condition, the condition's parameters)
        selecting the rows of ``catalog_dataset d`` whose index box meets
        ``box`` (edges included: the exact test follows), the index first."""

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def __enter__(self) -> "Catalog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- SQL helpers -----------------------------------------------------
    def _q(self, sql: str) -> str:
        return sql if self.ph == "?" else sql.replace("%", "%%").replace("?", self.ph)

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._errors():
            cur = self.conn.cursor()
            try:
                cur.execute(self._q(sql), list(params))
                return cur.fetchall()
            finally:
                cur.close()

    @contextmanager
    def _write(self) -> Iterator[Any]:
        with self._errors():
            cur = self.conn.cursor()
            try:
                cur.execute(self.begin_sql)
                yield cur
                cur.execute("COMMIT")
            except BaseException:
                try:
                    cur.execute("ROLLBACK")
                except Exception:  # the connection is gone: nothing was committed
                    pass
                raise
            finally:
                cur.close()

    def _exec(self, cur: Any, sql: str, params: Sequence[Any] = ()) -> None:
        cur.execute(self._q(sql), list(params))

    def _bump(self, cur: Any, collection: str) -> None:
        self._exec(cur, "UPDATE catalog_meta SET value = CAST(CAST(value AS BIGINT) + 1 AS TEXT) "
                        "WHERE name = 'changes'")
        self._exec(cur, "INSERT INTO catalog_collection (name, changes, updated) VALUES (?, 1, ?) "
                        "ON CONFLICT (name) DO UPDATE SET changes = catalog_collection.changes + 1, "
                        "updated = excluded.updated", [collection, time.time()])

    @staticmethod
    def _where_sql(where: Mapping[str, str]) -> tuple[str, list[Any]]:
        sql, params = "", []
        for k, v in sorted(where.items()):
            sql += (" AND EXISTS (SELECT 1 FROM catalog_key k WHERE k.dataset_id = d.id"
                    " AND k.name = ? AND k.value = ?)")
            params += [k, v]
        return sql, params

    # --- schema ----------------------------------------------------------
    #: SQL types of the backend: "id" (the primary key), "real", "bigint"
    types: dict[str, str] = {}

    @abc.abstractmethod
    def _has_schema(self, cur: Any) -> bool:
        """Whether the database holds the ``catalog_meta`` table."""

    @abc.abstractmethod
    def _index_schema(self) -> list[str]:
        """Statements making the spatial index (after the tables)."""

    def _lock_schema(self, cur: Any) -> None:
        """Keep a concurrent first open from making the tables too."""

    def _tables(self) -> list[str]:
        t = self.types
        return [
            "CREATE TABLE catalog_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
            f"CREATE TABLE catalog_collection (name TEXT PRIMARY KEY, changes {t['bigint']} NOT NULL, "
            f"updated {t['real']} NOT NULL)",
            f"CREATE TABLE catalog_dataset (id {t['id']}, collection TEXT NOT NULL, path TEXT NOT NULL, "
            f"keys TEXT NOT NULL, size {t['bigint']} NOT NULL, mtime {t['real']} NOT NULL, "
            "crs TEXT NOT NULL, transform TEXT NOT NULL, width INTEGER NOT NULL, "
            "height INTEGER NOT NULL, bands INTEGER NOT NULL, dtype TEXT NOT NULL, nodata TEXT, "
            "block_rows INTEGER NOT NULL, block_cols INTEGER NOT NULL, overviews TEXT NOT NULL, "
            + "".join(f"{c} {t['real']} NOT NULL, " for c in ("minx", "miny", "maxx", "maxy",
                                                             "west", "south", "east", "north"))
            + f"footprint TEXT, valid_share {t['real']} NOT NULL, stats TEXT NOT NULL, "
            f"metadata TEXT NOT NULL, ingested {t['real']} NOT NULL{t.get('dataset_extra', '')}, "
            "UNIQUE (collection, path))",
            f"CREATE TABLE catalog_key (dataset_id {t['bigint']} NOT NULL "
            "REFERENCES catalog_dataset (id) ON DELETE CASCADE, collection TEXT NOT NULL, "
            "name TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (dataset_id, name))",
            "CREATE INDEX catalog_key_lookup ON catalog_key (collection, name, value, dataset_id)",
            "CREATE INDEX catalog_dataset_keys ON catalog_dataset (collection, keys)",
            *self._index_schema(),
            "INSERT INTO catalog_meta (name, value) VALUES ('schema_version', "
            f"'{SCHEMA_VERSION}'), ('changes', '0')",
        ]

    def _open_schema(self, create: bool) -> None:
        """Check the schema version, making the tables first if there are
        none and ``create``."""
        with self._errors():
            cur = self.conn.cursor()
            try:
                if not self._has_schema(cur):
                    if not create:
                        raise CatalogMissing(f"{self.name} holds no renderd-py catalog "
                                           "(renderd-py ingest makes one)")
                    with self._write() as wcur:
                        self._lock_schema(wcur)
                        if not self._has_schema(wcur):
                            for stmt in self._tables():
                                wcur.execute(stmt)
                cur.execute("SELECT value FROM catalog_meta WHERE name = 'schema_version'")
                got = cur.fetchone()
            finally:
                cur.close()
        found = None if got is None else got[0]
        if found is None:
            raise CatalogError(f"{self.name} has a catalog_meta table without a schema version: "
                               "not a renderd-py catalog")
        try:
            v = int(found)
        except ValueError:
            raise CatalogError(f"{self.name} has a malformed schema version {found!r}") from None
        if v != SCHEMA_VERSION:
            raise CatalogError(f"{self.name} is a catalog of schema version {v}; this renderd-py "
                               f"reads version {SCHEMA_VERSION}")

    @property
    def name(self) -> str:
        """How messages name the catalog (no password)."""
        return f"catalog {self.url}"

    # --- writing ---------------------------------------------------------
    def upsert(self, ds: Dataset) -> int:
        """Insert ``ds``, or replace the row of the same collection and path;
        its id."""
        check_collection(ds.collection)
        _check_where(ds.keys)
        row = codec.to_row(ds)
        cols = ", ".join(codec.COLUMNS)
        marks = ", ".join("?" for _ in codec.COLUMNS)
        update = ", ".join(f"{c} = excluded.{c}" for c in codec.COLUMNS[2:])
        with self._write() as cur:
            self._exec(cur, f"INSERT INTO catalog_dataset ({cols}) VALUES ({marks}) "
                            f"ON CONFLICT (collection, path) DO UPDATE SET {update} RETURNING id", row)
            dataset_id = int(cur.fetchone()[0])
            self._exec(cur, "DELETE FROM catalog_key WHERE dataset_id = ?", [dataset_id])
            for k, v in sorted(ds.keys.items()):
                self._exec(cur, "INSERT INTO catalog_key (dataset_id, collection, name, value) "
                                "VALUES (?, ?, ?, ?)", [dataset_id, ds.collection, k, v])
            self._index_put(cur, dataset_id, index_box(ds.wgs84_bounds))
            self._bump(cur, ds.collection)
        return dataset_id

    def remove(self, collection: str, path: str) -> bool:
        """Delete the dataset of ``collection`` at ``path``; False if there is none."""
        with self._write() as cur:
            self._exec(cur, "SELECT id FROM catalog_dataset WHERE collection = ? AND path = ?",
                       [collection, path])
            got = cur.fetchone()
            if got is None:
                return False
            dataset_id = int(got[0])
            self._exec(cur, "DELETE FROM catalog_key WHERE dataset_id = ?", [dataset_id])
            self._index_delete(cur, dataset_id)
            self._exec(cur, "DELETE FROM catalog_dataset WHERE id = ?", [dataset_id])
            self._bump(cur, collection)
        return True

    # --- reading ---------------------------------------------------------
    def get(self, collection: str, keys: Mapping[str, str]) -> Dataset | None:
        """The dataset of ``collection`` with exactly ``keys`` (the first by
        path if several have them, as in a mosaic), or None."""
        rows = self._all(f"{_SELECT} WHERE d.collection = ? AND d.keys = ? ORDER BY d.path, d.id",
                         [collection, codec.keys_text(dict(keys))])
        return codec.from_row(rows[0]) if rows else None

    def get_path(self, collection: str, path: str) -> Dataset | None:
        """The dataset of ``collection`` read from file ``path``, or None."""
        rows = self._all(f"{_SELECT} WHERE d.collection = ? AND d.path = ?", [collection, path])
        return codec.from_row(rows[0]) if rows else None

    def find(self, collection: str, where: Mapping[str, str] | None = None,
             bbox_wgs84: Bounds | None = None, footprint: bool = False) -> list[Dataset]:
        """The datasets of ``collection`` whose keys include ``where`` and
        whose WGS84 bounds meet ``bbox_wgs84`` (more than an edge), ordered
        by path. The spatial index picks them; no file is opened. With
        ``footprint``, those whose footprint does not meet the box are left
        out too."""
        clause, params = self._where_sql(_check_where(where))
        source, cond, box_params = _FROM, "", []
        if bbox_wgs84 is not None:
            source, cond, box_params = self._index_join(index_box(tuple(bbox_wgs84)))
            cond = f" AND {cond}"
        rows = self._all(f"{_COLUMNS}{source} WHERE d.collection = ?{cond}{clause} ORDER BY d.path, d.id",
                         [collection] + box_params + params)
        out = [codec.from_row(r) for r in rows]
        if bbox_wgs84 is None:
            return out
        out = [d for d in out if bounds_meet(d.wgs84_bounds, tuple(bbox_wgs84))]
        if footprint:
            out = [d for d in out if _footprint_meets(d, tuple(bbox_wgs84))]
        return out

    def list(self, collection: str, where: Mapping[str, str] | None = None,
             limit: int | None = None, offset: int = 0) -> list[Dataset]:
        """A page of the datasets of ``collection`` matching ``where``, by path."""
        clause, params = self._where_sql(_check_where(where))
        page = ""
        if limit is not None:
            page = f" LIMIT {int(limit)} OFFSET {int(offset)}"
        elif offset:
            page = f" LIMIT -1 OFFSET {int(offset)}" if self.ph == "?" else f" OFFSET {int(offset)}"
        rows = self._all(f"{_SELECT} WHERE d.collection = ?{clause} ORDER BY d.path, d.id{page}",
                         [collection] + params)
        return [codec.from_row(r) for r in rows]

    def files(self, collection: str) -> dict[str, tuple[int, float]]:
        """Path -> (size, mtime) of every dataset of ``collection``, as ingested."""
        rows = self._all("SELECT path, size, mtime FROM catalog_dataset WHERE collection = ?", [collection])
        return {r[0]: (int(r[1]), float(r[2])) for r in rows}

    def count(self, collection: str, where: Mapping[str, str] | None = None) -> int:
        clause, params = self._where_sql(_check_where(where))
        rows = self._all(f"SELECT COUNT(*) FROM catalog_dataset d WHERE d.collection = ?{clause}",
                         [collection] + params)
        return int(rows[0][0])

    def key_values(self, collection: str, key_names: Sequence[str],
                   where: Mapping[str, str] | None = None) -> list[tuple[str, ...]]:
        """The distinct combinations of values of ``key_names`` among the
        datasets of ``collection`` matching ``where``, sorted: the key
        combinations a layer with ``keys = key_names`` can serve."""
        names = [check_key_value(k, "key") for k in key_names]
        if not names:
            return [()] if self.count(collection, where) else []
        joins = "".join(f" JOIN catalog_key k{i} ON k{i}.dataset_id = d.id AND k{i}.name = ?"
                        for i in range(len(names)))
        values = ", ".join(f"k{i}.value" for i in range(len(names)))
        clause, params = self._where_sql(_check_where(where))
        rows = self._all(f"SELECT DISTINCT {values} FROM catalog_dataset d{joins} "
                         f"WHERE d.collection = ?{clause} ORDER BY {values}",
                         names + [collection] + params)
        return [tuple(r) for r in rows]

    def collections(self) -> list[str]:
        """Names of the collections that hold datasets, sorted."""
        return [r[0] for r in self._all("SELECT DISTINCT collection FROM catalog_dataset ORDER BY collection")]

    def version(self, collection: str | None = None) -> int:
        """A counter every write moves on (of ``collection`` only, if given):
        compare it with the last one seen to notice ingests."""
        if collection is None:
            rows = self._all("SELECT value FROM catalog_meta WHERE name = 'changes'")
        else:
            rows = self._all("SELECT changes FROM catalog_collection WHERE name = ?", [collection])
        return int(rows[0][0]) if rows else 0


def _footprint_meets(ds: Dataset, box: Bounds) -> bool:
    if ds.footprint is None:
        return True
    from shapely.geometry import box as shapely_box, shape
    geom = shape(ds.footprint)
    if box[0] > box[2]:
        return (geom.intersects(shapely_box(box[0], box[1], 180, box[3]))
                or geom.intersects(shapely_box(-180, box[1], box[2], box[3])))
    return geom.intersects(shapely_box(*box))
