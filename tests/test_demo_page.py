"""The demo map at / in a real browser: Debian's headless Chromium loads the
page served by the whole stack (``renderd-py up``: nginx + Lua, the daemon,
Mapnik rendering Natural Earth), and the screenshot must show the tiles:
the sea and land colours of styles/world.xml over a good part of the map."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

#: styles/world.xml: the map's background (sea) and the land fill
SEA = (0xAA, 0xD3, 0xDF)
LAND = (0xF2, 0xEF, 0xE9)
#: what the page shows where there is no tile (web/style.css, #map background)
NO_TILE = (0xDD, 0xE3, 0xE8)


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def leaflet():
    """Leaflet in web/vendor/ (scripts/setup-web; idempotent, from the npm registry)."""
    if not (ROOT / "web" / "vendor" / "leaflet" / "leaflet.js").exists():
        r = subprocess.run([str(ROOT / "scripts" / "setup-web")], capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, f"scripts/setup-web failed: {r.stderr.strip()}"


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("chromium is not installed (apt-get install chromium)")


def browse(url: str, tmp: Path, *extra: str, budget_ms: int = 20000) -> subprocess.CompletedProcess:
    args = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--disable-dev-shm-usage", "--hide-scrollbars",
            f"--user-data-dir={tmp / 'profile'}", "--window-size=800,600",
            f"--virtual-time-budget={budget_ms}", *extra, url]
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


def read_png(path: Path) -> np.ndarray:
    import mapnik
    im = mapnik.Image.open(str(path))
    return np.frombuffer(im.to_string(), np.uint8).reshape(im.height(), im.width(), 4)[:, :, :3]


def share(img: np.ndarray, rgb: tuple[int, int, int], tol: int = 6) -> float:
    """Fraction of the pixels within ``tol`` of ``rgb`` on every channel."""
    near = np.all(np.abs(img.astype(int) - np.array(rgb)) <= tol, axis=2)
    return float(near.mean())


def test_demo_map_shows_rendered_tiles(stack, tmp_path):
    shot = tmp_path / "demo.png"
    r = browse(stack.url, tmp_path, f"--screenshot={shot}")
    assert shot.exists(), f"no screenshot: {r.stderr[-2000:]}"
    img = read_png(shot)
    assert img.shape == (600, 800, 3)
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 50, "the page is (nearly) uniform"
    sea, land, empty = share(img, SEA), share(img, LAND), share(img, NO_TILE)
    # the world at zoom 2: mostly sea, a good deal of land, few empty spots
    assert sea > 0.25, f"sea covers {sea:.0%} of the screenshot"
    assert land > 0.10, f"land covers {land:.0%} of the screenshot"
    assert empty < 0.35, f"{empty:.0%} of the screenshot has no tile"
    # the tiles came from the stack, through the Lua front
    log = (stack.prefix / "logs" / "access.log")
    text = ""
    for _ in range(30):                       # the access log is buffered (flush=1s) in each worker
        text = log.read_text() if log.exists() else ""
        if "/tiles/world/" in text and "/demo/vendor/leaflet/leaflet.js" in text:
            break
        import time
        time.sleep(0.2)
    tiles = re.findall(r'"GET /tiles/world/(\d+)/\d+/\d+\.png HTTP/1\.1" (\d+) \d+ (\w+)', text)
    assert tiles, text[-2000:]
    assert all(status == "200" for _, status, _ in tiles), tiles
    assert {xcache for _, _, xcache in tiles} <= {"RENDER", "HIT", "STORE"}
    assert '"GET /demo/vendor/leaflet/leaflet.js HTTP/1.1" 200' in text


def test_demo_page_dom(stack, tmp_path):
    """The page found the layer through layers.json and its TileJSON, and Leaflet loaded tiles."""
    r = browse(stack.url, tmp_path, "--dump-dom", budget_ms=15000)
    dom = r.stdout
    assert "data-error" not in dom, re.findall(r'data-error="[^"]*"', dom)
    m = re.search(r'data-tiles-loaded="(\d+)"', dom)
    assert m and int(m.group(1)) >= 4, dom[-3000:]
    assert "data-tile-errors" not in dom
    assert 'id="layer-name">· world<' in dom
    srcs = re.findall(r'<img[^>]+src="([^"]+)"[^>]+leaflet-tile-loaded', dom)
    assert srcs and all(s.startswith(stack.url + "tiles/world/2/") for s in srcs), srcs
