"""The user of nginx's worker processes when nginx starts as root: the first
of a few system users that can read everything the workers read."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import Config
from .addresses import broker_address, redis_settings

if TYPE_CHECKING:
    from .conf import Paths

#: tried in this order when nginx starts as root and [http] user is empty
WORKER_USERS = ("www-data", "nobody")
USER_RE = r"[A-Za-z0-9_][A-Za-z0-9_.\-]*( [A-Za-z0-9_][A-Za-z0-9_.\-]*)?"


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
