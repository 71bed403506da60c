"""Tile stores: ``open_store(config)`` gives the configured one."""

from __future__ import annotations

from ..config import StoreConfig
from .base import GCStats, Store
from .index import EMPTY, MetaIndex, content_hash


def open_store(cfg: StoreConfig) -> Store:
    if cfg.kind == "disk":
        from .disk import DiskStore
        return DiskStore(cfg.path, fsync=cfg.fsync)
    if cfg.kind == "redis" and cfg.url.startswith("redis+cluster://"):
        from .redis_cluster import RedisClusterStore
        return RedisClusterStore(cfg.url, prefix=cfg.prefix)
    if cfg.kind == "redis":
        from .redis import RedisStore
        return RedisStore(cfg.url, prefix=cfg.prefix)
    raise ValueError(f"unknown store kind {cfg.kind!r}")


__all__ = ["EMPTY", "GCStats", "MetaIndex", "Store", "content_hash", "open_store"]
