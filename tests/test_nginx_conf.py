"""``renderd-py nginx-conf`` and renderd/nginx.py: what nginx and the Lua
front are given, checked with the real nginx (``nginx -t``, and a running
nginx for TileJSON, the demo page and the metrics server)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from renderd import config as _config
from renderd import nginx
from renderd.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]
STYLE = ROOT / "styles" / "world.xml"
needs_nginx = pytest.mark.skipif(not shutil.which("nginx"), reason="nginx is not installed")


def make_cfg(tmp_path: Path, extra: str = "", store: str | None = None, layers: str | None = None,
             http: str = "", metrics: str | None = None) -> tuple[Path, _config.Config]:
    from tests.fixtures.servers import free_port
    if store is None:
        store = f'kind = "disk"\npath = "{tmp_path / "cache"}"'
    if layers is None:
        layers = f"""
[[layer]]
name = "world"
style = "{STYLE}"
maxzoom = 6
description = "Natural Earth"
attribution = "© Natural Earth"

[[layer]]
name = "photo_2"
kind = "raster"
collection = "photos"
format = "jpeg85"
minzoom = 2
maxzoom = 9
tile_size = 512
metatile = 4
cache_control = "public, max-age=60"
bounds = [5.0, 45.0, 15.0, 50.0]
"""
    text = f"""
[daemon]
broker = "tcp://127.0.0.1:{free_port()}"
[store]
{store}
[http]
listen = "127.0.0.1:{free_port()}"
metrics = "{metrics or f'127.0.0.1:{free_port()}'}"
cache_size = "8m"
workers = 1
{http}
{extra}
{layers}
"""
    path = tmp_path / "renderd-py.toml"
    path.write_text(text)
    return path, (_config.load(path, env={}) if metrics is None else None)


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "renderd.cli.main", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, cwd=ROOT, timeout=60)


# --- the runtime JSON ---------------------------------------------------------

def test_runtime_json_disk(tmp_path):
    _, cfg = make_cfg(tmp_path)
    rt = nginx.runtime(cfg)
    assert rt["broker"] == cfg.daemon.broker
    assert rt["timeout"] == 30.0
    assert rt["store"] == {"kind": "disk", "path": str(tmp_path / "cache")}
    assert "blob_location" not in rt
    assert rt["dicts"] == {"tiles": "rpy_tiles", "locks": "rpy_locks", "metrics": "rpy_metrics"}
    world, photo = rt["layers"]
    assert world == {"name": "world", "minzoom": 0, "maxzoom": 6, "metatile": 8, "ext": "png",
                     "content_type": "image/png", "cache_control": "public, max-age=3600",
                     "cors": "*", "tile_size": 256, "keys": [], "scales": [1]}
    assert rt["cors"] == "*"
    assert photo["ext"] == "jpg" and photo["content_type"] == "image/jpeg"
    assert photo["cache_control"] == "public, max-age=60"
    assert (photo["metatile"], photo["tile_size"], photo["minzoom"]) == (4, 512, 2)


@pytest.mark.parametrize("url, expect", [
    ("redis://127.0.0.1:6390/3", {"host": "127.0.0.1", "port": 6390, "db": 3, "password": None,
                                  "socket": None}),
    ("redis://localhost", {"host": "127.0.0.1", "port": 6379, "db": 0, "password": None,
                           "socket": None}),
    ("redis://:s%40cret@10.0.0.5:7000/1", {"host": "10.0.0.5", "port": 7000, "db": 1,
                                             "password": "s@cret", "socket": None}),
    ("unix:///run/redis/redis.sock?db=2", {"host": None, "port": None, "db": 2, "password": None,
                                           "socket": "/run/redis/redis.sock"}),
    ("redis+cluster://:pw@10.0.0.5:7000,localhost:7001", {
        "host": "10.0.0.5", "port": 7000, "db": 0, "password": "pw", "socket": None, "block": 8,
        "cluster": [{"host": "10.0.0.5", "port": 7000}, {"host": "127.0.0.1", "port": 7001}]}),
])
def test_runtime_json_redis(tmp_path, url, expect):
    _, cfg = make_cfg(tmp_path, store=f'kind = "redis"\nurl = "{url}"\nprefix = "tiles1"')
    from renderd.store.redis_scripts import META_SCRIPT
    store = nginx.runtime(cfg)["store"]
    assert store == {"kind": "redis", "prefix": "tiles1", "meta_script": META_SCRIPT, **expect}


def test_redis_url_with_user_is_refused():
    with pytest.raises(UsageError, match="user name"):
        nginx.redis_settings("redis://alice:pw@127.0.0.1:6379/0", "rpy")


@pytest.mark.parametrize("url, why", [
    ("redis+cluster://10.0.0.5:7000,", "is not HOST:PORT"),
    ("redis+cluster://10.0.0.5", "is not HOST:PORT"),
    ("redis+cluster://10.0.0.5:7000,10.0.0.6:99999", "is not HOST:PORT"),
    ("redis+cluster://alice:pw@10.0.0.5:7000", "password only"),
])
def test_bad_cluster_urls_are_refused_in_one_line(tmp_path, url, why):
    with pytest.raises(UsageError, match=why):
        nginx.redis_settings(url, "rpy")
    path, _ = make_cfg(tmp_path, store=f'kind = "redis"\nurl = "{url}"')
    r = cli("nginx-conf", "-c", str(path), "-o", str(tmp_path / "out"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and why in r.stderr, r.stderr


def test_broker_bind_all_becomes_loopback():
    assert nginx.broker_address("tcp://*:5555") == "tcp://127.0.0.1:5555"
    assert nginx.broker_address("tcp://localhost:5555") == "tcp://127.0.0.1:5555"
    assert nginx.broker_address("ipc:///run/x.sock") == "ipc:///run/x.sock"


# --- TileJSON and the layer list ----------------------------------------------------

def test_tilejson_3(tmp_path):
    _, cfg = make_cfg(tmp_path)
    world, photo = cfg.layers
    tj = nginx.tilejson(cfg, world, base="http://h:1")
    assert tj["tilejson"] == "3.0.0"
    assert tj["tiles"] == ["http://h:1/tiles/world/{z}/{x}/{y}.png"]
    assert tj["scheme"] == "xyz"
    assert (tj["minzoom"], tj["maxzoom"]) == (0, 6)
    assert tj["bounds"] == [-180.0, -85.0511, 180.0, 85.0511]
    assert tj["center"] == [0.0, 0.0, 2]
    assert tj["attribution"] == "© Natural Earth" and tj["description"] == "Natural Earth"
    tj = nginx.tilejson(cfg, photo)
    assert tj["tiles"] == ["@RPY_BASE@/tiles/photo_2/{z}/{x}/{y}.jpg"]
    assert tj["center"] == [10.0, 47.5, 2]
    assert "attribution" not in tj
    index = nginx.layers_index(cfg)
    assert [lyr["name"] for lyr in index["layers"]] == ["world", "photo_2"]
    assert index["layers"][1]["tilejson"] == "tiles/photo_2.json"
    assert index["layers"][1]["tile_size"] == 512


# --- nginx.conf -----------------------------------------------------------------

def test_conf_on_stdout(tmp_path):
    path, cfg = make_cfg(tmp_path, http=f'prefix = "{tmp_path / "pfx"}"')
    r = cli("nginx-conf", "-c", str(path))
    assert r.returncode == 0, r.stderr
    conf = r.stdout
    pfx = tmp_path / "pfx"
    lua = ROOT / "lua"
    for line in [
        "load_module /usr/lib/nginx/modules/ndk_http_module.so;",
        "load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;",
        "worker_processes 1;",
        "daemon off;",
        f"pid {pfx}/logs/nginx.pid;",
        f"error_log {pfx}/logs/error.log warn;",
        f"client_body_temp_path {pfx}/tmp/client_body;",
        "sendfile on;",
        "tcp_nopush on;",
        "lua_socket_log_errors off;",
        f'lua_package_path "{lua}/?.lua;/usr/share/lua/5.1/?.lua;;";',
        "lua_shared_dict rpy_tiles 8m;",
        "lua_shared_dict rpy_locks 1m;",
        "lua_shared_dict rpy_metrics 4m;",
        f'init_by_lua_block {{ require("renderd.front").init("{pfx}/renderd-py.json") }}',
        f"listen {cfg.http.listen};",
        f"listen {cfg.http.metrics};",
        'content_by_lua_block { require("renderd.front").serve() }',
        'content_by_lua_block { require("renderd.metrics").serve() }',
        r"location ~ ^/tiles/([A-Za-z0-9_-]+)\.json$ {",
        "location = / {",
        "location = /metrics {",
    ]:
        assert line in conf, line
    # the disk store is read by Lua: no location serves its files
    assert "/_blob/" not in conf and str(tmp_path / "cache") not in conf.replace(str(pfx), "")
    # nothing was written without -o
    assert not pfx.exists()


def test_redis_store_has_no_blob_location(tmp_path):
    path, _ = make_cfg(tmp_path, store='kind = "redis"\nurl = "redis://127.0.0.1:6399/0"')
    r = cli("nginx-conf", "-c", str(path))
    assert r.returncode == 0, r.stderr
    assert "/_blob/" not in r.stdout
    assert "resolver" not in r.stdout


def test_default_prefix_beside_the_store(tmp_path):
    _, cfg = make_cfg(tmp_path)
    assert nginx.default_prefix(cfg) == tmp_path / "cache-nginx"


@pytest.mark.parametrize("metrics", ["0.0.0.0:9180", "192.168.1.4:9180", "[::]:9180", "example.org:9180"])
def test_non_loopback_metrics_is_refused(tmp_path, metrics):
    path, _ = make_cfg(tmp_path, metrics=metrics)
    r = cli("nginx-conf", "-c", str(path))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "http.metrics" in lines[0] and "loopback" in lines[0], r.stderr


@pytest.mark.parametrize("metrics, listen", [("9180", "127.0.0.1:9180"), ("localhost:9181", "127.0.0.1:9181"),
                                              ("[::1]:9182", "[::1]:9182")])
def test_loopback_metrics_forms(metrics, listen):
    cfg2 = _config.parse({"http": {"metrics": metrics}}, None, {}, check_files=False)
    assert nginx.metrics_listen(cfg2) == listen


def test_path_nginx_cannot_take_is_refused(tmp_path):
    d = tmp_path / "with space"
    d.mkdir()
    path, _ = make_cfg(d)
    r = cli("nginx-conf", "-c", str(path))
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "nginx paths" in r.stderr


def test_bad_config_exits_2(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text('[http]\nlisten = "nowhere"\n')
    r = cli("nginx-conf", "-c", str(p))
    assert r.returncode == 2 and "http.listen" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@needs_nginx
def test_output_dir_passes_nginx_t(tmp_path):
    path, cfg = make_cfg(tmp_path)
    out = tmp_path / "out"
    r = cli("nginx-conf", "-c", str(path), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert f"nginx -p {out} -c {out}/nginx.conf" in r.stderr
    for f in ("nginx.conf", "renderd-py.json", "layers.json", "tilejson/world.json",
              "tilejson/photo_2.json", "wmts/1.0.0/WMTSCapabilities.xml", "ogcapi/index.json",
              "ogcapi/collections/world/map/tiles/WebMercatorQuad.json"):
        assert (out / f).is_file(), f
    assert (out / "logs").is_dir() and (out / "tmp").is_dir()
    rt = json.loads((out / "renderd-py.json").read_text())
    assert rt == json.loads(json.dumps(nginx.runtime(cfg, docs_dir=str(out))))
    conf = (out / "nginx.conf").read_text()
    assert f'init("{out}/renderd-py.json")' in conf
    t = subprocess.run(["nginx", "-t", "-p", str(out), "-c", str(out / "nginx.conf")],
                       capture_output=True, text=True)
    assert t.returncode == 0, t.stderr
    # a layer removed from the configuration loses its TileJSON
    path.write_text(path.read_text().split("[[layer]]\nname = \"photo_2\"")[0])
    r = cli("nginx-conf", "-c", str(path), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert not (out / "tilejson" / "photo_2.json").exists()


# --- the Debian site file ---------------------------------------------------------

def test_committed_site_file_is_current():
    cfg = _config.parse({}, None, {}, check_files=False)
    assert (ROOT / "nginx" / "renderd-py.site").read_text() == nginx.render_site(cfg), \
        "regenerate with: python -c \"from renderd import config, nginx; print(nginx.render_site(config.parse({}, None, {}, check_files=False)), end='')\" > nginx/renderd-py.site"


@needs_nginx
def test_site_file_in_debian_like_nginx_conf(tmp_path):
    """The site's directives are valid inside an http block as Debian's nginx.conf has it."""
    path, _ = make_cfg(tmp_path)
    out = tmp_path / "site"
    r = cli("nginx-conf", "--site", "-c", str(path), "-o", str(out))
    assert r.returncode == 0, r.stderr
    site = out / "renderd-py.site"
    assert site.is_file() and (out / "renderd-py.json").is_file() and (out / "tilejson" / "world.json").is_file()
    text = site.read_text()
    assert "load_module" not in text and "worker_processes" not in text and "pid " not in text
    assert f'init("{out}/renderd-py.json")' in text
    main = tmp_path / "nginx.conf"
    (tmp_path / "logs").mkdir()
    main.write_text(f"""
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/logs/error.log;
events {{ }}
http {{
    include /etc/nginx/mime.types;
    access_log {tmp_path}/logs/access.log;
    include {site};
}}
""")
    t = subprocess.run(["nginx", "-t", "-p", str(tmp_path), "-c", str(main)], capture_output=True, text=True)
    assert t.returncode == 0, t.stderr


def test_site_flag_refuses_prefix(tmp_path):
    path, _ = make_cfg(tmp_path)
    r = cli("nginx-conf", "--site", "--prefix", str(tmp_path), "-c", str(path))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


# --- a running nginx with the generated configuration ---------------------------------

def _get(url: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def test_runtime_json_cors(tmp_path):
    _, cfg = make_cfg(tmp_path, http='cors = ""', layers=f"""
[[layer]]
name = "a"
style = "{STYLE}"
cors = "https://maps.example.org"
[[layer]]
name = "b"
style = "{STYLE}"
""")
    rt = nginx.runtime(cfg)
    assert rt["cors"] == "" and [lyr["cors"] for lyr in rt["layers"]] == ["https://maps.example.org", ""]
    with pytest.raises(_config.ConfigError, match=r"layer\[0\]\.cors"):
        _config.parse({"layer": [{"name": "a", "style": "x.xml", "cors": "a b"}]}, None, {}, check_files=False)


@pytest.fixture
def running(tmp_path, request):
    if not shutil.which("nginx"):
        pytest.skip("nginx is not installed")
    if not (ROOT / "lua" / "renderd" / "front.lua").exists():
        pytest.skip("the Lua front (lua/renderd/front.lua) is not there yet")
    from tests.fixtures.servers import stop, wait_port
    path, cfg = make_cfg(tmp_path, **getattr(request, "param", {}))
    out = tmp_path / "run"
    conf = nginx.write_conf(cfg, out)
    proc = subprocess.Popen(["nginx", "-p", str(out), "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    port = nginx.split_hostport(cfg.http.listen)[1]
    try:
        wait_port(port, 15, proc)
        wait_port(nginx.split_hostport(cfg.http.metrics)[1], 15, proc)
        yield cfg, f"http://127.0.0.1:{port}", out
    finally:
        stop(proc)
    errors = [ln for ln in (out / "logs" / "error.log").read_text().splitlines()
              if "[error]" in ln or "[crit]" in ln or "[alert]" in ln or "[emerg]" in ln]
    assert not errors, errors


def test_tilejson_served_with_request_host(running):
    cfg, base, _ = running
    status, headers, body = _get(base + "/tiles/world.json")
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert headers["access-control-allow-origin"] == "*"
    tj = json.loads(body)
    assert tj["tilejson"] == "3.0.0"
    assert tj["tiles"] == [base + "/tiles/world/{z}/{x}/{y}.png"]
    # another name, as a browser behind DNS would send it
    _, _, body = _get(base + "/tiles/photo_2.json", {"Host": "tiles.example.org:8443"})
    assert json.loads(body)["tiles"] == ["http://tiles.example.org:8443/tiles/photo_2/{z}/{x}/{y}.jpg"]
    # behind a TLS proxy mounted under a path
    _, _, body = _get(base + "/tiles/world.json", {"X-Forwarded-Proto": "https",
                                                   "X-Forwarded-Host": "maps.example.org",
                                                   "X-Forwarded-Prefix": "/osm/"})
    assert json.loads(body)["tiles"] == ["https://maps.example.org/osm/tiles/world/{z}/{x}/{y}.png"]
    # a Host that could break the JSON is not copied into it
    _, _, body = _get(base + "/tiles/world.json", {"X-Forwarded-Host": 'x"],"evil":["'})
    assert json.loads(body)["tiles"] == [base + "/tiles/world/{z}/{x}/{y}.png"]


@pytest.mark.parametrize("running", [{"http": 'cors = "https://maps.example.org"', "layers": f"""
[[layer]]
name = "world"
style = "{STYLE}"
[[layer]]
name = "private"
style = "{STYLE}"
cors = ""
"""}], indirect=True)
def test_tilejson_cors_per_layer(running):
    cfg, base, _ = running
    status, headers, _ = _get(base + "/tiles/world.json")
    assert status == 200 and headers["access-control-allow-origin"] == "https://maps.example.org"
    status, headers, _ = _get(base + "/tiles/private.json")
    assert status == 200 and "access-control-allow-origin" not in headers
    status, headers, _ = _get(base + "/tiles/nope.json")
    assert status == 404 and headers["access-control-allow-origin"] == "https://maps.example.org"


def test_static_routes(running):
    cfg, base, out = running
    assert _get(base + "/tiles/nope.json")[0] == 404
    assert _get(base + "/_blob/anything")[0] == 404
    assert _get(base + "/blobs/anything")[0] == 404
    assert _get(base + "/etc/passwd")[0] == 404
    assert _get(base + "/demo/../renderd-py.json")[0] in (400, 404)
    status, headers, body = _get(base + "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b"demo/app.js" in body
    status, headers, _ = _get(base + "/demo/app.js")
    assert status == 200 and headers["content-type"] == "application/javascript"
    status, _, body = _get(base + "/layers.json")
    assert status == 200 and [x["name"] for x in json.loads(body)["layers"]] == ["world", "photo_2"]
    if (ROOT / "web" / "vendor" / "leaflet" / "leaflet.js").exists():
        assert _get(base + "/demo/vendor/leaflet/leaflet.js")[0] == 200


def test_metrics_server_is_separate(running):
    cfg, base, _ = running
    mbase = f"http://{cfg.http.metrics}"
    assert _get(mbase + "/tiles/world.json")[0] == 404
    assert _get(base + "/metrics")[0] == 404
    if (ROOT / "lua" / "renderd" / "metrics.lua").exists():
        status, headers, _ = _get(mbase + "/metrics")
        assert status == 200 and headers["content-type"].startswith("text/plain")


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("runuser"), reason="needs root to switch users")
def test_nginx_runs_without_root(tmp_path):
    """The generated files need no root: nginx started as `nobody` serves them."""
    if not shutil.which("nginx") or not (ROOT / "lua" / "renderd" / "front.lua").exists():
        pytest.skip("nginx or the Lua front is missing")
    import tempfile
    from tests.fixtures.servers import stop, wait_port
    path, cfg = make_cfg(tmp_path)
    base = Path(tempfile.mkdtemp(prefix="rpy-nobody-"))   # pytest's tmp dirs are root-only
    try:
        base.chmod(0o755)
        out = base / "prefix"
        conf = nginx.write_conf(cfg, out)
        shutil.chown(out, "nobody")
        for p in out.rglob("*"):
            shutil.chown(p, "nobody")
        proc = subprocess.Popen(["runuser", "-u", "nobody", "--", "nginx", "-p", str(out), "-c", str(conf)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        port = nginx.split_hostport(cfg.http.listen)[1]
        try:
            wait_port(port, 15, proc)
            status, _, body = _get(f"http://127.0.0.1:{port}/tiles/world.json")
            assert status == 200 and json.loads(body)["tilejson"] == "3.0.0"
            assert _get(f"http://127.0.0.1:{port}/")[0] == 200
        finally:
            stop(proc)
        log = (out / "logs" / "error.log").read_text()
        assert not [ln for ln in log.splitlines() if re.search(r"\[(error|crit|alert|emerg)\]", ln)], log
    finally:
        shutil.rmtree(base, ignore_errors=True)


# --- the user of nginx's workers -----------------------------------------------------

@pytest.mark.skipif(os.geteuid() != 0, reason="nginx switches users only when started as root")
def test_worker_user_is_not_root_when_it_can_read_everything(tmp_path):
    """As root, nginx's workers run as www-data (or nobody) when that user
    can read what they serve; they serve a stored tile as that user."""
    import pwd
    import tempfile
    from renderd.store.disk import DiskStore
    from renderd.tilemath import Meta
    from tests.fixtures.servers import stop, wait_port
    from tests.test_lua_front import make_meta, tile_bytes
    base = Path(tempfile.mkdtemp(prefix="rpy-user-"))   # pytest's tmp dirs are root-only
    try:
        base.chmod(0o755)
        path, cfg = make_cfg(base, store=f'kind = "disk"\npath = "{base / "cache"}"')
        DiskStore(cfg.store.path).put_metatile("world", *make_meta("world", Meta(3, 0, 0, 8)))
        conf = nginx.write_conf(cfg, base / "run")
        name = nginx.WORKER_USERS[0] if _has_user(nginx.WORKER_USERS[0]) else nginx.WORKER_USERS[1]
        assert f"\nuser {name} " in conf.read_text()
        proc = subprocess.Popen(["nginx", "-p", str(conf.parent), "-c", str(conf)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        port = nginx.split_hostport(cfg.http.listen)[1]
        try:
            wait_port(port, 15, proc)
            status, headers, body = _get(f"http://127.0.0.1:{port}/tiles/world/3/1/2.png")
            assert status == 200 and headers["x-cache"] == "STORE" and body == tile_bytes("world", 3, 1, 2)
            assert _get(f"http://127.0.0.1:{port}/tiles/world.json")[0] == 200
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            uids = {int(Path(f"/proc/{c}/status").read_text().split("\nUid:\t")[1].split()[0]) for c in children}
            assert uids == {pwd.getpwnam(name).pw_uid}
        finally:
            stop(proc)
        log = (conf.parent / "logs" / "error.log").read_text()
        assert not [ln for ln in log.splitlines() if re.search(r"\[(error|crit|alert|emerg)\]", ln)], log
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _has_user(name: str) -> bool:
    import pwd
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


@pytest.mark.skipif(os.geteuid() != 0, reason="nginx switches users only when started as root")
def test_worker_user_falls_back_to_root_and_says_why(tmp_path):
    _, cfg = make_cfg(tmp_path)          # under pytest's root-only tmp dir
    text = nginx.render_conf(cfg, tmp_path / "run")
    assert re.search(r"\n# workers' user: \S+ cannot read /tmp/\S+\nuser root;\n", text), text[:600]
    _, cfg = make_cfg(tmp_path, http='user = "nobody nogroup"')
    assert "\n# workers' user: [http] user\nuser nobody nogroup;\n" in nginx.render_conf(cfg, tmp_path / "run")
    assert "\nuser daemon;\n" in nginx.render_conf(cfg, tmp_path / "run", user="daemon")
    with pytest.raises(_config.ConfigError, match="http.user"):
        make_cfg(tmp_path, http='user = "a;b"')


@needs_nginx
def test_public_metrics_with_a_purge_token_and_real_ip(tmp_path):
    path, _ = make_cfg(tmp_path, metrics="0.0.0.0:9180",
                       http='purge_token = "s3cret"\nreal_ip_from = ["10.0.0.0/8", "::1"]')
    out = tmp_path / "out"
    r = cli("nginx-conf", "-c", str(path), "-o", str(out))
    assert r.returncode == 0, r.stderr
    conf = (out / "nginx.conf").read_text()
    assert "listen 0.0.0.0:9180;" in conf
    assert "set_real_ip_from 10.0.0.0/8;" in conf and "set_real_ip_from ::1;" in conf
    assert "real_ip_header X-Forwarded-For;" in conf
    assert json.loads((out / "renderd-py.json").read_text())["purge_token"] == "s3cret"
    t = subprocess.run(["nginx", "-t", "-p", str(out), "-c", str(out / "nginx.conf")],
                       capture_output=True, text=True)
    assert t.returncode == 0, t.stderr


@pytest.mark.parametrize("http, message", [
    ('real_ip_from = ["nowhere"]', "http.real_ip_from"),
    ('real_ip_from = "10.0.0.1"', "http.real_ip_from"),
    ('purge_url = ["http://a/purge", "ftp://b"]', "http.purge_url"),
])
def test_bad_front_lists_exit_2(tmp_path, http, message):
    path, _ = make_cfg(tmp_path, metrics="127.0.0.1:9180", http=http)
    r = cli("nginx-conf", "-c", str(path))
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


@needs_nginx
def test_router_passes_nginx_t_and_refuses_bad_nodes(tmp_path):
    path, _ = make_cfg(tmp_path)
    out = tmp_path / "router"
    r = cli("nginx-conf", "-c", str(path), "--router", "127.0.0.1:8081,[::1]:8082,node3:80", "-o", str(out))
    assert r.returncode == 0, r.stderr
    conf = (out / "nginx.conf").read_text()
    assert "hash $rpy_route consistent;" in conf
    for node in ("127.0.0.1:8081", "[::1]:8082", "node3:80"):
        assert f"server {node} " in conf
    route = json.loads((out / "route.json").read_text())
    assert [lyr["name"] for lyr in route["layers"]] == ["world", "photo_2"]
    assert route["layers"][1]["metatile"] == 4
    t = subprocess.run(["nginx", "-t", "-p", str(out), "-c", str(out / "nginx.conf")],
                       capture_output=True, text=True)
    # (node3 is no host here: nginx -t resolves upstream names)
    assert t.returncode == 0 or "host not found in upstream" in t.stderr, t.stderr
    for bad in ("", "nohost", "a:0", "a:1,a:1", "a:99999"):
        r = cli("nginx-conf", "-c", str(path), "--router", bad)
        assert r.returncode == 2 and "--router" in r.stderr and len(r.stderr.strip().splitlines()) == 1, \
            (bad, r.stderr)
    r = cli("nginx-conf", "-c", str(path), "--router", "a:1", "--site")
    assert r.returncode == 2
