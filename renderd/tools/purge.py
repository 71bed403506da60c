"""Telling nginx's hot cache about metatiles that changed in the store.

nginx keeps hot metatiles in a shared dict for up to five minutes. After
``expire`` marks metatiles stale or deletes them, or ``seed`` renders stored
ones again, it POSTs their list to nginx's loopback-only ``/purge`` (on the
metrics server, ``[http] metrics``; ``[http] purge_url`` names another
place, ``off`` none), in the ``z/x/y`` line format of expiry lists, one
line per metatile (its first tile)::

    POST http://127.0.0.1:9180/purge?layer=osm&mode=dirty
    12/2048/1360
    12/2056/1360

``dirty`` marks the hot copies stale (served at once while the first
request queues a re-render), ``delete`` drops them. nginx not answering is
no error (it may not be running, or run elsewhere): the caller reports one
warning line, and the hot copies stay until they expire.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request

from ..config import Config
from ..tilemath import Meta

#: metatiles per request
BATCH = 5000
#: the header carrying ``[http] purge_token`` (required by a front from other hosts)
TOKEN_HEADER = "X-Purge-Token"
MODES = ("dirty", "delete")


def purge_urls(cfg: Config) -> list[str]:
    """Where to POST: every front's purge URL (``[http] purge_url``; none for ``off``)."""
    urls = cfg.http.purge_url
    if urls == ("off",):
        return []
    if urls:
        return list(urls)
    from ..errors import UsageError
    from ..nginx import metrics_listen
    try:
        return [f"http://{metrics_listen(cfg)}/purge"]
    except UsageError:   # a metrics address nginx-conf would refuse: no nginx of ours
        return []


def front_purge(cfg: Config, layer: str, mode: str, announce: bool = False) -> "FrontPurge":
    """A ``FrontPurge`` to every front of ``cfg``, with its token."""
    return FrontPurge(purge_urls(cfg), layer, mode, token=cfg.http.purge_token, announce=announce)


class FrontPurge:
    """Tells one front or several (``urls``, each its own batches and
    failure) of the metatiles of one layer: ``add`` each, ``close`` at the end.
    ``purged`` is the metatiles every front acknowledged, ``tiles`` the
    hot-cache entries all of them marked or dropped; ``error`` and
    ``unsent`` come from the fronts that failed."""

    def __init__(self, urls: str | list[str] | None, layer: str, mode: str, batch: int = BATCH,
                 timeout: float = 10.0, announce: bool = False, token: str = ""):
        if mode not in MODES:
            raise ValueError(f"purge mode {mode!r}")
        if isinstance(urls, str):
            urls = [urls]
        self.layer, self.mode = layer, mode
        self.nodes = [_Node(url, layer, mode, batch, timeout, announce, token) for url in urls or ()]

    def add(self, meta: Meta) -> None:
        for node in self.nodes:
            node.add(meta)

    def close(self) -> None:
        for node in self.nodes:
            node.close()

    @property
    def purged(self) -> int:
        return min((n.purged for n in self.nodes), default=0)

    @property
    def tiles(self) -> int:
        return sum(n.tiles for n in self.nodes)

    @property
    def unsent(self) -> int:
        return max((n.unsent for n in self.nodes), default=0)

    @property
    def error(self) -> str | None:
        failed = [n for n in self.nodes if n.error is not None]
        if not failed:
            return None
        return failed[0].error if len(self.nodes) == 1 else "; ".join(f"{n.url}: {n.error}" for n in failed)

    def report(self) -> dict:
        """For a JSON summary (with several fronts, each one's under ``fronts``)."""
        if len(self.nodes) == 1:
            return self.nodes[0].report()
        return {"url": [n.url for n in self.nodes] or None, "mode": self.mode, "metatiles": self.purged,
                "tiles": self.tiles, "unsent": self.unsent, "error": self.error,
                "fronts": [n.report() for n in self.nodes]}

    def line(self) -> str:
        """For a text summary."""
        what = "marked stale" if self.mode == "dirty" else "dropped"
        where = "nginx:    " if len(self.nodes) <= 1 else f"nginx ({len(self.nodes)} fronts):"
        return f"  {where} {self.tiles} hot tiles of {self.purged} metatiles {what}"

    def warning(self) -> str | None:
        """One line for stderr if a front was not told of every metatile (none
        when there were none to tell of: an ingest's empty announcement to a
        front that is not running, which asks the catalog afresh when it starts)."""
        failed = [n for n in self.nodes if n.error is not None and n.unsent]
        if not failed:
            return None
        what = "mark stale" if self.mode == "dirty" else "drop"
        at = ", ".join(n.url for n in failed)
        why = "; ".join(n.error for n in failed)
        return (f"warning: could not tell nginx at {at} to {what} the hot copies of "
                f"{max(n.unsent for n in failed)} metatiles ({why}); nginx serves them until they "
                f"expire (5 minutes)")


class _Node:
    """One front: collects metatiles and sends them in batches; ``close``
    sends the rest. After the first failure nothing more is sent to it:
    ``error`` says why and ``unsent`` how many metatiles it was not told of."""

    def __init__(self, url: str, layer: str, mode: str, batch: int, timeout: float, announce: bool,
                 token: str):
        self.url, self.layer, self.mode = url, layer, mode
        self.headers = {"Content-Type": "text/plain"}
        if token:
            self.headers[TOKEN_HEADER] = token
        # (announce: close() sends even an empty list, so that nginx asks the
        # catalog again for the layer's key combinations: what ingest needs)
        self.announce = announce
        self.sent_any = False
        self.batch, self.timeout = batch, timeout
        self.pending: list[str] = []
        self.purged = 0          # metatiles nginx acknowledged
        self.tiles = 0           # hot-cache entries it marked or dropped
        self.unsent = 0
        self.error: str | None = None

    def add(self, meta: Meta) -> None:
        if self.error is not None:
            self.unsent += 1
            return
        self.pending.append(f"{meta.z}/{meta.x0}/{meta.y0}")
        if len(self.pending) >= self.batch:
            self._send()

    def close(self) -> None:
        if self.error is None and (self.pending or (self.announce and not self.sent_any)):
            self._send()

    def _send(self) -> None:
        lines, self.pending = self.pending, []
        self.sent_any = True
        query = urllib.parse.urlencode({"layer": self.layer, "mode": self.mode})
        sep = "&" if "?" in self.url else "?"
        req = urllib.request.Request(f"{self.url}{sep}{query}", data="".join(f"{ln}\n" for ln in lines).encode(),
                                     method="POST", headers=self.headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                answer = json.loads(r.read() or b"{}")
            self.purged += int(answer.get("metatiles", len(lines)))
            self.tiles += int(answer.get("tiles", 0))
        except urllib.error.HTTPError as e:
            self._failed(len(lines), f"it answered {e.code} {e.reason}")
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            self._failed(len(lines), str(getattr(reason, "strerror", None) or reason))
        except (ValueError, AttributeError):
            self._failed(len(lines), "its answer is not the JSON of renderd-py's /purge")

    def _failed(self, n: int, why: str) -> None:
        self.error = why
        self.unsent += n

    def report(self) -> dict:
        """For a JSON summary."""
        return {"url": self.url, "mode": self.mode, "metatiles": self.purged, "tiles": self.tiles,
                "unsent": self.unsent, "error": self.error}
