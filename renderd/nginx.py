"""The nginx side of the stack: configuration files rendered from templates.

nginx stays thin: it parses nothing, it only hands ``/tiles/`` to the Lua
front (``lua/renderd/front.lua``) and serves static files. What the Lua
code needs to know (broker, store, layers, timeouts) is written as one JSON
file, the *runtime JSON*, read once by ``init_by_lua``.

Two shapes of output, from the same templates in ``nginx/``:

- a whole ``nginx.conf`` run by our own nginx (``renderd-py up``, or
  ``nginx -p PREFIX -c PREFIX/nginx.conf``), everything under one prefix
  directory::

      PREFIX/nginx.conf  renderd-py.json  layers.json  tilejson/LAYER.json
      PREFIX/logs/ (error.log, access.log, nginx.pid)  PREFIX/tmp/

- a site file for Debian's stock nginx (``/etc/nginx/sites-enabled/``),
  holding only http-level directives and the two servers; nginx.conf,
  modules, logs and temp paths are Debian's.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from .config import Config, LayerConfig
from .errors import UsageError

#: placeholder in the TileJSON files, replaced by nginx with the request's base URL
BASE_PLACEHOLDER = "@RPY_BASE@"
DICTS = {"tiles": "rpy_tiles", "locks": "rpy_locks", "metrics": "rpy_metrics"}
RUNTIME_JSON = "renderd-py.json"
SHARE_DIRS = ("/usr/share/renderd-py",)
#: where the Debian site file expects things (see nginx/renderd-py.site)
SITE_DEFAULTS = {
    "conf_dir": "/etc/renderd-py/nginx",
    "lua_dir": "/usr/share/renderd-py/lua",
    "web_dir": "/usr/share/renderd-py/web",
    "access_log": "/var/log/nginx/renderd-py.access.log rpy",
}


def share_dir(name: str) -> Path:
    """``lua``, ``nginx`` or ``web``: beside the package in a checkout,
    else under /usr/share/renderd-py (a Debian install)."""
    env = os.environ.get(f"RENDERD_PY_{name.upper()}_DIR")
    if env:
        return Path(env)
    import renderd
    here = Path(renderd.__file__).resolve().parents[1] / name
    if here.is_dir():
        return here
    for root in SHARE_DIRS:
        p = Path(root) / name
        if p.is_dir():
            return p
    return here


# --- addresses ------------------------------------------------------------

def split_hostport(value: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``port`` (host then empty)."""
    m = re.fullmatch(r"(?:(?:\[([0-9a-fA-F:.]+)\]|([A-Za-z0-9.\-]+)):)?(\d+)", value)
    if not m:
        raise UsageError(f"{value!r} is not host:port")
    return (m.group(1) or m.group(2) or ""), int(m.group(3))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def nginx_listen(host: str, port: int) -> str:
    if not host:
        return str(port)
    if ":" in host:
        return f"[{host}]:{port}"
    if host == "localhost":
        host = "127.0.0.1"
    return f"{host}:{port}"


def metrics_listen(cfg: Config) -> str:
    host, port = split_hostport(cfg.http.metrics)
    host = host or "127.0.0.1"
    if not is_loopback(host):
        raise UsageError(f"http.metrics: {cfg.http.metrics!r} is not a loopback address "
                         "(metrics are served on 127.0.0.1, ::1 or localhost only)")
    return nginx_listen(host, port)


def public_url(cfg: Config) -> str:
    """The URL to print for the demo map."""
    host, port = split_hostport(cfg.http.listen)
    if host in ("", "0.0.0.0", "*"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/"


def _ip_or_localhost(host: str) -> str:
    return "127.0.0.1" if host == "localhost" else host


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def redis_settings(url: str, prefix: str) -> dict[str, Any]:
    """``redis://[:password@]host[:port][/db]`` or
    ``unix:///path/redis.sock[?db=N&password=...]`` for the Lua client."""
    parts = urlsplit(url)
    db = 0
    if parts.scheme == "unix":
        if not parts.path:
            raise UsageError(f"store.url: {url!r} names no socket path")
        q = parse_qs(parts.query)
        if "db" in q:
            db = q["db"][0]
        password = q.get("password", [None])[0] or (unquote(parts.password) if parts.password else None)
        host, port, sock = None, None, unquote(parts.path)
    elif parts.scheme == "redis":
        if parts.username:
            raise UsageError("store.url: a Redis user name is not supported by the nginx front; "
                             "use redis://:PASSWORD@host:port/db")
        try:
            port = parts.port or 6379
        except ValueError:
            raise UsageError(f"store.url: {url!r} has a bad port") from None
        host = _ip_or_localhost(parts.hostname or "127.0.0.1")
        path = parts.path.strip("/")
        if path:
            db = path
        password = unquote(parts.password) if parts.password else None
        sock = None
    else:
        raise UsageError(f"store.url: {url!r} is not a redis:// or unix:// URL")
    try:
        db = int(db)
    except ValueError:
        raise UsageError(f"store.url: database {db!r} is not a number") from None
    return {"kind": "redis", "host": host, "port": port, "db": db, "password": password,
            "prefix": prefix, "socket": sock}


def broker_address(endpoint: str) -> str:
    """The broker endpoint to connect to: a bind-all address or ``localhost``
    becomes 127.0.0.1 (nginx's resolver does not read /etc/hosts)."""
    return re.sub(r"^tcp://(localhost|\*|0\.0\.0\.0):", "tcp://127.0.0.1:", endpoint)


def _resolvers() -> list[str]:
    out = []
    try:
        with open("/etc/resolv.conf") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    ns = parts[1].split("%")[0]
                    out.append(f"[{ns}]" if ":" in ns else ns)
    except OSError:
        pass
    return out


def resolver_directive(cfg: Config) -> str:
    """A ``resolver`` line when Lua must connect to a host name, else ''."""
    names = []
    m = re.fullmatch(r"tcp://([^:]+):\d+", broker_address(cfg.daemon.broker))
    if m and m.group(1) != "*" and not _is_ip(m.group(1)):
        names.append(m.group(1))
    if cfg.store.kind == "redis":
        host = redis_settings(cfg.store.url, cfg.store.prefix)["host"]
        if host and not _is_ip(host):
            names.append(host)
    if not names:
        return ""
    servers = _resolvers()
    if not servers:
        raise UsageError(f"nginx needs a DNS resolver to reach {names[0]!r}, and /etc/resolv.conf "
                         "names no nameserver: use an IP address")
    return f"resolver {' '.join(servers)} valid=30s;\n"


# --- what Lua reads -------------------------------------------------------

def layer_runtime(cfg: Config, lyr: LayerConfig) -> dict[str, Any]:
    return {"name": lyr.name, "minzoom": lyr.minzoom, "maxzoom": lyr.maxzoom,
            "metatile": lyr.metatile, "ext": lyr.ext, "content_type": lyr.content_type,
            "cache_control": lyr.cache_control or cfg.http.cache_control,
            "cors": cfg.http.cors if lyr.cors is None else lyr.cors,
            "tile_size": lyr.tile_size}


def runtime(cfg: Config) -> dict[str, Any]:
    """The runtime JSON read by ``require("renderd.front").init(path)``."""
    if cfg.store.kind == "disk":
        store: dict[str, Any] = {"kind": "disk", "path": cfg.store.path}
    else:
        from .store.redis_scripts import META_SCRIPT   # the hot-cache fill's script, run by nginx
        store = {**redis_settings(cfg.store.url, cfg.store.prefix), "meta_script": META_SCRIPT}
    return {"broker": broker_address(cfg.daemon.broker), "timeout": cfg.http.timeout,
            "store": store, "layers": [layer_runtime(cfg, lyr) for lyr in cfg.layers],
            "cors": cfg.http.cors, "dicts": dict(DICTS)}


def tilejson(cfg: Config, lyr: LayerConfig, base: str = BASE_PLACEHOLDER) -> dict[str, Any]:
    """TileJSON 3.0.0 of a layer; ``base`` is replaced by nginx per request."""
    w, s, e, n = lyr.bounds
    lon, lat = (w + e) / 2, (s + n) / 2
    zoom = max(lyr.minzoom, min(lyr.maxzoom, 2))
    doc: dict[str, Any] = {
        "tilejson": "3.0.0",
        "name": lyr.name,
        "tiles": [f"{base}/tiles/{lyr.name}/{{z}}/{{x}}/{{y}}.{lyr.ext}"],
        "scheme": "xyz",
        "minzoom": lyr.minzoom,
        "maxzoom": lyr.maxzoom,
        "bounds": [w, s, e, n],
        "center": [round(lon, 6), round(lat, 6), zoom],
    }
    if lyr.description:
        doc["description"] = lyr.description
    if lyr.attribution:
        doc["attribution"] = lyr.attribution
    return doc


def layers_index(cfg: Config) -> dict[str, Any]:
    """``/layers.json``: what the demo page shows (URLs relative to the page)."""
    return {"layers": [{"name": lyr.name, "tilejson": f"tiles/{lyr.name}.json",
                        "tile_size": lyr.tile_size, "minzoom": lyr.minzoom,
                        "maxzoom": lyr.maxzoom, "description": lyr.description}
                       for lyr in cfg.layers]}


# --- templates ------------------------------------------------------------

def _template(name: str) -> str:
    path = share_dir("nginx") / name
    try:
        return path.read_text()
    except OSError as e:
        raise UsageError(f"cannot read the nginx template {path}: {e.strerror}") from None


def fill(text: str, values: dict[str, str]) -> str:
    """Replace ``{{name}}``; an unknown name is an error, not an empty string."""
    def sub(m: re.Match[str]) -> str:
        key = m.group(1)
        if key not in values:
            raise KeyError(f"template placeholder {{{{{key}}}}} has no value")
        return values[key]
    return re.sub(r"\{\{([a-z_]+)\}\}", sub, text)


def _path(p: str | os.PathLike[str], what: str) -> str:
    """An absolute path that nginx can take unquoted."""
    s = os.path.abspath(os.fspath(p))
    if re.search(r"[\s;{}$'\"\\#]", s):
        raise UsageError(f"{what} {s!r}: nginx paths may not contain spaces, quotes or any of ;{{}}$#\\")
    return s


def _indent(text: str, n: int) -> str:
    pad = " " * n
    return "\n".join(pad + line if line.strip() else "" for line in text.splitlines()) + "\n"


@dataclass(frozen=True)
class Paths:
    conf_dir: str       # nginx.conf / renderd-py.site, runtime JSON, tilejson/
    lua_dir: str
    web_dir: str

    @property
    def runtime_json(self) -> str:
        return f"{self.conf_dir}/{RUNTIME_JSON}"


def http_block(cfg: Config, paths: Paths, access_log: str, extra_locations: str = "") -> str:
    """The http-level part shared by nginx.conf and the Debian site file.
    ``extra_locations``: more locations for the tile server (benchmarks)."""
    host, port = split_hostport(cfg.http.listen)
    values = {
        "lua_dir": _path(paths.lua_dir, "the Lua directory"),
        "web_dir": _path(paths.web_dir, "the web directory"),
        "conf_dir": _path(paths.conf_dir, "the configuration directory"),
        "runtime_json": _path(paths.runtime_json, "the runtime JSON"),
        "cache_size": nginx_size(cfg.http.cache_size),
        "resolver": resolver_directive(cfg),
        "listen": nginx_listen(host, port),
        "metrics_listen": metrics_listen(cfg),
        "access_log": access_log,
        "extra_locations": _indent(extra_locations, 4) if extra_locations.strip() else "",
    }
    return fill(_template("http.tmpl"), values)


def default_prefix(cfg: Config) -> Path:
    """``http.prefix``, else ``<store.path>-nginx`` beside a disk store, else
    /run/renderd-py/nginx (root) or a private directory under /tmp."""
    if cfg.http.prefix:
        return Path(cfg.http.prefix)
    if cfg.store.kind == "disk":
        store = Path(cfg.store.path)
        return store.with_name(store.name + "-nginx")
    if os.geteuid() == 0:
        return Path("/run/renderd-py/nginx")
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir and os.path.isdir(runtime_dir):
        return Path(runtime_dir) / "renderd-py" / "nginx"
    return Path(f"/tmp/renderd-py-{os.geteuid()}/nginx")


# --- the user of nginx's workers -----------------------------------------------

#: tried in this order when nginx starts as root and [http] user is empty
WORKER_USERS = ("www-data", "nobody")
_USER_RE = r"[A-Za-z0-9_][A-Za-z0-9_.\-]*( [A-Za-z0-9_][A-Za-z0-9_.\-]*)?"


def _allowed(st: os.stat_result, uid: int, gids: set[int], bits: int) -> bool:
    """Whether uid (in groups gids) has the permission ``bits`` (r=4, w=2, x=1)."""
    if st.st_uid == uid:
        mode = st.st_mode >> 6
    elif st.st_gid in gids:
        mode = st.st_mode >> 3
    else:
        mode = st.st_mode
    return mode & bits == bits


def _blocked(path: str, uid: int, gids: set[int], bits: int) -> str | None:
    """The first place on the way to ``path`` that uid cannot pass (search
    every directory, then ``bits`` on ``path`` itself), or None. A path that
    does not exist yet is judged by the directories above it (it will be
    made with the usual umask)."""
    parts = Path(os.path.abspath(path)).parts
    here = Path(parts[0])
    for i, part in enumerate(parts[1:], 1):
        here = here / part
        try:
            st = here.stat()
        except OSError:
            return None
        last = i == len(parts) - 1
        need = bits if last else 1
        if not _allowed(st, uid, gids, need):
            return str(here)
    return None


def worker_user(cfg: Config, paths: "Paths") -> tuple[str, str]:
    """The ``user`` directive's value for nginx's workers when nginx starts
    as root, and a note on why: ``[http] user`` if set, else the first of
    WORKER_USERS that can read everything the workers read (the Lua code,
    the web files, the runtime files, a disk store) and connect to the
    broker's and Redis's unix sockets; else root."""
    import grp
    import pwd
    if cfg.http.user:
        return cfg.http.user, "[http] user"
    needs: list[tuple[str, int]] = [(paths.lua_dir, 5), (str(Path(paths.lua_dir) / "renderd" / "front.lua"), 4),
                                    (paths.web_dir, 5), (paths.conf_dir, 5)]
    if cfg.store.kind == "disk":
        needs.append((cfg.store.path, 5))
    sockets = []
    endpoint = broker_address(cfg.daemon.broker)
    if endpoint.startswith("ipc://"):
        sockets.append(endpoint[len("ipc://"):])
    if cfg.store.kind == "redis" and redis_settings(cfg.store.url, cfg.store.prefix)["socket"]:
        sockets.append(redis_settings(cfg.store.url, cfg.store.prefix)["socket"])
    why = "no user of " + ", ".join(WORKER_USERS)
    for name in WORKER_USERS:
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            continue
        gids = set(os.getgrouplist(name, pw.pw_gid))
        blocked = next((f"{name} cannot read {where}" for path, bits in needs
                        if (where := _blocked(path, pw.pw_uid, gids, bits))), None)
        for sock in sockets:
            if blocked:
                break
            if not os.path.exists(sock):
                blocked = f"{name} may not be able to connect to {sock} (not there yet)"
            elif where := _blocked(sock, pw.pw_uid, gids, 2):
                blocked = f"{name} cannot connect to {sock} ({where})"
        if blocked is None:
            return f"{name} {grp.getgrgid(pw.pw_gid).gr_name}", "the first of " + ", ".join(WORKER_USERS) \
                + " that can read what nginx serves"
        why = why if why.startswith(WORKER_USERS) else blocked
    return "root", why


def render_conf(cfg: Config, prefix: str | os.PathLike[str], *, lua_dir: str | None = None,
                web_dir: str | None = None, user: str | None = None,
                error_level: str = "warn", access_log: str | None = None,
                extra_locations: str = "") -> str:
    """A whole nginx.conf whose files all live under ``prefix``.

    ``user``: the user (and group) of nginx's worker processes when it
    starts as root (default: ``worker_user``).
    """
    prefix = _path(prefix, "the nginx prefix")
    paths = Paths(conf_dir=prefix, lua_dir=lua_dir or str(share_dir("lua")),
                  web_dir=web_dir or str(share_dir("web")))
    note = "nginx-conf --user"
    if user is None and os.geteuid() == 0:
        user, note = worker_user(cfg, paths)
    if user is not None and not re.fullmatch(_USER_RE, user):
        raise UsageError(f"{user!r} is not a user name")
    http = http_block(cfg, paths, access_log or f"{prefix}/logs/access.log rpy buffer=64k flush=1s",
                      extra_locations)
    return fill(_template("nginx.conf.tmpl"), {
        "config": cfg.path or "the built-in defaults",
        "prefix": prefix,
        "conf": f"{prefix}/nginx.conf",
        "user": f"# workers' user: {note}\nuser {user};\n" if user and os.geteuid() == 0 else "",
        "workers": str(cfg.http.workers),
        "error_level": error_level,
        "http": _indent(http, 4).rstrip("\n"),
    })


SITE_HEADER = """\
# renderd-py site for Debian's nginx (packages nginx, libnginx-mod-http-lua,
# lua-resty-core), generated by `renderd-py nginx-conf --site` from
# {config}.
# Install: renderd-py nginx-conf --site -c CONFIG -o {conf_dir}
#          ln -s {conf_dir}/renderd-py.site /etc/nginx/sites-enabled/renderd-py
#          nginx -t && systemctl reload nginx
# The runtime JSON and TileJSON files named below are written beside it.
# nginx's workers (www-data) must be able to read the store directory.

"""


def render_site(cfg: Config, conf_dir: str | None = None, *, lua_dir: str | None = None,
                web_dir: str | None = None) -> str:
    """The Debian site file: the http-level part only, Debian's paths."""
    conf_dir = conf_dir or SITE_DEFAULTS["conf_dir"]
    paths = Paths(conf_dir=_path(conf_dir, "the configuration directory"),
                  lua_dir=lua_dir or SITE_DEFAULTS["lua_dir"],
                  web_dir=web_dir or SITE_DEFAULTS["web_dir"])
    head = SITE_HEADER.format(config=cfg.path or "the built-in defaults", conf_dir=paths.conf_dir)
    return head + http_block(cfg, paths, SITE_DEFAULTS["access_log"])


# --- writing --------------------------------------------------------------

def _write(path: Path, text: str) -> None:
    """Atomic: a running nginx never reads half a file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_support(cfg: Config, conf_dir: str | os.PathLike[str]) -> list[Path]:
    """The runtime JSON, ``layers.json`` and one TileJSON per layer."""
    d = Path(conf_dir)
    (d / "tilejson").mkdir(parents=True, exist_ok=True)
    out = [d / RUNTIME_JSON, d / "layers.json"]
    _write(out[0], json.dumps(runtime(cfg), indent=2) + "\n")
    _write(out[1], json.dumps(layers_index(cfg), indent=2) + "\n")
    names = set()
    for lyr in cfg.layers:
        p = d / "tilejson" / f"{lyr.name}.json"
        _write(p, json.dumps(tilejson(cfg, lyr), indent=2) + "\n")
        names.add(p.name)
        out.append(p)
    for old in (d / "tilejson").glob("*.json"):   # layers removed from the configuration
        if old.name not in names:
            old.unlink()
    return out


def write_conf(cfg: Config, prefix: str | os.PathLike[str], **kw: Any) -> Path:
    """Everything our own nginx needs under ``prefix``; returns nginx.conf."""
    p = Path(os.path.abspath(os.fspath(prefix)))
    text = render_conf(cfg, p, **kw)   # validates before anything is written
    for sub in ("logs", "tmp"):
        (p / sub).mkdir(parents=True, exist_ok=True)
    write_support(cfg, p)
    conf = p / "nginx.conf"
    _write(conf, text)
    return conf


def write_site(cfg: Config, conf_dir: str | os.PathLike[str], **kw: Any) -> Path:
    d = Path(os.path.abspath(os.fspath(conf_dir)))
    text = render_site(cfg, str(d), **kw)
    d.mkdir(parents=True, exist_ok=True)
    write_support(cfg, d)
    site = d / "renderd-py.site"
    _write(site, text)
    return site


def check_port_free(listen: str) -> None:
    """Raise if ``listen`` cannot be bound (in use, or not an address of this
    machine): a clearer error than nginx's. Binds, sends nothing."""
    from .errors import RenderdError
    host, port = split_hostport(listen)
    host = _ip_or_localhost(host) or "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
    except OSError:
        raise RenderdError(f"{listen}: cannot resolve {host!r}") from None
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(infos[0][4])
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise RenderdError(f"{listen} is already in use by another program") from None
            if e.errno == errno.EADDRNOTAVAIL:
                raise RenderdError(f"{listen} is not an address of this machine") from None
            raise RenderdError(f"cannot listen on {listen}: {e.strerror}") from None


def nginx_size(size: str) -> str:
    """nginx sizes take k and m only: 1g becomes 1024m."""
    m = re.fullmatch(r"(\d+)([kKmMgG]?)", size)
    if not m:
        raise UsageError(f"http.cache_size: {size!r} is not a size such as 64m")
    n, unit = int(m.group(1)), m.group(2).lower()
    if unit == "g":
        return f"{n * 1024}m"
    return f"{n}{unit}"
