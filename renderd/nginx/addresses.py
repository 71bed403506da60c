"""Addresses: the front's listen lines, the broker and Redis as nginx's Lua
reaches them, and whether an address is free or loopback."""

from __future__ import annotations

import errno
import ipaddress
import re
import socket
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from ..config import Config
from ..errors import RenderdError, UsageError


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
    if not is_loopback(host) and not cfg.http.purge_token:
        raise UsageError(f"http.metrics: {cfg.http.metrics!r} is not a loopback address "
                         "(metrics and purges are served on 127.0.0.1, ::1 or localhost only, "
                         "unless [http] purge_token is set)")
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
    if url.startswith("redis+cluster://"):
        return _cluster_settings(url, prefix)
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


def _cluster_settings(url: str, prefix: str) -> dict[str, Any]:
    """``redis+cluster://[:password@]host:port,...``: the seed nodes and the
    metatiles per side of a block (renderd/store/redis_cluster.py); host
    and port are the first seed's."""
    from ..errors import StoreError
    from ..store.redis_cluster import BLOCK, parse_cluster_url
    try:
        nodes, password = parse_cluster_url(url)
    except StoreError as e:
        raise UsageError(f"store.url: {e}") from None
    seeds = [{"host": _ip_or_localhost(h), "port": p} for h, p in nodes]
    return {"kind": "redis", "host": seeds[0]["host"], "port": seeds[0]["port"], "db": 0,
            "password": password, "prefix": prefix, "socket": None, "cluster": seeds, "block": BLOCK}


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


def check_port_free(listen: str) -> None:
    """Raise if ``listen`` cannot be bound (in use, or not an address of this
    machine): a clearer error than nginx's. Binds, sends nothing."""
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
