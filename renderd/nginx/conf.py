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

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import UsageError
from .addresses import metrics_listen, nginx_listen, resolver_directive, split_hostport
from .runtime_json import RUNTIME_JSON, layers_index, runtime, tilejson
from .standards import WMTS_CAPABILITIES, ogcapi_documents, wmts_capabilities
from .user import USER_RE, worker_user

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
        "real_ip": "".join(f"set_real_ip_from {a};\n" for a in cfg.http.real_ip_from)
                   + ("real_ip_header X-Forwarded-For;\nreal_ip_recursive on;\n" if cfg.http.real_ip_from else ""),
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
    http = http_block(cfg, paths, access_log or f"{prefix}/logs/access.log rpy buffer=64k flush=1s",
                      extra_locations)
    return nginx_frame(cfg, prefix, http, user=user, note=note, error_level=error_level)


def nginx_frame(cfg: Config, prefix: str, http: str, *, user: str | None, note: str,
                error_level: str = "warn") -> str:
    """A whole nginx.conf around the http-level part ``http``, its files under ``prefix``."""
    if user is not None and not re.fullmatch(USER_RE, user):
        raise UsageError(f"{user!r} is not a user name")
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


def _write_tree(d: Path, files: dict[str, str]) -> list[Path]:
    """Write ``files`` (relative path: text) under ``d``, and remove the
    other ``.json`` files there (of layers removed from the configuration)."""
    out = []
    for rel, text in files.items():
        p = d / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        _write(p, text)
        out.append(p)
    for old in d.rglob("*.json"):
        if old not in out:
            old.unlink()
    return out


def _json(doc: Any) -> str:
    return json.dumps(doc, indent=2) + "\n"


def write_support(cfg: Config, conf_dir: str | os.PathLike[str]) -> list[Path]:
    """The runtime JSON, ``layers.json``, one TileJSON per layer, and the
    documents of the WMTS and OGC API - Tiles interfaces (renderd/nginx/standards.py)."""
    d = Path(conf_dir)
    d.mkdir(parents=True, exist_ok=True)
    out = [d / RUNTIME_JSON, d / "layers.json", d / WMTS_CAPABILITIES]
    _write(out[0], _json(runtime(cfg, docs_dir=str(d))))
    _write(out[1], _json(layers_index(cfg)))
    out[2].parent.mkdir(parents=True, exist_ok=True)
    _write(out[2], wmts_capabilities(cfg))
    out += _write_tree(d / "tilejson", {f"{lyr.name}.json": _json(tilejson(cfg, lyr)) for lyr in cfg.layers})
    out += _write_tree(d / "ogcapi", {f"{rel}.json": _json(doc) for rel, doc in ogcapi_documents(cfg).items()})
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


def nginx_size(size: str) -> str:
    """nginx sizes take k and m only: 1g becomes 1024m."""
    m = re.fullmatch(r"(\d+)([kKmMgG]?)", size)
    if not m:
        raise UsageError(f"http.cache_size: {size!r} is not a size such as 64m")
    n, unit = int(m.group(1)), m.group(2).lower()
    if unit == "g":
        return f"{n * 1024}m"
    return f"{n}{unit}"

