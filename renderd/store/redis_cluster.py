"""The Redis store on a Redis Cluster: the same packs and pool, one pool per block of metatiles.

A cluster runs a script only on keys of one hash slot, and the Redis
store's scripts change a pack and the pool's counts in one step. So every
key carries a hash tag naming its **block**, ``BLOCK`` x ``BLOCK``
metatiles of a layer at one zoom, and each block has its own pool::

    {prefix}:{{layer}:{z}:{bx}:{by}}:pk:{layer}:{z}:{mx}:{my}   a metatile's pack (or its first bytes)
    {prefix}:{{layer}:{z}:{bx}:{by}}:pt:{layer}:{z}:{mx}:{my}   the rest of the pack
    {prefix}:{{layer}:{z}:{bx}:{by}}:pool:{hash}                a tile the block's packs share
    {prefix}:{{layer}:{z}:{bx}:{by}}:gc:active, :gc:seen, :gc:count   while a collection runs

with ``bx = mx // BLOCK`` and ``by = my // BLOCK``. Everything a script
touches hashes to one slot, so writes stay atomic per metatile and the
counts exact; deduplication holds within a block (a tile repeated across
blocks, the sea, is stored once per block: docs/storage.md has the
measured cost). The scripts are those of the single server, given the
block's namespace as their prefix (``namespace``). The collector works
slot by slot (``CLUSTER GETKEYSINSLOT``), one pass per block; readers of
every pack (``iter_indexes``, ``iter_sizes``) go a block at a time too.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from fnmatch import fnmatchcase
from urllib.parse import unquote

import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from ..errors import StoreError
from ..tilemath import Meta
from .base import GCStats, check_layer
from .pack import Pack
from .redis import BATCH, SCRIPTS, RedisStore

#: Metatiles per side of a block, the unit of one pool (and of one hash slot).
BLOCK = 8

_HOST_PORT = re.compile(r"\[?([^\[\]]+?)\]?:(\d{1,5})")


def parse_cluster_url(url: str) -> tuple[list[tuple[str, int]], str | None]:
    """``redis+cluster://[:PASSWORD@]HOST:PORT,HOST:PORT,...`` as the seed
    nodes and the password; ``StoreError`` if it is not one."""
    if not url.startswith("redis+cluster://"):
        raise StoreError(f"bad redis cluster url {url!r}: it must start with redis+cluster://")
    rest = url[len("redis+cluster://"):].rstrip("/")
    password = None
    if "@" in rest:
        auth, rest = rest.rsplit("@", 1)
        user, _, pw = auth.partition(":")
        if user:
            raise StoreError(f"bad redis cluster url {url!r}: give a password only (:PASSWORD@)")
        password = unquote(pw) or None
    rest = rest.removesuffix("/0")
    nodes = []
    for part in rest.split(","):
        m = _HOST_PORT.fullmatch(part.strip())
        if not m or not 0 < int(m.group(2)) < 65536:
            raise StoreError(f"bad redis cluster url {url!r}: {part!r} is not HOST:PORT")
        nodes.append((m.group(1), int(m.group(2))))
    return nodes, password


def block_tag(layer: str, meta: Meta) -> str:
    """The hash tag of ``meta``'s block (without its braces)."""
    return f"{check_layer(layer)}:{meta.z}:{meta.mx // BLOCK}:{meta.my // BLOCK}"


class RedisClusterStore(RedisStore):
    """The Redis store's packs and pools on a Redis Cluster; see the module docstring."""

    def __init__(self, url: str, prefix: str = "rpy", timeout: float = 5.0):  # (no connection pool: see _open)
        self.prefix = prefix
        self.url = url
        self.nodes, self._password = parse_cluster_url(url)
        self._timeout = timeout
        self.where = ",".join(f"{h}:{p}" for h, p in self.nodes)
        self._client: RedisCluster | None = None

    def __repr__(self) -> str:
        return f"RedisClusterStore({self.where!r}, prefix={self.prefix!r})"

    def __getattr__(self, name: str):
        # the client and its scripts, made at first use (the cluster's
        # layout is read then, so opening the store needs no server)
        if name == "_r" or name in SCRIPTS:
            self._open()
            return self.__dict__[name]
        raise AttributeError(name)

    def _open(self) -> None:
        try:
            client = RedisCluster(
                startup_nodes=[ClusterNode(h, p) for h, p in self.nodes], password=self._password,
                socket_timeout=self._timeout, socket_connect_timeout=min(self._timeout, 2.0),
                retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 3))
        except RedisClusterException:   # (no seed node answered)
            raise StoreError(f"redis cluster at {self.where} is not reachable") from None
        except redis.exceptions.AuthenticationError:
            raise StoreError(f"redis cluster at {self.where} refused the credentials") from None
        except redis.exceptions.RedisError as e:
            raise StoreError(f"redis cluster at {self.where}: {str(e).splitlines()[0]}") from None
        self.__dict__["_r"] = client
        for attr, text in SCRIPTS.items():
            self.__dict__[attr] = client.register_script(text)
        self._client = client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
            for attr in ("_r", *SCRIPTS):
                self.__dict__.pop(attr, None)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            with super()._errors():
                yield
        except RedisClusterException as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise StoreError(f"redis cluster at {self.where}: {msg}") from None

    # --- keys ------------------------------------------------------------
    def namespace(self, layer: str, meta: Meta) -> str:
        return f"{self.prefix}:{{{block_tag(layer, meta)}}}"

    def pack_pattern(self, layer: str, zoom: int | None) -> str:
        tag = f"{check_layer(layer)}:" + ("*" if zoom is None else f"{int(zoom)}:*")
        return f"{self.prefix}:{{{tag}}}:pk:*"

    def ping(self) -> None:
        with self._errors():
            self._r.ping(target_nodes=RedisCluster.PRIMARIES)

    # --- reading ---------------------------------------------------------
    def _pack_heads(self, pairs: list[list[str]], metas: list[Meta | None]) -> list[Pack | None]:
        """As on one server, one script call per hash slot among ``pairs``."""
        slots: dict[int, list[int]] = {}
        for i, (key, _) in enumerate(pairs):
            slots.setdefault(self._r.keyslot(key), []).append(i)
        out: list[Pack | None] = [None] * len(pairs)
        for members in slots.values():
            got = super()._pack_heads([pairs[i] for i in members], [metas[i] for i in members])
            for i, pack in zip(members, got):
                out[i] = pack
        return out

    def _packs(self, layer: str, zoom: int | None) -> Iterator[Pack]:
        """As on one server, a block at a time (one script call reads the
        heads of a block's packs, where SCAN's batches mix every slot)."""
        pattern = self.pack_pattern(layer, zoom)
        for _, keys in self._blocks(f"{self.prefix}:{{"):
            wanted = [k for k in keys if fnmatchcase(k, pattern)]
            for i in range(0, len(wanted), BATCH):
                chunk = wanted[i:i + BATCH]
                pairs = [[k, k.replace(":pk:", ":pt:", 1)] for k in chunk]
                for key, pack in zip(chunk, super()._pack_heads(pairs, [None] * len(chunk))):
                    if pack is not None and self._key_matches(key, layer, pack.index.meta):
                        yield pack

    # --- consistency pass ------------------------------------------------
    def collect_garbage(self) -> GCStats:
        """The single server's pass, once per block, a hash slot at a time:
        each master's slots that hold keys of this store, their keys by
        ``CLUSTER GETKEYSINSLOT``, grouped by block."""
        total, fixed, missing = GCStats(), 0, 0
        head = f"{self.prefix}:{{"
        for ns, keys in self._blocks(head):
            packs = [k for k in keys if k[len(ns):len(ns) + 4] == ":pk:"]
            pools = [k for k in keys if k[len(ns):len(ns) + 6] == ":pool:"]
            stats, fx, miss = self._collect(
                ns, (packs[i:i + BATCH] for i in range(0, len(packs), BATCH)),
                lambda pools=pools: (pools[i:i + BATCH] for i in range(0, len(pools), BATCH)))
            total.blobs_seen += stats.blobs_seen
            total.blobs_deleted += stats.blobs_deleted
            total.bytes_freed += stats.bytes_freed
            fixed, missing = fixed + fx, missing + miss
        self._report(fixed, missing)
        return total

    def _blocks(self, head: str) -> Iterator[tuple[str, list[str]]]:
        """(namespace, its keys) of every block with keys, slot by slot."""
        with self._errors():
            for node in self._r.get_primaries():
                conn = self._r.get_redis_connection(node)
                slots = _node_slots(self._r, node)
                for i in range(0, len(slots), 1024):
                    pipe = conn.pipeline(transaction=False)
                    for s in slots[i:i + 1024]:
                        pipe.execute_command("CLUSTER COUNTKEYSINSLOT", s)
                    for s, n in zip(slots[i:i + 1024], pipe.execute()):
                        if not n:
                            continue
                        blocks: dict[str, list[str]] = {}
                        for raw in conn.execute_command("CLUSTER GETKEYSINSLOT", s, int(n)):
                            key = raw.decode() if isinstance(raw, bytes) else raw
                            if key.startswith(head) and "}" in key:
                                blocks.setdefault(key[:key.index("}") + 1], []).append(key)
                        yield from blocks.items()


def _node_slots(client: RedisCluster, node: ClusterNode) -> list[int]:
    """The hash slots ``node`` serves, as the client's map of the cluster has them."""
    return sorted(s for s, owners in client.nodes_manager.slots_cache.items() if owners[0].name == node.name)
