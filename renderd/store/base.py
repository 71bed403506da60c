"""What every tile store offers. Layout details are in docs/storage.md."""

from __future__ import annotations

import abc
import re
from dataclasses import dataclass
from typing import Iterator, NamedTuple

from .. import tilesets
from ..errors import StoreError
from ..tilemath import Meta, Tile
from .index import MetaIndex, content_hash

LAYER_RE = re.compile(r"[A-Za-z0-9_\-]{1,64}")
HASH_RE = re.compile(r"[0-9a-f]{32}")


class StoredTile(NamedTuple):
    """One stored tile with its metatile's header fields (``read_tile``)."""

    data: bytes | None   # None for an empty tile or a missing blob
    digest: str | None   # None for an empty tile
    stale: bool
    rendered: int
    data_time: int
    ext: str


def check_layer(layer: str) -> str:
    """``layer`` if it is a valid tile set name (a layer's name, or
    ``LAYER/VALUE/...``, renderd.tilesets), else ``StoreError``."""
    if not tilesets.is_valid(layer):
        raise StoreError(f"invalid layer name {layer!r}")
    return layer


def check_put(index: MetaIndex, blobs: dict[str, bytes]) -> dict[str, bytes]:
    """The blobs of ``index`` found in ``blobs``, after checking their hashes.

    Every entry must be 32 lowercase hex digits; every given blob must hash
    to its key. Blobs the index does not use are dropped.
    """
    for h in index.hashes:
        if not HASH_RE.fullmatch(h):
            raise StoreError(f"index of {index.meta} has a malformed hash {h[:40]!r}")
    given = {}
    for h in index.unique():
        data = blobs.get(h)
        if data is None:
            continue
        if content_hash(data) != h:
            raise StoreError(f"blob given for {h} in {index.meta} has another content hash")
        given[h] = data
    return given


@dataclass
class GCStats:
    blobs_seen: int = 0
    blobs_deleted: int = 0
    bytes_freed: int = 0


class Store(abc.ABC):
    """A deduplicated tile store: per-metatile indexes and the tiles' bytes.

    Writers call ``put_metatile`` with the new index and the bytes of every
    distinct tile in it; the store writes what it lacks and switches the
    metatile atomically. Readers never see a half-written metatile.
    """

    kind: str = "?"

    # --- reading ---------------------------------------------------------
    @abc.abstractmethod
    def get_index(self, layer: str, meta: Meta) -> MetaIndex | None:
        """The index of ``meta``, or None if it was never stored."""

    @abc.abstractmethod
    def read_tile(self, layer: str, tile: Tile, meta: int = 8) -> StoredTile | None:
        """A tile with its metatile's header fields, or None if not stored."""

    @abc.abstractmethod
    def get_metatile(self, layer: str, meta: Meta) -> tuple[MetaIndex, dict[str, bytes]] | None:
        """A metatile's index and the bytes of its distinct tiles."""

    @abc.abstractmethod
    def metatile_sizes(self, layer: str, meta: Meta) -> tuple[MetaIndex, dict[str, int]] | None:
        """A metatile's index and the stored size in bytes of each of its
        distinct non-empty tiles (a tile whose bytes are missing is left out)."""

    @abc.abstractmethod
    def iter_indexes(self, layer: str, zoom: int | None = None) -> Iterator[MetaIndex]:
        """Every stored index of ``layer`` (at ``zoom`` if given)."""

    @abc.abstractmethod
    def iter_sizes(self, layer: str, zoom: int | None = None) -> Iterator[tuple[MetaIndex, dict[str, int]]]:
        """``metatile_sizes`` of every stored metatile of ``layer`` (at ``zoom``)."""

    # --- writing ---------------------------------------------------------
    @abc.abstractmethod
    def put_metatile(self, layer: str, index: MetaIndex, blobs: dict[str, bytes]) -> int:
        """Store a metatile atomically; return how many new shared blobs were
        written (disk: files added to the pool; tiles kept in the metatile's
        own pack are not counted).

        ``blobs`` maps every distinct non-empty hash of ``index`` to its bytes
        (the store may skip those it has).
        """

    @abc.abstractmethod
    def mark_stale(self, layer: str, meta: Meta) -> bool:
        """Flag a stored metatile stale; False if it is not stored."""

    @abc.abstractmethod
    def delete_metatile(self, layer: str, meta: Meta) -> bool:
        """Remove a metatile; shared blobs go when nothing uses them."""

    @abc.abstractmethod
    def collect_garbage(self) -> GCStats:
        """Delete shared blobs no metatile references, safely against running writers."""

    def close(self) -> None:
        pass

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
