"""``renderd-py up``: the whole stack in the foreground under supervisord.

Writes the nginx configuration into the runtime prefix, then starts, in
order and each only once the previous one answers: a local redis-server
(when the store is a Redis URL on this machine and none answers there yet),
the daemon (``renderd-py serve``) and nginx. Prints the URL of the demo map;
Ctrl-C or TERM stops them all.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import click

from .. import nginx
from ..config import Config
from ..errors import RenderdError, UsageError
from ..supervise import Program, Supervisor

NGINX_MODULES = ("/usr/lib/nginx/modules/ndk_http_module.so",
                 "/usr/lib/nginx/modules/ngx_http_lua_module.so")


def _say(msg: str) -> None:
    click.echo(f"renderd-py up: {msg}", err=True)


def _tcp_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# --- the programs -----------------------------------------------------------

def local_redis(cfg: Config) -> dict | None:
    """The Redis settings when the store is a Redis on this machine."""
    if cfg.store.kind != "redis":
        return None
    r = nginx.redis_settings(cfg.store.url, cfg.store.prefix)
    if "cluster" in r:   # (a cluster is run on its own, not by up)
        return None
    if r["socket"] or nginx.is_loopback(r["host"]):
        return r
    return None


def redis_answers(r: dict) -> bool:
    import redis
    kw = {"password": r["password"], "socket_timeout": 1.0, "socket_connect_timeout": 1.0}
    if r["socket"]:
        client = redis.Redis(unix_socket_path=r["socket"], **kw)
    else:
        client = redis.Redis(host=r["host"], port=r["port"], **kw)
    try:
        return bool(client.ping())
    except redis.exceptions.AuthenticationError:
        return True   # a Redis is there; the daemon will say the password is wrong
    except redis.exceptions.RedisError:
        return False
    finally:
        client.close()


def redis_program(r: dict, prefix: Path) -> Program:
    data = prefix / "redis"
    data.mkdir(parents=True, exist_ok=True)
    lines = [f"dir {data}", "daemonize no", 'logfile ""', "protected-mode yes",
             f"databases {max(16, r['db'] + 1)}", "appendonly no"]
    if r["socket"]:
        Path(r["socket"]).parent.mkdir(parents=True, exist_ok=True)
        lines += ["port 0", f"unixsocket {r['socket']}", "unixsocketperm 700"]
    else:
        lines += [f"bind {r['host']}", f"port {r['port']}"]
    if r["password"]:
        lines.append(f'requirepass "{r["password"]}"')
    conf = data / "redis.conf"
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("# written by renderd-py up\n" + "\n".join(lines) + "\n")
    return Program("redis", ["redis-server", str(conf)], ready=lambda: redis_answers(r),
                   ready_timeout=20.0, stopwaitsecs=30)


def daemon_program(cfg: Config) -> Program:
    from ..client import Client
    endpoint = nginx.broker_address(cfg.daemon.broker)
    if endpoint.startswith("ipc://"):
        Path(endpoint[len("ipc://"):]).parent.mkdir(parents=True, exist_ok=True)

    def ready() -> bool:
        # the broker answers at once; the stack is up once the workers have
        # loaded their styles and said READY (a broken style stops the daemon)
        with Client(endpoint, timeout=1.0) as c:
            if not c.ping(1.0):
                return False
            return c.status(1.0)["workers"]["total"] >= cfg.daemon.processes

    return Program("renderd", [sys.executable, "-m", "renderd.cli.main", "serve", "-c", str(cfg.path)],
                   ready=ready, ready_timeout=60.0,
                   stopwaitsecs=int(cfg.daemon.shutdown_timeout) + 5)


def nginx_program(cfg: Config, conf: Path) -> Program:
    host, port = nginx.split_hostport(cfg.http.listen)
    host = "127.0.0.1" if host in ("", "0.0.0.0", "localhost") else ("::1" if host == "::" else host)
    return Program("nginx", ["nginx", "-p", str(conf.parent), "-c", str(conf)],
                   ready=lambda: _tcp_open(host, port), ready_timeout=20.0, stopwaitsecs=10)


# --- checks before anything starts ----------------------------------------

def preflight(cfg: Config) -> None:
    if not shutil.which("nginx"):
        raise RenderdError("nginx is not installed (apt-get install nginx libnginx-mod-http-lua, "
                           "or run scripts/setup)")
    for mod in NGINX_MODULES:
        if not os.path.exists(mod):
            raise RenderdError(f"{mod} is missing (apt-get install libnginx-mod-http-lua)")
    front = nginx.share_dir("lua") / "renderd" / "front.lua"
    if not front.exists():
        raise RenderdError(f"the Lua front {front} is missing")
    if not (nginx.share_dir("web") / "vendor" / "leaflet" / "leaflet.js").exists():
        _say("warning: Leaflet is not installed, the demo map at / will not load "
             "(run scripts/setup-web)")
    nginx.metrics_listen(cfg)   # refuses a non-loopback metrics address
    for what, addr in (("http.listen", cfg.http.listen), ("http.metrics", cfg.http.metrics)):
        try:
            nginx.check_port_free(addr)
        except RenderdError as e:
            raise RenderdError(f"{what}: {e}") from None


def nginx_test(conf: Path) -> None:
    r = subprocess.run(["nginx", "-t", "-q", "-p", str(conf.parent), "-c", str(conf)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        lines = [re.sub(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d (\[\w+\]) \d+#\d+: ", r"\1 ", ln)
                 for ln in r.stderr.splitlines() if ln.strip()]
        raise RenderdError(f"nginx refuses {conf}: {lines[0] if lines else 'nginx -t failed'}")


# --- the command ------------------------------------------------------------

class _Stop(Exception):
    pass


@click.command()
@click.option("-c", "--config", "config_path", metavar="CONFIG", default=None,
              help="configuration file (default: $RENDERD_PY_CONFIG, then "
                   "/etc/renderd-py/renderd-py.toml)")
@click.option("--prefix", metavar="DIR", default=None,
              help="runtime directory (nginx files, logs, supervisord, redis data); "
                   "default: [http] prefix, else beside the store")
@click.pass_context
def command(ctx, config_path, prefix):
    """Run nginx, the daemon and a local redis-server in the foreground."""
    from .. import config as _config
    cfg = _config.load(config_path or (ctx.obj or {}).get("config_path"))
    if not cfg.layers:
        raise UsageError(f"{cfg.path}: no [[layer]] to serve")
    prefix = Path(os.path.abspath(prefix or nginx.default_prefix(cfg)))
    preflight(cfg)
    try:
        prefix.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RenderdError(f"cannot create {prefix}: {e.strerror}") from None
    conf = nginx.write_conf(cfg, prefix)
    nginx_test(conf)

    programs = []
    r = local_redis(cfg)
    if r is not None:
        if redis_answers(r):
            where = r["socket"] or f"{r['host']}:{r['port']}"
            _say(f"using the redis-server already answering at {where}")
        elif not shutil.which("redis-server"):
            raise RenderdError("redis-server is not installed (apt-get install redis-server)")
        else:
            programs.append(redis_program(r, prefix))
    programs += [daemon_program(cfg), nginx_program(cfg, conf)]

    sup = Supervisor(prefix, programs)

    def on_signal(signum, frame):
        raise _Stop()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    names = [{"redis": "redis-server", "renderd": "the daemon", "nginx": "nginx"}[p.name] for p in programs]
    _say(f"starting {', '.join(names[:-1])} and {names[-1]} under supervisord "
         f"(logs in {prefix / 'logs'})")
    try:
        try:
            sup.start()
        except _Stop:
            sup.stop()
            _say("stopped before the stack was up")
            return
        url = nginx.public_url(cfg)
        _say(f"demo map at {url} (TileJSON {url}tiles/{cfg.layers[0].name}.json, "
             f"metrics http://{nginx.metrics_listen(cfg)}/metrics); Ctrl-C stops")
        click.echo(url)
        try:
            while True:
                time.sleep(1.0)
                why = sup.failed()
                if why:
                    for s in old:
                        signal.signal(s, signal.SIG_IGN)
                    sup.stop(timeout=cfg.daemon.shutdown_timeout + 30)
                    raise RenderdError(why)
        except _Stop:
            pass
        # ignore further signals while stopping in order
        for s in old:
            signal.signal(s, signal.SIG_IGN)
        _say("stopping")
        sup.stop(timeout=cfg.daemon.shutdown_timeout + 30)
        _say("stopped")
    finally:
        for s, h in old.items():
            signal.signal(s, h)
