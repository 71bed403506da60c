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
MODES = ("dirty", "delete")


def purge_url(cfg: Config) -> str | None:
    """Where to POST, or None (``[http] purge_url = "off"``)."""
    if cfg.http.purge_url == "off":
        return None
    if cfg.http.purge_url:
        return cfg.http.purge_url
    from ..nginx import metrics_listen
    from ..errors import UsageError
    try:
        return f"http://{metrics_listen(cfg)}/purge"
    except UsageError:   # a metrics address nginx-conf would refuse: no nginx of ours
        return None


class FrontPurge:
    """Collects metatiles of one layer (``add``) and sends them in batches;
    ``close`` sends the rest. After the first failure nothing more is sent:
    ``error`` says why and ``unsent`` how many metatiles nginx was not told of."""

    def __init__(self, url: str | None, layer: str, mode: str, batch: int = BATCH, timeout: float = 10.0,
                 announce: bool = False):
        if mode not in MODES:
            raise ValueError(f"purge mode {mode!r}")
        self.url, self.layer, self.mode = url, layer, mode
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
        if self.url is None:
            return
        if self.error is not None:
            self.unsent += 1
            return
        self.pending.append(f"{meta.z}/{meta.x0}/{meta.y0}")
        if len(self.pending) >= self.batch:
            self._send()

    def close(self) -> None:
        if self.error is None and self.url is not None and (self.pending or (self.announce and not self.sent_any)):
            self._send()

    def _send(self) -> None:
        lines, self.pending = self.pending, []
        self.sent_any = True
        query = urllib.parse.urlencode({"layer": self.layer, "mode": self.mode})
        sep = "&" if "?" in self.url else "?"
        req = urllib.request.Request(f"{self.url}{sep}{query}", data="".join(f"{ln}\n" for ln in lines).encode(),
                                     method="POST", headers={"Content-Type": "text/plain"})
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

    def line(self) -> str:
        """For a text summary."""
        what = "marked stale" if self.mode == "dirty" else "dropped"
        return f"  nginx:     {self.tiles} hot tiles of {self.purged} metatiles {what}"

    def warning(self) -> str | None:
        """One line for stderr if nginx was not told of every metatile (none
        when there were none to tell of: an ingest's empty announcement to a
        front that is not running, which asks the catalog afresh when it starts)."""
        if self.error is None or self.unsent == 0:
            return None
        what = "mark stale" if self.mode == "dirty" else "drop"
        return (f"warning: could not tell nginx at {self.url} to {what} the hot copies of "
                f"{self.unsent} metatiles ({self.error}); nginx serves them until they expire "
                f"(5 minutes)")
