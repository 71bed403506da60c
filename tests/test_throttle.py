"""Per-client render throttling in the front ([http] render_rate and
render_burst) through the whole stack: a client over its rate gets 429
with Retry-After and its stored tiles still, while another client's
renders go through."""

from __future__ import annotations

import http.client
import re
import time

import pytest

pytestmark = pytest.mark.slow


def get_from(stack, source: str, path: str) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=60, source_address=(source, 0))
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def metatile_paths(row: int) -> list[str]:
    """One tile of each of the 8 metatiles along a row of zoom 6."""
    return [f"/tiles/world/6/{8 * i + 3}/{8 * row + 3}.png" for i in range(8)]


def test_a_client_over_its_render_rate_is_throttled_and_others_are_not(stack_factory):
    s = stack_factory(http="render_rate = 0.2\nrender_burst = 2\n")
    crawler = [get_from(s, "127.0.0.1", p) for p in metatile_paths(2)]
    codes = [c for c, _, _ in crawler]
    # the first renders (the burst, and one more at most) go through, the rest is refused
    assert codes[:2] == [200, 200] and codes[-4:] == [429] * 4, codes
    status, headers, body = crawler[-1]
    assert int(headers["retry-after"]) >= 1 and len(body) < 200
    assert b"too many renders" in body
    # its stored and hot tiles are still served
    assert get_from(s, "127.0.0.1", metatile_paths(2)[0])[0] == 200
    # another address renders meanwhile
    other = [get_from(s, "127.0.0.2", p)[0] for p in metatile_paths(4)[:2]]
    assert other == [200, 200]
    assert throttled(s) >= 4


def throttled(stack, wait: float = 5.0) -> float:
    """renderd_throttled_total, once the nginx workers have flushed their counters."""
    deadline = time.monotonic() + wait
    while True:
        text = stack.get(stack.metrics_url).body.decode()
        m = re.search(r'^renderd_throttled_total (\S+)$', text, re.M)
        n = float(m.group(1)) if m else 0.0
        if n >= 4 or time.monotonic() > deadline:
            return n
        time.sleep(0.2)


def test_no_limit_by_default(stack):
    codes = [stack.get(p).status for p in metatile_paths(1)]
    assert codes == [200] * 8
