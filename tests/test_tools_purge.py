"""renderd.tools.purge: what expire and seed send to nginx's /purge, and
what they say when nginx does not answer."""

from __future__ import annotations

import http.server
import json
import threading

import pytest

from renderd import config as _config
from renderd.tilemath import Meta
from renderd.tools.purge import TOKEN_HEADER, FrontPurge, front_purge, purge_urls
from tests.fixtures.servers import free_port


class FakePurge(http.server.BaseHTTPRequestHandler):
    posts: list[tuple[str, list[str]]] = []
    tokens: list[str | None] = []
    status = 200

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        lines = body.splitlines()
        FakePurge.posts.append((self.path, lines))
        FakePurge.tokens.append(self.headers.get(TOKEN_HEADER))
        self.send_response(FakePurge.status)
        self.end_headers()
        self.wfile.write(json.dumps({"metatiles": len(lines), "tiles": 64 * len(lines),
                                     "malformed": 0}).encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_nginx():
    FakePurge.posts, FakePurge.tokens, FakePurge.status = [], [], 200
    srv = http.server.HTTPServer(("127.0.0.1", 0), FakePurge)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/purge"
    srv.shutdown()
    srv.server_close()


def test_batches_and_counts(fake_nginx):
    front = FrontPurge(fake_nginx, "osm", "dirty", batch=3)
    for i in range(7):
        front.add(Meta(12, 8 * i, 16, 8))
    front.close()
    assert [p for p, _ in FakePurge.posts] == ["/purge?layer=osm&mode=dirty"] * 3
    assert [len(lines) for _, lines in FakePurge.posts] == [3, 3, 1]
    assert FakePurge.posts[0][1] == ["12/0/16", "12/8/16", "12/16/16"]
    assert (front.purged, front.tiles, front.unsent, front.warning()) == (7, 7 * 64, 0, None)
    assert front.line() == "  nginx:     448 hot tiles of 7 metatiles marked stale"


def test_nothing_to_say_sends_nothing(fake_nginx):
    front = FrontPurge(fake_nginx, "osm", "delete")
    front.close()
    assert FakePurge.posts == [] and front.warning() is None


def test_nginx_not_running_is_one_warning():
    url = f"http://127.0.0.1:{free_port()}/purge"
    front = FrontPurge(url, "osm", "delete", batch=2)
    for i in range(5):
        front.add(Meta(10, 8 * i, 0, 8))
    front.close()
    assert front.unsent == 5 and front.purged == 0
    w = front.warning()
    assert w.startswith(f"warning: could not tell nginx at {url} to drop the hot copies of 5 metatiles")
    assert "refused" in w.lower() and "\n" not in w


def test_an_error_answer_stops_sending(fake_nginx):
    FakePurge.status = 400
    front = FrontPurge(fake_nginx, "osm", "dirty", batch=1)
    for i in range(3):
        front.add(Meta(10, 8 * i, 0, 8))
    front.close()
    assert len(FakePurge.posts) == 1
    assert front.unsent == 3 and "it answered 400" in front.warning()


def test_purge_url_from_the_configuration():
    def urls(http):
        return purge_urls(_config.parse({"http": http}, None, {}, check_files=False))
    assert urls({"metrics": "127.0.0.1:9281"}) == ["http://127.0.0.1:9281/purge"]
    assert urls({"metrics": "[::1]:9281"}) == ["http://[::1]:9281/purge"]
    assert urls({"purge_url": "http://10.0.0.5:9180/purge"}) == ["http://10.0.0.5:9180/purge"]
    assert urls({"purge_url": ["http://a:9180/purge", "http://b:9180/purge"]}) == \
        ["http://a:9180/purge", "http://b:9180/purge"]
    assert urls({"purge_url": "off"}) == []
    front = FrontPurge(None, "osm", "dirty")
    front.add(Meta(1, 0, 0, 2))
    front.close()
    assert front.warning() is None and front.unsent == 0 and front.report()["url"] is None
    for bad in ("ftp://x", ["http://a/purge", "gopher://b"], 5):
        with pytest.raises(_config.ConfigError, match="http.purge_url"):
            _config.parse({"http": {"purge_url": bad}}, None, {}, check_files=False)


def test_every_front_is_told_with_the_token(fake_nginx):
    down = f"http://127.0.0.1:{free_port()}/purge"
    cfg = _config.parse({"http": {"purge_url": [fake_nginx, fake_nginx + "?node=2", down],
                                  "purge_token": "s3cret"}}, None, {}, check_files=False)
    front = front_purge(cfg, "osm", "dirty")
    for i in range(3):
        front.add(Meta(10, 8 * i, 0, 8))
    front.close()
    assert sorted(p for p, _ in FakePurge.posts) == ["/purge?layer=osm&mode=dirty",
                                                    "/purge?node=2&layer=osm&mode=dirty"]
    assert FakePurge.tokens == ["s3cret", "s3cret"]
    assert (front.purged, front.tiles, front.unsent) == (0, 2 * 3 * 64, 3)
    report = front.report()
    assert report["url"] == [fake_nginx, fake_nginx + "?node=2", down]
    assert [f["metatiles"] for f in report["fronts"]] == [3, 3, 0]
    w = front.warning()
    assert w.startswith(f"warning: could not tell nginx at {down} to mark stale the hot copies of 3 ")
    assert "\n" not in w
    assert front.line() == "  nginx (3 fronts): 384 hot tiles of 0 metatiles marked stale"
