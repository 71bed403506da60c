"""The whole stack on a Redis Cluster (3 masters, a replica each): tiles
rendered through nginx are stored across the masters and served from them;
when a master's process is killed, the tiles of the other masters are still
served from the store and the dead master's get a prompt answer (the hot
cache's stale copy; a 503 with Retry-After for a tile nothing holds: its
render cannot be stored), and once
its replica has taken over everything is served from the store again and
new renders are stored."""

from __future__ import annotations

import time

from renderd.store.redis_cluster import RedisClusterStore
from renderd.tilemath import metatile_of

# one tile in each of the 16 blocks of zoom 8 (a block: 8x8 metatiles, 64x64 tiles)
TILES = [(8, bx * 64 + 9, by * 64 + 17) for bx in range(4) for by in range(4)]


def path(z, x, y) -> str:
    return f"/tiles/world/{z}/{x}/{y}.png"


def master_of(store: RedisClusterStore, tile) -> int:
    key = store.pack_keys("world", metatile_of(*tile, 8))[0]
    return store._r.get_node_from_key(key).port


def wait_for(stack, tile, want: set[str], timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        r = stack.get(path(*tile), timeout=30)
        if (r.status == 200 and r.headers.get("x-cache") in want) or time.monotonic() > deadline:
            return r
        time.sleep(0.2)


def test_stack_on_a_cluster_serves_through_a_master_failing(stack_factory, redis_cluster_servers):
    cluster = redis_cluster_servers
    stack = stack_factory(store="redis", redis_url=cluster.url, http="hot_ttl = 0.001", expect_errors=True)
    for tile in TILES:
        r = stack.get(path(*tile))
        assert r.status == 200 and r.headers["x-cache"] == "RENDER", (tile, r.status, r.headers)
    for tile in TILES:
        assert wait_for(stack, tile, {"STORE"}).headers["x-cache"] == "STORE", tile

    store = RedisClusterStore(cluster.url, prefix="t")
    try:
        owners = {tile: master_of(store, tile) for tile in TILES}
    finally:
        store.close()
    assert len(set(owners.values())) >= 2, owners   # (16 blocks over 3 masters)
    dead = max(set(owners.values()), key=list(owners.values()).count)
    lost = [t for t in TILES if owners[t] == dead]
    kept = [t for t in TILES if owners[t] != dead]

    cluster.kill_master(dead)
    # meanwhile: the other masters' tiles come from the store; the dead
    # master's get a prompt answer (the hot cache's copy, a render served
    # from the daemon's reply, or 503 with Retry-After), never a hang
    for tile in kept:
        r = stack.get(path(*tile), timeout=30)
        assert r.status == 200 and r.headers["x-cache"] in ("STORE", "STALE", "HIT"), (tile, r.status, r.headers)
    for tile in lost:
        t0 = time.monotonic()
        r = stack.get(path(*tile), timeout=40)
        assert time.monotonic() - t0 < 35
        assert r.status in (200, 503), (tile, r.status, r.body[:200])
        if r.status == 503:
            assert r.headers.get("retry-after")

    # a tile of the dead master's that nothing holds: rendered, and served
    # from the daemon's reply though the store cannot keep it, or a 503
    z, x, y = lost[0]
    t0 = time.monotonic()
    r = stack.get(path(z, x, y + 8), timeout=60)
    assert time.monotonic() - t0 < 45
    assert (r.status, r.headers.get("x-cache")) == (200, "RENDER") or \
        (r.status == 503 and r.headers.get("retry-after")), (r.status, r.headers, r.body[:200])

    cluster.wait_failover(dead)
    # after the replica took over: everything from the store again
    for tile in lost + kept:
        r = wait_for(stack, tile, {"STORE"}, timeout=40)
        assert r.status == 200 and r.headers["x-cache"] == "STORE", (tile, r.status, r.headers)
    # and a new render in one of the dead master's blocks is stored on its replica
    z, x, y = lost[0]
    fresh = (z, x + 8, y)    # the next metatile of the same block
    r = stack.get(path(*fresh), timeout=60)
    assert r.status == 200 and r.headers["x-cache"] == "RENDER", (r.status, r.headers)
    assert wait_for(stack, fresh, {"STORE"}).headers["x-cache"] == "STORE"
