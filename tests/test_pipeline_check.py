"""``renderd-py pipeline check`` (and ``run``, which checks first): every way a
pipeline file can be wrong is refused with one line naming the stage, its
type and the field, exit status 2, before any work. The takes/gives matrix
is generated from the stage table, so a stage type added later is covered."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from renderd.cli.main import main
from renderd.errors import PipelineError
from renderd.pipeline import TYPES, load, parse
from renderd.pipeline.parse import check_config
from renderd import config as _config

#: a valid stage of each type (its required fields)
MINIMAL = {
    "read.files": {"pattern": "in/{name}.tif"},
    "read.catalog": {"collection": "c"},
    "transform.optimize": {"output": "out"},
    "transform.reproject": {"crs": "EPSG:3857", "output": "out"},
    "write.catalog": {"collection": "c"},
    "transform.pyramid": {"layer": "r", "zoom": "0-2"},
    "read.store": {"layer": "r", "zoom": "0-2"},
    "write.mbtiles": {"path": "x.mbtiles"},
    "write.pmtiles": {"path": "x.pmtiles"},
}

#: stages leading to one of each type (a valid pipeline ending with it)
LEADS = {
    "read.files": [],
    "read.catalog": [],
    "read.store": [],
    "transform.optimize": ["read.files"],
    "transform.reproject": ["read.files"],
    "write.catalog": ["read.files"],
    "transform.pyramid": ["read.catalog"],
    "write.mbtiles": ["read.store"],
    "write.pmtiles": ["read.store"],
}


def stage(kind: str, **values) -> dict:
    return {"type": kind, **MINIMAL[kind], **values}


def chain(*kinds: str) -> list[dict]:
    return [stage(k) for k in kinds]


def refused(doc, base: Path | None = None) -> str:
    with pytest.raises(PipelineError) as e:
        parse(doc, "p.json", str(base) if base else None)
    return str(e.value)


def test_the_table_is_complete():
    assert set(MINIMAL) == set(TYPES) == set(LEADS)
    for kind, lead in LEADS.items():
        parse(chain(*lead, kind))          # each lead is a valid pipeline


def test_the_design_example():
    assert refused(chain("read.files", "write.catalog", "write.mbtiles")) == \
        "stage 3 (write.mbtiles) takes tiles, stage 2 (write.catalog) gives datasets"


@pytest.mark.parametrize("first", sorted(TYPES))
@pytest.mark.parametrize("then", sorted(TYPES))
def test_every_takes_gives_pair(first, then):
    lead = LEADS[first]
    doc = chain(*lead, first, then)
    gives, takes = TYPES[first].gives, TYPES[then].takes
    if takes == gives:
        parse(doc)
        return
    n = len(lead) + 1
    assert refused(doc) == (f"stage {n + 1} ({then}) takes {takes or 'nothing'}, "
                            f"stage {n} ({first}) gives {gives}")


@pytest.mark.parametrize("kind", sorted(k for k, t in TYPES.items() if t.takes is not None))
def test_a_pipeline_starts_with_a_reader(kind):
    assert refused([stage(kind)]) == (
        f"stage 1 ({kind}) takes {TYPES[kind].takes}, but nothing comes before it "
        "(a pipeline starts with read.files, read.catalog or read.store)")


@pytest.mark.parametrize("kind, name", [(k, f) for k, t in sorted(TYPES.items())
                                        for f, spec in t.fields.items() if spec.required])
def test_every_required_field(kind, name):
    s = stage(kind)
    del s[name]
    assert refused(chain(*LEADS[kind]) + [s]) == \
        f"stage {len(LEADS[kind]) + 1} ({kind}): missing field \"{name}\""


@pytest.mark.parametrize("doc, message", [
    ({"pipeline": []}, "pipeline p.json must be a JSON list of stages [{\"type\": ...}, ...], not an object"),
    ("read.files", "pipeline p.json must be a JSON list of stages [{\"type\": ...}, ...], not a string"),
    ([], "pipeline p.json has no stages"),
    ([["read.files"]], "stage 1 must be an object such as {\"type\": \"read.files\", ...}, not a list"),
    ([{"pattern": "x"}], "stage 1: missing field \"type\" (one of read.files, read.catalog, "
                         "transform.optimize, transform.reproject, write.catalog, transform.pyramid, "
                         "read.store, write.mbtiles, write.pmtiles)"),
    ([{"type": 7}], "stage 1: field \"type\": must be a string, not a number"),
    ([{"type": "read.file", "pattern": "x"}], "stage 1 (read.file): unknown type (did you mean read.files?)"),
    ([{"type": "gdal.translate"}], "stage 1 (gdal.translate): unknown type (one of read.files, read.catalog, "
                                   "transform.optimize, transform.reproject, write.catalog, "
                                   "transform.pyramid, read.store, write.mbtiles, write.pmtiles)"),
    ([stage("read.files", patern="y")], "stage 1 (read.files): unknown field \"patern\" (did you mean \"pattern\"?)"),
    ([stage("read.files", colour="y")], "stage 1 (read.files): unknown field \"colour\" (read.files has "
                                        "pattern, variable, split_bands)"),
])
def test_structure(doc, message):
    assert refused(doc) == message


BAD_VALUES = [
    # (type, field, value, message after 'field "F": ')
    ("read.files", "pattern", 5, "must be a string, not a number"),
    ("read.files", "pattern", " ", "must not be empty"),
    ("read.files", "pattern", "in/{a b}.tif", "{a b} is not a key name ([A-Za-z0-9_.\\-]{1,64}, not . or ..)"),
    ("read.files", "pattern", "in/{a.tif", "unbalanced { or }"),
    ("read.files", "variable", "s s", '"s s" is not a variable name'),
    ("read.files", "split_bands", "month", 'must be an object {"key": NAME, "value": "band" or '
                                           '"time:%Y-%m"}, not a string'),
    ("read.files", "split_bands", {"value": "band"}, 'needs a "key": the key each band\'s raster gets'),
    ("read.files", "split_bands", {"key": "m", "value": "day"},
     'value "day" is not "band" or "time:" and a strftime format such as "time:%Y-%m"'),
    ("read.files", "split_bands", {"key": "m", "step": 1}, 'has no member "step" (it has key and value)'),
    ("read.files", "split_bands", {"key": ".."}, 'key: ".." is not a name ([A-Za-z0-9_.\\-]{1,64}, not . or ..)'),
    ("read.catalog", "collection", "a/b", '"a/b" is not a name ([A-Za-z0-9_.\\-]{1,64}, not . or ..)'),
    ("read.catalog", "where", ["a"], "must be an object of key: value, not a list"),
    ("read.catalog", "where", {"band": 4}, "the value of band must be a string [A-Za-z0-9_.\\-]{1,64}, not 4"),
    ("transform.optimize", "compression", "lzma", '"lzma" is not one of auto, deflate, zstd, lzw, jpeg, webp'),
    ("transform.optimize", "blocksize", 300, "300 is not a power of two from 128 to 4096"),
    ("transform.optimize", "blocksize", 8192, "8192 is outside 128..4096"),
    ("transform.optimize", "blocksize", "512", "must be a whole number, not a string"),
    ("transform.optimize", "blocksize", True, "must be a whole number, not true"),
    ("transform.optimize", "quality", 0, "0 is outside 1..100"),
    ("transform.optimize", "resampling", "bicubic", '"bicubic" is not one of auto, nearest, average, '
                                                    'bilinear, cubic, lanczos, mode'),
    ("transform.optimize", "bands", [0], "must be a list of band numbers from 1, not [0]"),
    ("transform.optimize", "bands", 3, "must be a list of band numbers from 1, not 3"),
    ("transform.optimize", "bounds", "1,2,3", '"1,2,3" is not W,S,E,N (four numbers)'),
    ("transform.optimize", "bounds", [10, 0, 5, 5], "[10, 0, 5, 5]: west must be below east and south below north"),
    ("transform.optimize", "crs", "EPSG:0", '"EPSG:0" is not a CRS rasterio knows (such as EPSG:4326)'),
    ("transform.optimize", "name", "a/b.tif", '"a/b.tif" must be a file name, not a path'),
    ("transform.optimize", "name", "b.png", '"b.png" must end in .tif'),
    ("transform.optimize", "name", "b_{.tif", '"b_{.tif" has an unbalanced { or }'),
    ("transform.optimize", "overwrite", "yes", 'must be true or false, not "yes"'),
    ("transform.optimize", "jobs", 0, "0 is outside 1..64"),
    ("transform.optimize", "jobs", 1.5, "must be a whole number, not 1.5"),
    ("transform.optimize", "output", 3, "must be a string, not a number"),
    ("transform.reproject", "crs", "web mercator", '"web mercator" is not a CRS rasterio knows (such as EPSG:4326)'),
    ("write.catalog", "stats", 1, "must be true or false, not 1"),
    ("transform.pyramid", "layer", "a b", '"a b" is not a layer name or LAYER/VALUE/...'),
    ("transform.pyramid", "zoom", "5-3", '"5-3" is reversed'),
    ("transform.pyramid", "zoom", "x", '"x" is not Z or A-B'),
    ("transform.pyramid", "zoom", "0-31", '"0-31" outside 0-30'),
    ("transform.pyramid", "zoom", [0, 3], 'must be a zoom range such as "0-6", not a list'),
    ("transform.pyramid", "bbox", "10,0,5,5", '"10,0,5,5": west must be less than east'),
    ("transform.pyramid", "bbox", "0,0,5", '"0,0,5" is not W,S,E,N'),
    ("transform.pyramid", "bbox", [0, 0, 5, 95], "the box is outside the world"),
    ("transform.pyramid", "bbox", {"w": 0}, 'must be "W,S,E,N" or [W, S, E, N], not an object'),
    ("transform.pyramid", "area", {"type": "LineString", "coordinates": [[0, 0], [1, 1]]},
     "area (inline GeoJSON): geometry is a LineString, not a Polygon or MultiPolygon"),
    ("transform.pyramid", "area", "missing.geojson", "area file {base}/missing.geojson not found"),
    ("transform.pyramid", "mode", "older", '"older" is not one of missing, force'),
    ("transform.pyramid", "concurrency", 0, "0 is outside 1..10000"),
    ("transform.pyramid", "timeout", 0, "0 must be above 0"),
    ("transform.pyramid", "timeout", "soon", "must be a number, not a string"),
    ("read.store", "zoom", "", '"" is not Z or A-B'),
    ("write.mbtiles", "path", "x.pmtiles", '"x.pmtiles" must end in .mbtiles'),
    ("write.pmtiles", "path", "x_{month.pmtiles", '"x_{month.pmtiles" has an unbalanced { or }'),
    ("write.pmtiles", "path", "x_{a b}.pmtiles", "{a b} is not a key name ([A-Za-z0-9_.\\-]{1,64}, not . or ..)"),
]


@pytest.mark.parametrize("kind, name, value, message", BAD_VALUES,
                         ids=[f"{k}.{f}={json.dumps(v)}" for k, f, v, _ in BAD_VALUES])
def test_bad_values(tmp_path, kind, name, value, message):
    doc = chain(*LEADS[kind]) + [stage(kind, **{name: value})]
    n = len(LEADS[kind]) + 1
    assert refused(doc, tmp_path) == \
        f"stage {n} ({kind}): field \"{name}\": {message.replace('{base}', str(tmp_path))}"


@pytest.mark.parametrize("kind, values, message", [
    ("transform.pyramid", {"bbox": "0,0,1,1", "area": {"type": "Polygon", "coordinates":
                                                       [[[0, 0], [1, 0], [1, 1], [0, 0]]]}},
     'field "area": bbox and area exclude each other: give one'),
    ("read.store", {"bbox": "0,0,1,1", "area": {"type": "Polygon", "coordinates":
                                                [[[0, 0], [1, 0], [1, 1], [0, 0]]]}},
     'field "area": bbox and area exclude each other: give one'),
    ("transform.optimize", {"quality": 90}, 'field "quality": applies to compression jpeg and webp only'),
    ("transform.reproject", {"quality": 90, "compression": "zstd"},
     'field "quality": applies to compression jpeg and webp only'),
    ("transform.optimize", {"bounds": "-180,-90,180,90"},
     'field "bounds": needs "crs" too (the CRS of the bounds, such as EPSG:4326)'),
    ("read.files", {"split_bands": {"key": "name"}}, 'field "split_bands": key name is a key of the pattern too'),
])
def test_fields_that_do_not_go_together(kind, values, message):
    doc = chain(*LEADS[kind]) + [stage(kind, **values)]
    n = len(LEADS[kind]) + 1
    assert refused(doc) == f"stage {n} ({kind}): {message}"


def test_a_field_given_twice(tmp_path):
    p = tmp_path / "p.json"
    p.write_text('[{"type": "read.files", "pattern": "a/{x}.tif", "pattern": "b/{x}.tif"}]')
    with pytest.raises(PipelineError) as e:
        load(str(p))
    assert str(e.value) == 'stage 1 (read.files): field "pattern" is given twice'


def test_name_placeholders_are_keys_of_the_rasters():
    doc = [stage("read.files", pattern="in/S2_{date}.tif"), stage("transform.optimize", name="{band}.tif")]
    assert refused(doc) == 'stage 2 (transform.optimize): field "name": {band} is not a key of the rasters ' \
                           '(they have date)'
    doc[0]["split_bands"] = {"key": "band"}
    parse(doc)
    doc = [stage("read.files", pattern="in/x.tif"), stage("transform.optimize", name="{band}.tif")]
    assert refused(doc) == 'stage 2 (transform.optimize): field "name": {band} is not a key of the rasters ' \
                           '(they have none)'


# --- JSON syntax -------------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ('[\n  {"type": "read.files"\n   "pattern": "x"}\n]', "line 3, column 4: Expecting ',' delimiter"),
    ('[{"type": "read.files", "pattern": "x"},]', "line 1, column 41: Expecting value"),
    ("", "line 1, column 1: Expecting value"),
    ('[{"type": "read.files", "pattern": \'x\'}]', "line 1, column 36: Expecting value"),
    ('[{"type": "transform.pyramid", "timeout": NaN}]', "NaN is not a JSON value"),
    ('[{"type": "read.files",\n  "pattern": "x"}\n] extra', "line 3, column 3: Extra data"),
])
def test_json_syntax_errors_name_line_and_column(tmp_path, text, message):
    p = tmp_path / "p.json"
    p.write_text(text)
    with pytest.raises(PipelineError) as e:
        load(str(p))
    assert str(e.value) == f"pipeline {p} is not valid JSON: {message}"


def test_files_that_are_no_pipeline(tmp_path):
    p = tmp_path / "p.json"
    p.write_bytes(b'[{"type": "read.files", "pattern": "\xff"}]')
    with pytest.raises(PipelineError) as e:
        load(str(p))
    assert str(e.value) == f"pipeline {p} is not UTF-8 text (byte 36)"
    for path, why in ((tmp_path / "none.json", "not found"), (tmp_path, "is a directory")):
        with pytest.raises(Exception) as e:
            load(str(path))
        assert str(e.value) == f"pipeline {path} {why}"


# --- what needs the configuration ------------------------------------------------------

CONFIG = """
[store]
kind = "disk"
path = "{tmp}/cache"
[catalog]
url = "sqlite://{tmp}/catalog.sqlite"
[[layer]]
name = "world"
style = "style.xml"
[[layer]]
name = "r"
kind = "raster"
collection = "c"
maxzoom = 8
[[layer]]
name = "sst"
kind = "raster"
collection = "c"
keys = ["month"]
maxzoom = 6
[[layer]]
name = "s2"
kind = "raster"
collection = "c"
where = {{ band = "rgb" }}
"""


@pytest.fixture
def cfg(tmp_path):
    (tmp_path / "style.xml").write_text("<Map/>")
    p = tmp_path / "renderd.toml"
    p.write_text(CONFIG.format(tmp=tmp_path))
    return _config.load(p)


def config_refused(doc, cfg) -> str:
    pipeline = parse(doc, "p.json")
    with pytest.raises(PipelineError) as e:
        check_config(pipeline, cfg)
    return str(e.value)


MONTHS = [stage("read.files", pattern="in/sst_{month}.tif"), stage("write.catalog")]


@pytest.mark.parametrize("doc, message", [
    (MONTHS + [stage("transform.pyramid", layer="nope")],
     "stage 3 (transform.pyramid): field \"layer\": unknown layer 'nope'"),
    (MONTHS + [stage("transform.pyramid", layer="world")],
     'stage 3 (transform.pyramid): field "layer": layer world is a mapnik layer; a pyramid renders a '
     'raster layer from datasets'),
    ([stage("read.files"), stage("write.catalog", collection="other"), stage("transform.pyramid")],
     'stage 3 (transform.pyramid): field "layer": layer r draws collection c, stage 2 (write.catalog) '
     'gives datasets of collection other'),
    ([stage("read.catalog", collection="d"), stage("transform.pyramid")],
     'stage 2 (transform.pyramid): field "layer": layer r draws collection c, stage 1 (read.catalog) '
     'gives datasets of collection d'),
    ([stage("read.files", pattern="in/sst_{date}.tif"), stage("write.catalog"),
      stage("transform.pyramid", layer="sst")],
     'stage 3 (transform.pyramid): field "layer": layer sst names key month, stage 2 (write.catalog) '
     'gives datasets with keys date'),
    ([stage("read.files", pattern="in/x.tif"), stage("write.catalog"), stage("transform.pyramid", layer="s2")],
     'stage 3 (transform.pyramid): field "layer": layer s2 selects by key band, stage 2 (write.catalog) '
     'gives datasets without keys'),
    (MONTHS + [stage("transform.pyramid", layer="sst/07/x")],
     'stage 3 (transform.pyramid): field "layer": layer sst has the keys month: give a value for each'),
    (MONTHS + [stage("transform.pyramid", layer="r/07")],
     'stage 3 (transform.pyramid): field "layer": layer r has no keys'),
    (MONTHS + [stage("transform.pyramid", layer="sst", zoom="0-9")],
     'stage 3 (transform.pyramid): field "zoom": "0-9" outside 0-6'),
    ([stage("read.store", layer="r", zoom=9)], 'stage 1 (read.store): field "zoom": 9 outside 0-8'),
    ([stage("read.store", layer="world", zoom=3), stage("write.mbtiles", path="w_{month}.mbtiles")],
     'stage 2 (write.mbtiles): field "path": {month} is not a key of layer world (it has none)'),
    (MONTHS + [stage("transform.pyramid", layer="sst"), stage("write.pmtiles", path="out/sst.pmtiles")],
     'stage 4 (write.pmtiles): field "path": layer sst has the keys month, one file per tile set: name it '
     'in the path (such as sst_{month}.pmtiles)'),
    (MONTHS + [stage("transform.pyramid", layer="sst"), stage("write.pmtiles", path="sst_{year}.pmtiles")],
     'stage 4 (write.pmtiles): field "path": {year} is not a key of layer sst (it has month)'),
])
def test_against_the_configuration(cfg, doc, message):
    assert config_refused(doc, cfg) == message


def test_what_the_configuration_allows(cfg):
    for doc in (MONTHS + [stage("transform.pyramid", layer="sst"), stage("write.pmtiles", path="s_{month}.pmtiles")],
                MONTHS + [stage("transform.pyramid", layer="sst/2012-08"), stage("write.pmtiles", path="s.pmtiles")],
                [stage("read.catalog"), stage("transform.pyramid", layer="s2")],
                [stage("read.store", layer="world", zoom="0-3"), stage("write.mbtiles")]):
        check_config(parse(doc), cfg)


# --- the command line ------------------------------------------------------------------

def run(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(list(argv))
        raise SystemExit(0)
    out, err = capsys.readouterr()
    return e.value.code or 0, out, err


def test_check_says_what_each_stage_gives(capsys, tmp_path, cfg):
    p = tmp_path / "p.json"
    p.write_text(json.dumps(MONTHS + [stage("transform.pyramid", layer="sst"),
                                      stage("write.mbtiles", path="out/sst_{month}.mbtiles")]))
    code, out, err = run(capsys, "pipeline", "check", "-c", cfg.path, str(p))
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        f"pipeline {p}: 4 stages, ok",
        "  stage 1 (read.files) gives rasters (keys month)",
        "  stage 2 (write.catalog) gives datasets (keys month) of collection c",
        "  stage 3 (transform.pyramid) gives tiles of layer sst",
        "  stage 4 (write.mbtiles) gives file",
    ]


def test_a_pipeline_of_files_only_needs_no_configuration(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("RENDERD_PY_CONFIG", str(tmp_path / "none.toml"))
    p = tmp_path / "p.json"
    p.write_text(json.dumps(chain("read.files", "transform.optimize")))
    code, out, err = run(capsys, "pipeline", "check", str(p))
    assert code == 0, err
    p.write_text(json.dumps(chain("read.files", "write.catalog")))
    code, out, err = run(capsys, "pipeline", "check", str(p))
    assert (code, out) == (2, "")
    assert err == f"renderd-py: error: configuration file {tmp_path / 'none.toml'} not found\n"


@pytest.mark.parametrize("command", [["check"], ["run"], ["run", "--dry-run"]])
def test_refused_with_one_line_and_exit_2(capsys, tmp_path, cfg, command):
    p = tmp_path / "p.json"
    p.write_text(json.dumps(chain("read.files", "write.catalog", "write.mbtiles")))
    code, out, err = run(capsys, "pipeline", *command, "-c", cfg.path, str(p))
    assert (code, out) == (2, "")
    assert err == ("renderd-py: error: stage 3 (write.mbtiles) takes tiles, stage 2 (write.catalog) "
                   "gives datasets\n")
    p.write_text('[{"type": "read.files",\n "pattern" "x"}]')
    code, out, err = run(capsys, "pipeline", *command, "-c", cfg.path, str(p))
    assert (code, out) == (2, "")
    assert err == f"renderd-py: error: pipeline {p} is not valid JSON: line 2, column 12: Expecting ':' delimiter\n"
    assert not (tmp_path / "out").exists() and not (tmp_path / "catalog.sqlite").exists()


# --- before any work: --dry-run, and what prepare finds --------------------------------

def months(tmp_path: Path, n: int = 2) -> Path:
    """``in/sst_0N.tif``: small float rasters over Europe."""
    import numpy as np
    from rasterio.transform import from_origin
    from tests.fixtures.catalog import write_raster
    d = tmp_path / "in"
    d.mkdir(exist_ok=True)
    for m in range(1, n + 1):
        data = np.full((1, 100, 200), float(m), np.float32)
        write_raster(d / f"sst_{m:02d}.tif", data, transform=from_origin(-10.0, 60.0, 0.2, 0.2))
    return d


def test_dry_run_says_what_would_be_done_and_does_nothing(capsys, tmp_path, cfg):
    months(tmp_path)
    p = tmp_path / "p.json"
    p.write_text(json.dumps([
        stage("read.files", pattern="in/sst_{month}.tif"),
        stage("transform.optimize", output="cogs"),
        stage("write.catalog"),
        stage("transform.pyramid", layer="sst", zoom="0-4"),
        stage("write.pmtiles", path="out/sst_{month}.pmtiles")]))
    code, out, err = run(capsys, "pipeline", "run", "--dry-run", "-c", cfg.path, str(p))
    assert (code, err) == (0, "")
    size = sum(f.stat().st_size for f in (tmp_path / "in").iterdir())
    assert out.splitlines() == [
        f"pipeline {p}: 5 stages (dry run: nothing is read, written or rendered)",
        f"  stage 1 (read.files): 2 rasters from 2 files ({size / 1e3:.1f} kB) matching in/sst_{{month}}.tif",
        f"  stage 2 (transform.optimize): 2 rasters into {tmp_path / 'cogs'}: 2 to write, 0 current (skipped)",
        "  stage 3 (write.catalog): collection c: 2 datasets: 2 to ingest, 0 already ingested "
        "(same size and mtime: skipped)",
        "  stage 4 (transform.pyramid): layer sst, zooms 0-4, missing: 2 tile sets from 2 datasets",
        "    sst/01: 6 metatiles (z0 1, z1 1, z2 1, z3 1, z4 2): 6 to render",
        "    sst/02: 6 metatiles (z0 1, z1 1, z2 1, z3 1, z4 2): 6 to render",
        "  stage 5 (write.pmtiles): 2 files",
        f"    {tmp_path / 'out' / 'sst_01.pmtiles'} (sst/01): new",
        f"    {tmp_path / 'out' / 'sst_02.pmtiles'} (sst/02): new",
    ]
    for made in ("cogs", "out", "cache", "catalog.sqlite"):
        assert not (tmp_path / made).exists(), made


@pytest.mark.parametrize("case, code, message", [
    ("no files", 2, 'stage 1 (read.files): field "pattern": pattern {tmp}/in/none_{{month}}.tif matches no file'),
    ("no raster", 2, "stage 1 (read.files): {tmp}/in/sst_03.tif: not a raster GDAL can read"),
    ("one output", 2, "stage 2 (transform.optimize): {tmp}/in/sst_01.tif and {tmp}/in/sst_02.tif would both "
                      "be written to {tmp}/cogs/sst.tif; tell them apart with {{key}} placeholders in \"name\""),
    ("not georeferenced", 2, "stage 2 (write.catalog): {tmp}/in/sst_01.tif: has no CRS"),
    ("no daemon", 1, "stage 4 (transform.pyramid): no daemon answers at tcp://127.0.0.1:9 (is `renderd-py "
                     "serve` running?); run the pipeline again when it answers"),
])
def test_refused_before_any_work(capsys, tmp_path, cfg, case, code, message):
    months(tmp_path)
    doc = [stage("read.files", pattern="in/sst_{month}.tif"), stage("transform.optimize", output="cogs"),
           stage("write.catalog"), stage("transform.pyramid", layer="sst", zoom="0-2")]
    if case == "no files":
        doc[0]["pattern"] = "in/none_{month}.tif"
    elif case == "no raster":
        (tmp_path / "in" / "sst_03.tif").write_text("not a raster")
    elif case == "one output":
        doc[1]["name"] = "sst.tif"
    elif case == "not georeferenced":
        import numpy as np
        from tests.fixtures.catalog import write_raster
        write_raster(tmp_path / "in" / "sst_01.tif", np.zeros((1, 10, 10), np.uint8), crs=None)
        doc = [doc[0], doc[2]]
    text = Path(cfg.path).read_text().replace("[store]", '[daemon]\nbroker = "tcp://127.0.0.1:9"\n[store]')
    Path(cfg.path).write_text(text)
    p = tmp_path / "p.json"
    p.write_text(json.dumps(doc))
    got, out, err = run(capsys, "pipeline", "run", "-q", "-c", cfg.path, str(p))
    want = message.format(tmp=tmp_path)
    assert (got, out) == (code, "")
    assert err.startswith(f"renderd-py: error: {want}") and err.count("\n") == 1, err
    for made in ("cogs", "cache", "catalog.sqlite"):
        assert not (tmp_path / made).exists() or not any((tmp_path / made).iterdir()), made
