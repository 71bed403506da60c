import textwrap

import pytest

from renderd import config
from renderd.errors import ConfigError


def write(tmp_path, text, style=True):
    if style:
        (tmp_path / "style.xml").write_text("<Map/>")
    p = tmp_path / "c.toml"
    p.write_text(textwrap.dedent(text))
    return p


GOOD = """
[daemon]
broker = "tcp://127.0.0.1:5555"
workers = 3
[store]
kind = "disk"
path = "cache"
[[layer]]
name = "osm"
style = "style.xml"
minzoom = 0
maxzoom = 19
"""


def test_good_config(tmp_path):
    c = config.load(write(tmp_path, GOOD), env={})
    assert c.daemon.workers == 3
    assert c.daemon.reserved == 1 and c.daemon.processes == 4
    assert c.store.path == str(tmp_path / "cache")
    assert c.layer("osm").style == str(tmp_path / "style.xml")
    assert c.layer("osm").metatile == 8


def test_env_overrides_file(tmp_path):
    c = config.load(write(tmp_path, GOOD), env={"RENDERD_PY_DAEMON_WORKERS": "5"})
    assert c.daemon.workers == 5


@pytest.mark.parametrize("text,key", [
    (GOOD + "\n[http]\nbogus = 1\n", "http.bogus"),
    (GOOD.replace("workers = 3", "workers = 'x'"), "daemon.workers"),
    (GOOD.replace("maxzoom = 19", "maxzoom = 40"), "layer[0].maxzoom"),
    (GOOD.replace("minzoom = 0", "minzoom = 12").replace("maxzoom = 19", "maxzoom = 3"), "layer[0].minzoom"),
    (GOOD.replace('kind = "disk"', 'kind = "s3"'), "store.kind"),
    (GOOD.replace('broker = "tcp://127.0.0.1:5555"', 'broker = "http://x"'), "daemon.broker"),
    (GOOD + "\n[[layer]]\nname = 'osm'\nstyle = 'style.xml'\n", "layer[1].name"),
    (GOOD + "\n[extra]\n", "extra"),
])
def test_bad_values_name_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as e:
        config.load(write(tmp_path, text), env={})
    assert e.value.key == key
    assert key in str(e.value)


def test_missing_style_file(tmp_path):
    with pytest.raises(ConfigError, match=r"layer\[0\].style: file .* does not exist"):
        config.load(write(tmp_path, GOOD, style=False), env={})


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "nope.toml", env={})
    p = tmp_path / "bad.toml"
    p.write_text("[daemon\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(p, env={})


RASTER = GOOD + """
[catalog]
url = "sqlite://catalog.sqlite"
[[layer]]
name = "r"
kind = "raster"
collection = "r"
"""


@pytest.mark.parametrize("line,key,message", [
    ('rescale = "0,abc"', "rescale", "is not MIN,MAX"),
    ('colormap = "nosuch"', "colormap", "unknown colormap 'nosuch'"),
    ('expression = "__import__(1)"', "expression", "unknown function '__import__'"),
    ('expression = "b1 +"', "expression", "expression"),
    ('bands = [1, 9, 2, 3, 4]', "bands", "1, 3 or 4 band numbers"),
    ('mosaic = "avg"', "mosaic", "'avg' is not one of"),
    ('resampling = "fancy"', "resampling", "'fancy' is not one of"),
    ('keys = ["a", "b", "c", "d", "e", "f", "g", "h", "i"]', "keys", "more than 8 keys"),
    ('format = "gif"', "format", "gif"),
    ('style = "style.xml"', "style", "style"),
])
def test_bad_raster_layer_keys_name_the_key(tmp_path, line, key, message):
    with pytest.raises(ConfigError) as e:
        config.load(write(tmp_path, RASTER + line + "\n"), env={})
    assert e.value.key == f"layer[1].{key}", str(e.value)
    assert message in str(e.value)


@pytest.mark.parametrize("cpus, daemon, workers, reserved", [
    (2, "", 2, 1), (8, "", 8, 2), (16, "", 16, 4), (1, "", 1, 1),
    (8, "workers = 3", 3, 1), (8, "workers = 0", 0, 0), (2, "reserved = 0", 2, 0),
    (2, "workers = 4\nreserved = 2", 4, 2),
])
def test_pool_sized_from_the_machine(monkeypatch, cpus, daemon, workers, reserved):
    monkeypatch.setattr(config, "cpus", lambda: cpus)
    import tomllib
    c = config.parse({"daemon": tomllib.loads(daemon)}, env={}, check_files=False)
    assert (c.daemon.workers, c.daemon.reserved, c.daemon.processes) == (workers, reserved, workers + reserved)
    assert c.daemon.nice_gap == 10


def test_cpus_is_what_this_process_may_use():
    import os
    assert config.cpus() == len(os.sched_getaffinity(0)) <= os.cpu_count()
