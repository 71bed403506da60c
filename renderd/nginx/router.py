"""``renderd-py nginx-conf --router NODE,...``: an nginx that sends each
metatile's tiles to one cache node with nginx's consistent hashing.

The nodes are fronts of the same stack (``renderd-py nginx-conf`` on each,
sharing the broker and the store); the router listens on ``[http] listen``
and keys every tile request by its metatile (``lua/renderd/route.lua``), so
each node's hot cache holds whole metatiles and a part of the map no other
node holds. Tools tell every node of changed metatiles through ``[http]
purge_url`` (a list of the nodes' purge URLs)::

    PREFIX/nginx.conf  route.json  logs/  tmp/
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..config import Config
from ..errors import UsageError
from .addresses import nginx_listen, split_hostport
from .conf import Paths, _path, _template, _write, fill, nginx_frame, share_dir
from .runtime_json import layer_runtime
from .user import worker_user

ROUTE_JSON = "route.json"
_NODE = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(\d{1,5})")


def parse_nodes(text: str) -> list[str]:
    """``HOST:PORT,HOST:PORT,...`` (at least one; IPv6 in brackets)."""
    nodes = [n.strip() for n in text.split(",") if n.strip()]
    if not nodes:
        raise UsageError("--router: name at least one node as HOST:PORT")
    for n in nodes:
        m = _NODE.fullmatch(n)
        if not m or not 0 < int(m.group(2)) < 65536:
            raise UsageError(f"--router: {n!r} is not HOST:PORT")
    if len(set(nodes)) != len(nodes):
        raise UsageError("--router: a node is named twice")
    return nodes


def render_router(cfg: Config, nodes: list[str], prefix: str | os.PathLike[str], *,
                  lua_dir: str | None = None, user: str | None = None) -> str:
    prefix = _path(prefix, "the nginx prefix")
    lua = _path(lua_dir or share_dir("lua"), "the Lua directory")
    note = "nginx-conf --user"
    if user is None and os.geteuid() == 0:
        user, note = worker_user(cfg, Paths(conf_dir=prefix, lua_dir=lua, web_dir=lua))
    host, port = split_hostport(cfg.http.listen)
    http = fill(_template("router.tmpl"), {
        "lua_dir": lua,
        "route_json": f"{prefix}/{ROUTE_JSON}",
        "servers": "".join(f"    server {n} max_fails=1 fail_timeout=5s;\n" for n in nodes),
        "listen": nginx_listen(host, port),
        "access_log": f"{prefix}/logs/access.log rpy_router buffer=64k flush=1s",
        "read_timeout": f"{cfg.http.timeout + 5:g}",
    })
    return nginx_frame(cfg, prefix, http, user=user, note=note)


def write_router(cfg: Config, nodes: list[str], prefix: str | os.PathLike[str], **kw) -> Path:
    """nginx.conf and route.json under ``prefix``; returns nginx.conf."""
    p = Path(os.path.abspath(os.fspath(prefix)))
    text = render_router(cfg, nodes, p, **kw)
    for sub in ("logs", "tmp"):
        (p / sub).mkdir(parents=True, exist_ok=True)
    _write(p / ROUTE_JSON, json.dumps({"layers": [layer_runtime(cfg, lyr) for lyr in cfg.layers]},
                                      indent=2) + "\n")
    conf = p / "nginx.conf"
    _write(conf, text)
    return conf
