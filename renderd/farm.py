"""The render farm: workers on other hosts, authenticated with ZeroMQ CURVE.

The broker binds a second endpoint for them, ``[daemon] workers_bind``, as
a CURVE server with its key pair (``[daemon] curve_secret``, the
``.key_secret`` file ``renderd-py keygen`` writes; pyzmq's ``zmq.auth``
format). A worker is let in when its public key is one of the ``.key``
files in ``[daemon] authorized_workers`` (read again on HUP); any other
peer fails the handshake and renders nothing, and each unknown key is
logged once. A non-loopback endpoint without CURVE is refused at start.

``renderd-py worker --connect tcp://HOST:PORT --key W.key_secret
--broker-key B.key`` runs the same worker code as the local pool, over
CURVE.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from .errors import ConfigError, UsageError

log = logging.getLogger("renderd.farm")

#: ZAP domain of the workers' endpoint
DOMAIN = "renderd-workers"
#: identities of peers on the workers' endpoint start with this byte
#: (the broker sees one identity space; the daemon routes replies by it)
REMOTE = b"\x01"


def is_local_endpoint(endpoint: str) -> bool:
    """ipc://, inproc:// or tcp:// on a loopback address."""
    if not endpoint.startswith("tcp://"):
        return True
    from .nginx.addresses import is_loopback
    return is_loopback(endpoint[len("tcp://"):].rsplit(":", 1)[0].strip("[]"))


def keygen(directory: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """``DIR/NAME.key`` (public) and ``DIR/NAME.key_secret``; never overwrites."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name) or name in (".", ".."):
        raise UsageError(f"key name {name!r} is not [A-Za-z0-9_.-]{{1,64}}")
    d = Path(directory)
    public, secret = d / f"{name}.key", d / f"{name}.key_secret"
    for p in (public, secret):
        if p.exists():
            raise UsageError(f"{p} exists already; keys are never overwritten")
    d.mkdir(parents=True, exist_ok=True)
    old = os.umask(0o077)
    try:
        made_public, made_secret = zmq.auth.create_certificates(str(d), name)
    finally:
        os.umask(old)
    os.chmod(made_public, 0o644)
    return Path(made_public), Path(made_secret)


def load_secret(path: str) -> tuple[bytes, bytes]:
    """(public, secret) of a ``.key_secret`` file."""
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read the key pair {path}: {e}") from None
    if not secret:
        raise ConfigError(f"{path} holds no secret key (a .key_secret file is needed)")
    return public, secret


def load_public(path: str) -> bytes:
    try:
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read the public key {path}: {e}") from None
    return public


def authorized_keys(directory: str) -> set[bytes]:
    """The public keys (z85) of every ``.key`` file in ``directory``."""
    if not os.path.isdir(directory):
        raise ConfigError(f"{directory} is not a directory of workers' .key files", "daemon.authorized_workers")
    keys = set()
    for p in sorted(Path(directory).glob("*.key")):
        keys.add(load_public(str(p)))
    return keys


class WorkerKeys:
    """The ZAP check of the workers' endpoint: a key of ``directory`` passes;
    an unknown key is refused and logged once. ``reload()`` re-reads it."""

    def __init__(self, directory: str):
        self.directory = directory
        self.keys = authorized_keys(directory)
        self._refused: set[bytes] = set()
        self._lock = threading.Lock()

    def reload(self) -> int:
        keys = authorized_keys(self.directory)
        with self._lock:
            self.keys = keys
            self._refused.clear()
        return len(keys)

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.keys:
            return True
        with self._lock:
            first = key not in self._refused
            self._refused.add(key)
        if first:
            log.warning("refused a worker with an unknown key %s (not in %s)", key.decode(errors="replace"),
                        self.directory)
        return False


class WorkersEndpoint:
    """The second ROUTER, for workers on other hosts; CURVE unless local."""

    def __init__(self, ctx: zmq.Context, endpoint: str, curve_secret: str, authorized: str):
        self.endpoint = endpoint
        self.auth: ThreadAuthenticator | None = None
        self.keys: WorkerKeys | None = None
        if (curve_secret or authorized) and not (curve_secret and authorized):
            raise ConfigError("CURVE needs both daemon.curve_secret and daemon.authorized_workers",
                              "daemon.curve_secret" if not curve_secret else "daemon.authorized_workers")
        if not curve_secret and not is_local_endpoint(endpoint):
            raise ConfigError(f"{endpoint!r} is not a loopback address: workers from other hosts must "
                              "authenticate (set daemon.curve_secret and daemon.authorized_workers; "
                              "renderd-py keygen makes the keys)", "daemon.workers_bind")
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        sock.setsockopt(zmq.SNDHWM, 100_000)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        if curve_secret:
            public, secret = load_secret(curve_secret)
            self.keys = WorkerKeys(authorized)
            self.auth = ThreadAuthenticator(ctx, log=logging.getLogger("renderd.farm.zap"))
            self.auth.start()
            self.auth.configure_curve_callback(domain=DOMAIN, credentials_provider=self.keys)
            sock.setsockopt(zmq.ZAP_DOMAIN, DOMAIN.encode())
            sock.curve_publickey = public
            sock.curve_secretkey = secret
            sock.curve_server = True
        self.sock = sock

    def bind(self) -> None:
        try:
            self.sock.bind(self.endpoint)
        except zmq.ZMQError as e:
            from .errors import DaemonError
            raise DaemonError(f"cannot bind {self.endpoint}: {e}") from None

    def reload(self) -> None:
        if self.keys is not None:
            n = self.keys.reload()
            log.info("authorized workers re-read: %d keys", n)

    def close(self) -> None:
        self.sock.close(0)
        if self.auth is not None:
            self.auth.stop()
