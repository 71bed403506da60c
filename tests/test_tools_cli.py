"""The tools' command lines: bad arguments exit 2 with one line on stderr;
stats and coverage print exactly what the store holds. Run in-process
(renderd.cli.main.main) against a real disk store; no daemon needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from renderd.cli.main import main
from renderd.store.disk import DiskStore
from renderd.store.index import MetaIndex, content_hash
from renderd.tilemath import Meta

DATA = Path(__file__).parent / "data"


@pytest.fixture
def conf(tmp_path):
    (tmp_path / "style.xml").write_text("<Map/>")
    p = tmp_path / "renderd.toml"
    p.write_text(f"""
[daemon]
broker = "tcp://127.0.0.1:9"
[store]
kind = "disk"
path = "{tmp_path / 'cache'}"
[[layer]]
name = "osm"
style = "style.xml"
minzoom = 0
maxzoom = 12
""")
    return str(p)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(list(argv))
        raise SystemExit(0)
    out, err = capsys.readouterr()
    return e.value.code or 0, out, err


def bad_geojson(tmp_path: Path) -> dict[str, str]:
    files = {"notjson": "{oops", "line": '{"type": "LineString", "coordinates": [[0, 0], [1, 1]]}',
             "bowtie": '{"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}'}
    out = {}
    for name, text in files.items():
        (tmp_path / f"{name}.geojson").write_text(text)
        out[name] = str(tmp_path / f"{name}.geojson")
    out["missing"] = str(tmp_path / "missing.geojson")
    return out


AREA_CMDS = [["seed"], ["coverage"], ["export", "-o", "x.mbtiles"]]


@pytest.mark.parametrize("cmd", AREA_CMDS, ids=lambda c: c[0])
@pytest.mark.parametrize("args, message", [
    (["--layer", "osm", "--zoom", "1-3", "--bbox", "10,0,5,5"], "west must be less than east"),
    (["--layer", "osm", "--zoom", "1-3", "--bbox", "-200,0,5,5"], "outside the world"),
    (["--layer", "osm", "--zoom", "1-3", "--bbox", "0,0,5,95"], "outside the world"),
    (["--layer", "osm", "--zoom", "1-3", "--bbox", "0,0,5"], "not W,S,E,N"),
    (["--layer", "osm", "--zoom", "5-3", "--bbox", "0,0,5,5"], "reversed"),
    (["--layer", "osm", "--zoom", "3-13", "--bbox", "0,0,5,5"], "outside 0-12"),
    (["--layer", "osm", "--zoom", "x", "--bbox", "0,0,5,5"], "is not Z or A-B"),
    (["--layer", "nope", "--zoom", "1-3", "--bbox", "0,0,5,5"], "unknown layer 'nope'"),
    (["--layer", "osm", "--zoom", "1-3"], "exactly one of --bbox"),
    (["--layer", "osm", "--zoom", "1-3", "--bbox", "0,0,1,1", "--area", "a.geojson"], "exactly one of --bbox"),
    (["--layer", "osm", "--zoom", "1-3", "--area", "@notjson"], "is not JSON"),
    (["--layer", "osm", "--zoom", "1-3", "--area", "@line"], "is a LineString, not a Polygon"),
    (["--layer", "osm", "--zoom", "1-3", "--area", "@bowtie"], "not a valid polygon"),
    (["--layer", "osm", "--zoom", "1-3", "--area", "@missing"], "not found"),
])
def test_bad_arguments_exit_2_with_one_line(capsys, conf, tmp_path, monkeypatch, cmd, args, message):
    monkeypatch.chdir(tmp_path)
    files = bad_geojson(tmp_path)
    args = [files[a[1:]] if a.startswith("@") else a for a in args]
    code, out, err = run(capsys, cmd[0], "-c", conf, *cmd[1:], *args)
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("renderd-py: error") and message in err, err
    assert "Traceback" not in err and out == ""


@pytest.mark.parametrize("argv, message", [
    (["expire", "--layer", "nope", "-"], "unknown layer"),
    (["expire", "--layer", "osm", "--min-zoom", "13", "-"], "outside the layer's zooms"),
    (["expire", "--layer", "osm", "--mode", "purge", "-"], "'purge' is not one of"),
    (["expire", "--layer", "osm", "no-such-file"], "not found"),
    (["stats", "--layer", "nope"], "unknown layer"),
    (["stats", "--layer", "osm", "--zoom", "4-2"], "reversed"),
    (["export", "--layer", "osm", "--zoom", "1", "--bbox", "0,0,1,1", "-o", "x.tiff"], ".mbtiles or .pmtiles"),
    (["seed", "--layer", "osm", "--zoom", "1", "--bbox", "0,0,1,1", "--older-than", "yesterday"], "ISO 8601"),
    (["seed", "--layer", "osm", "--zoom", "1", "--bbox", "0,0,1,1", "--force", "--older-than", "2024-01-01"],
     "exclude each other"),
    (["seed", "--layer", "osm", "--zoom", "1", "--bbox", "0,0,1,1", "--max-failures", "lots"], "--max-failures"),
    (["seed", "--layer", "osm", "--zoom", "1", "--bbox", "0,0,1,1", "--concurrency", "0"], "concurrency"),
])
def test_more_bad_arguments(capsys, conf, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, argv[0], "-c", conf, *argv[1:])
    assert code == 2, err
    assert err.count("\n") == 1 and message in err, err


def test_seed_without_daemon_is_a_runtime_error(capsys, conf):
    code, out, err = run(capsys, "seed", "-c", conf, "--layer", "osm", "--zoom", "1", "--bbox", "0,0,1,1", "-q")
    assert code == 1
    assert err.strip().endswith("(is `renderd-py serve` running?)") and err.count("\n") == 1


def put_known(conf_dir: Path) -> None:
    st = DiskStore(str(conf_dir / "cache"))
    sea, a, b = b"\x89PNGsea" + b"s" * 93, b"\x89PNGa" + b"a" * 195, b"\x89PNGb" + b"b" * 295
    hs, ha, hb = (content_hash(x) for x in (sea, a, b))
    st.put_metatile("osm", MetaIndex(Meta(2, 0, 0, 4), (hs,) * 14 + (ha, hb), 1, 1), {hs: sea, ha: a, hb: b})
    st.put_metatile("osm", MetaIndex(Meta(3, 0, 0, 8), (hs,) * 63 + (ha,), 1, 1), {hs: sea, ha: a})


def test_stats_prints_expected_counts(capsys, conf, tmp_path):
    put_known(tmp_path)
    code, out, err = run(capsys, "stats", "-c", conf, "--layer", "osm")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "layer osm"
    assert [ln.split() for ln in lines[2:]] == [
        ["2", "1", "16", "3", "81.2%", str(14 * 100 + 200 + 300), "600"],
        ["3", "1", "64", "2", "96.9%", str(63 * 100 + 200), "300"],
        ["total", "2", "80", "3", "96.2%", str(1900 + 6500), "600"],
    ]
    code, out, err = run(capsys, "stats", "-c", conf, "--layer", "osm", "--zoom", "0-3", "--json")
    rep = json.loads(out)
    assert [z["zoom"] for z in rep["zooms"]] == [0, 1, 2, 3]
    assert rep["total"] == {"metatiles": 2, "tiles": 80, "unique_tiles": 3, "bytes": 8400,
                            "bytes_deduplicated": 600, "duplicate_share": 0.9625}


def test_coverage_cli(capsys, conf, tmp_path):
    put_known(tmp_path)
    code, out, err = run(capsys, "coverage", "-c", conf, "--layer", "osm", "--zoom", "2-4",
                         "--bbox", "-179,-85,179,85", "--short")
    assert code == 0, err
    rep = json.loads(out)
    assert rep["layer"] == "osm" and [lvl["level"] for lvl in rep["zoom_levels"]] == [2, 3, 4]
    assert [(lvl["cached"], lvl["required"]) for lvl in rep["zoom_levels"]] == [(16, 16), (64, 64), (0, 256)]
    assert [len(lvl["metatiles"]) for lvl in rep["zoom_levels"]] == [1, 1, 0]
    assert rep["coverage"] == round(80 / 336, 4)
    assert rep["sizes"]["stored_size"] == 600


def test_expire_cli_from_stdin(capsys, conf, tmp_path, monkeypatch):
    import io
    import sys
    put_known(tmp_path)
    monkeypatch.setattr(sys, "stdin", io.StringIO("3/7/7\nnot a tile\n3/99/0\n"))
    code, out, err = run(capsys, "expire", "-c", conf, "--layer", "osm", "--min-zoom", "2", "--json")
    assert code == 0, err
    rep = json.loads(out)
    assert (rep["lines"], rep["malformed"], rep["tiles"], rep["metatiles"]) == (3, 2, 1, 2)
    st = DiskStore(str(tmp_path / "cache"))
    assert st.get_index("osm", Meta(2, 0, 0, 4)).stale and st.get_index("osm", Meta(3, 0, 0, 8)).stale
    monkeypatch.setattr(sys, "stdin", io.StringIO("3/0/0\n"))
    code, out, err = run(capsys, "expire", "-c", conf, "--layer", "osm", "--mode", "delete", "--min-zoom", "3")
    assert code == 0, err
    assert "metatiles: 1 deleted" in out
    assert st.get_index("osm", Meta(3, 0, 0, 8)) is None and st.get_index("osm", Meta(2, 0, 0, 4)) is not None
