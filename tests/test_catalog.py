"""The catalog's backends, SQLite and a real PostgreSQL, through one API:
rows round-trip, the spatial index, key filters, the change counter,
transactions, and a catalog of another schema version refused."""

from __future__ import annotations

import math
import sqlite3

import pytest

from renderd.catalog import SCHEMA_VERSION, BandStats, Dataset, open_catalog
from renderd.catalog.base import bounds_meet
from renderd.errors import CatalogError, CatalogUnavailable, UsageError


def make(path: str, keys: dict[str, str] | None = None, bounds=(10.0, 40.0, 11.0, 41.0),
         collection: str = "s2", nodata: float | None = 0.0, **kw) -> Dataset:
    fields = dict(
        collection=collection, keys=keys or {}, path=path, size=1234, mtime=1_700_000_000.123456,
        crs="EPSG:4326", transform=(0.001, 0.0, bounds[0], 0.0, -0.001, bounds[3]), width=1000,
        height=1000, bands=1, dtype="uint16", nodata=nodata, block=(256, 512), overviews=(2, 4, 8),
        bounds=bounds, wgs84_bounds=bounds,
        footprint={"type": "Polygon", "coordinates": [[[bounds[0], bounds[1]], [bounds[2], bounds[1]],
                                                       [bounds[2], bounds[3]], [bounds[0], bounds[1]]]]},
        valid_share=0.75,
        stats=(BandStats(min=1.0, max=4000.0, mean=1999.5, stdev=12.25, count=750_000,
                         percentiles={p: float(p * 40) for p in range(1, 100)}, counts=(1, 2, 3)),),
        metadata={"tags": {"AREA_OR_POINT": "Area"}, "note": "é"}, ingested=1_700_000_100.5)
    fields.update(kw)
    return Dataset(**fields)


def test_rows_round_trip_every_field(catalog_url):
    ds = make("/d/a.tif", {"date": "2020-06-01", "band": "B04"}, nodata=float("nan"))
    with open_catalog(catalog_url) as cat:
        i = cat.upsert(ds)
        got = cat.get("s2", {"band": "B04", "date": "2020-06-01"})
    assert got.id == i
    assert math.isnan(got.nodata)
    for name in Dataset.__dataclass_fields__:
        if name not in ("id", "nodata"):
            assert getattr(got, name) == getattr(ds, name), name
    assert got.band_stats(1).percentile(50) == 2000.0


def test_upsert_replaces_the_row_of_the_same_path(catalog_url):
    with open_catalog(catalog_url) as cat:
        a = cat.upsert(make("/d/a.tif", {"date": "1"}))
        b = cat.upsert(make("/d/a.tif", {"date": "2"}, size=99))
        assert a == b
        assert cat.count("s2") == 1
        assert cat.get("s2", {"date": "1"}) is None
        assert cat.get("s2", {"date": "2"}).size == 99
        assert cat.key_values("s2", ["date"]) == [("2",)]


def test_find_uses_the_spatial_index_and_keys_ordered_by_path(catalog_url):
    with open_catalog(catalog_url) as cat:
        cat.upsert(make("/d/c.tif", {"band": "B04"}, bounds=(10, 40, 11, 41)))
        cat.upsert(make("/d/a.tif", {"band": "B04"}, bounds=(10.5, 40.5, 12, 42)))
        cat.upsert(make("/d/b.tif", {"band": "B08"}, bounds=(10, 40, 11, 41)))
        cat.upsert(make("/d/far.tif", {"band": "B04"}, bounds=(100, -10, 101, -9)))
        cat.upsert(make("/d/other.tif", {"band": "B04"}, bounds=(10, 40, 11, 41), collection="x"))
        paths = lambda ds: [d.path for d in ds]  # noqa: E731
        assert paths(cat.find("s2", {}, (10.8, 40.8, 10.9, 40.9))) == ["/d/a.tif", "/d/b.tif", "/d/c.tif"]
        assert paths(cat.find("s2", {"band": "B04"}, (10.8, 40.8, 10.9, 40.9))) == ["/d/a.tif", "/d/c.tif"]
        assert paths(cat.find("s2", {"band": "B04"}, (11.5, 41.5, 13, 43))) == ["/d/a.tif"]
        assert paths(cat.find("s2", {}, (50, 0, 60, 10))) == []
        # sharing an edge is not meeting
        assert paths(cat.find("s2", {"band": "B08"}, (11, 40, 12, 41))) == []
        assert paths(cat.find("s2", {"band": "nope"})) == []
        assert paths(cat.find("s2")) == ["/d/a.tif", "/d/b.tif", "/d/c.tif", "/d/far.tif"]


def test_find_across_the_antimeridian(catalog_url):
    with open_catalog(catalog_url) as cat:
        cat.upsert(make("/d/across.tif", bounds=(179.0, -17.0, -179.0, -16.0)))
        cat.upsert(make("/d/east.tif", bounds=(-179.5, -17.0, -178.5, -16.0)))
        cat.upsert(make("/d/greenwich.tif", bounds=(-1.0, -17.0, 1.0, -16.0)))
        names = lambda box: [d.path for d in cat.find("s2", None, box)]  # noqa: E731
        assert names((179.5, -16.8, 179.9, -16.2)) == ["/d/across.tif"]
        assert names((-179.9, -16.8, -179.4, -16.2)) == ["/d/across.tif", "/d/east.tif"]
        assert names((-0.5, -16.8, 0.5, -16.2)) == ["/d/greenwich.tif"]
        assert names((178.0, -16.8, -179.4, -16.2)) == ["/d/across.tif", "/d/east.tif"]


def test_bounds_meet():
    assert bounds_meet((0, 0, 2, 2), (1, 1, 3, 3))
    assert not bounds_meet((0, 0, 1, 1), (1, 0, 2, 1))
    assert bounds_meet((170, 0, -170, 1), (175, 0.5, 176, 0.7))
    assert not bounds_meet((170, 0, -170, 1), (0, 0, 10, 1))


def test_footprint_filter(catalog_url):
    tri = {"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [0, 10], [0, 0]]]}
    with open_catalog(catalog_url) as cat:
        cat.upsert(make("/d/tri.tif", bounds=(0, 0, 10, 10), footprint=tri))
        assert len(cat.find("s2", None, (8, 8, 9, 9))) == 1
        assert cat.find("s2", None, (8, 8, 9, 9), footprint=True) == []
        assert len(cat.find("s2", None, (1, 1, 2, 2), footprint=True)) == 1


def test_list_count_key_values_collections(catalog_url):
    with open_catalog(catalog_url) as cat:
        for date in ("2020-07", "2020-06"):
            for band in ("B08", "B04"):
                cat.upsert(make(f"/d/{date}_{band}.tif", {"date": date, "band": band}))
        cat.upsert(make("/d/x.tif", {"date": "2021"}, collection="other"))
        assert [d.path for d in cat.list("s2", limit=2, offset=1)] == ["/d/2020-06_B08.tif", "/d/2020-07_B04.tif"]
        assert [d.path for d in cat.list("s2", offset=3)] == ["/d/2020-07_B08.tif"]
        assert [d.path for d in cat.list("s2", {"band": "B04"})] == ["/d/2020-06_B04.tif", "/d/2020-07_B04.tif"]
        assert cat.count("s2") == 4 and cat.count("s2", {"date": "2020-06"}) == 2
        assert cat.key_values("s2", ["date"]) == [("2020-06",), ("2020-07",)]
        assert cat.key_values("s2", ["band", "date"], {"date": "2020-07"}) == [("B04", "2020-07"), ("B08", "2020-07")]
        assert cat.key_values("s2", ["nokey"]) == []
        assert cat.key_values("s2", []) == [()]
        assert cat.key_values("empty", []) == []
        assert cat.collections() == ["other", "s2"]


def test_version_moves_on_every_write(catalog_url):
    with open_catalog(catalog_url) as cat:
        assert cat.version() == 0 and cat.version("s2") == 0
        cat.upsert(make("/d/a.tif"))
        cat.upsert(make("/d/a.tif"))
        cat.upsert(make("/d/b.tif", collection="x"))
        assert (cat.version(), cat.version("s2"), cat.version("x")) == (3, 2, 1)
        with open_catalog(catalog_url) as other:   # another connection sees it at once
            assert other.version() == 3
            assert other.remove("s2", "/d/a.tif")
            assert not other.remove("s2", "/d/a.tif")
        assert cat.version() == 4 and cat.count("s2") == 0
        assert cat.find("s2", None, (0, 0, 50, 50)) == []


def test_a_failed_write_leaves_the_catalog_unchanged(catalog_url, monkeypatch):
    with open_catalog(catalog_url) as cat:
        cat.upsert(make("/d/a.tif", {"date": "1"}))

        def boom(*a, **k):
            raise RuntimeError("disk on fire")

        monkeypatch.setattr(type(cat), "_index_put", boom)
        with pytest.raises(RuntimeError):
            cat.upsert(make("/d/a.tif", {"date": "2"}, size=5))
        with pytest.raises(RuntimeError):
            cat.upsert(make("/d/new.tif"))
        monkeypatch.undo()
        assert [(d.path, d.keys, d.size) for d in cat.list("s2")] == [("/d/a.tif", {"date": "1"}, 1234)]
        assert cat.version() == 1
        assert len(cat.find("s2", None, (10.2, 40.2, 10.3, 40.3))) == 1


def test_bad_keys_and_collections_are_refused(catalog_url):
    with open_catalog(catalog_url) as cat:
        with pytest.raises(UsageError, match="collection name 'a/b'"):
            cat.upsert(make("/d/a.tif", collection="a/b"))
        with pytest.raises(UsageError, match="'..'"):
            cat.upsert(make("/d/a.tif", {"date": ".."}))
        with pytest.raises(UsageError, match="key 'a b'"):
            cat.find("s2", {"a b": "1"})
        assert cat.count("s2") == 0


def set_schema_version(url: str, v: str) -> None:
    with open_catalog(url) as cat:
        with cat._write() as cur:
            cur.execute(cat._q("UPDATE catalog_meta SET value = ? WHERE name = 'schema_version'"), [v])


def test_a_catalog_of_another_schema_version_is_refused(catalog_url):
    set_schema_version(catalog_url, str(SCHEMA_VERSION + 1))
    with pytest.raises(CatalogError, match=f"schema version {SCHEMA_VERSION + 1}; this renderd-py reads "
                                           f"version {SCHEMA_VERSION}"):
        open_catalog(catalog_url)
    assert isinstance(CatalogError("x"), UsageError)


def test_missing_catalog_without_create(tmp_path, pg_catalog_url):
    with pytest.raises(CatalogError, match="does not exist"):
        open_catalog(f"sqlite://{tmp_path}/none.sqlite", create=False)
    assert not (tmp_path / "none.sqlite").exists()
    with pytest.raises(CatalogError, match="holds no renderd-py catalog"):
        open_catalog(pg_catalog_url, create=False)


def test_not_a_database(tmp_path):
    (tmp_path / "junk.sqlite").write_bytes(b"this is no database, it is a file of text" * 100)
    with pytest.raises(CatalogError, match="is not an SQLite database"):
        open_catalog(f"sqlite://{tmp_path}/junk.sqlite")


def test_sqlite_is_wal_with_an_rtree(tmp_path):
    url = f"sqlite://{tmp_path}/c.sqlite"
    open_catalog(url).close()
    con = sqlite3.connect(tmp_path / "c.sqlite")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    sql = con.execute("SELECT sql FROM sqlite_master WHERE name = 'catalog_rtree'").fetchone()[0]
    assert "rtree" in sql.lower()
    con.close()


def test_postgres_bbox_has_a_gist_index(pg_catalog_url):
    import psycopg2
    open_catalog(pg_catalog_url).close()
    con = psycopg2.connect(pg_catalog_url)
    with con.cursor() as cur:
        cur.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'catalog_dataset_bbox'")
        assert "gist (bbox)" in cur.fetchone()[0]
    con.close()


def test_unreachable_postgres_is_a_runtime_failure():
    from tests.fixtures.servers import free_port
    with pytest.raises(CatalogUnavailable, match="cannot connect to catalog postgresql://u:\\*\\*\\*@127.0.0.1"):
        open_catalog(f"postgresql://u:secret@127.0.0.1:{free_port()}/db")
    assert not isinstance(CatalogUnavailable("x"), UsageError)


def test_unknown_url_scheme():
    with pytest.raises(CatalogError, match="is not sqlite://PATH"):
        open_catalog("mysql://x")


def test_sqlite_find_is_driven_by_the_rtree(tmp_path):
    with open_catalog(f"sqlite://{tmp_path}/c.sqlite") as cat:
        for i in range(50):
            cat.upsert(make(f"/d/{i:02d}.tif", {"band": "B04"}, bounds=(i, 0, i + 1, 1)))
        sql = []
        cat.conn.set_trace_callback(sql.append)
        assert [d.path for d in cat.find("s2", {"band": "B04"}, (10.2, 0.2, 10.4, 0.4))] == ["/d/10.tif"]
        cat.conn.set_trace_callback(None)
        select = next(s for s in sql if s.startswith("SELECT"))
        plan = [r[3] for r in cat.conn.execute(f"EXPLAIN QUERY PLAN {select}")]
    assert plan[0].startswith("SCAN r VIRTUAL TABLE"), plan           # the R*Tree first,
    assert any("d USING INTEGER PRIMARY KEY" in p for p in plan), plan  # then rows by id
