"""What every tile store offers. Layout details are in docs/storage.md."""

from __future__ import annotations

import abc
import re
from dataclasses import dataclass
from typing import Iterable, Iterator, NamedTuple

from ..errors import StoreError
from ..tilemath import Meta, Tile, metatile_of
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
    """``layer`` if it is a valid layer name, else ``StoreError``."""
    if not isinstance(layer, str) or not LAYER_RE.fullmatch(layer):
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
    """A deduplicated tile store: per-metatile indexes and shared blobs.

    Writers call ``put_metatile`` with the new index and the bytes of every
    distinct tile in it; the store writes the blobs it lacks and switches the
    index atomically. Readers never see a half-written metatile.
    """

    kind: str = "?"

    # --- reading ---------------------------------------------------------
    @abc.abstractmethod
    def get_index(self, layer: str, meta: Meta) -> MetaIndex | None:
        """The index of ``meta``, or None if it was never stored."""

    @abc.abstractmethod
    def get_blob(self, digest: str) -> bytes | None:
        """The bytes stored under ``digest``, or None."""

    def get_blobs(self, digests: Iterable[str]) -> dict[str, bytes]:
        out = {}
        for d in digests:
            b = self.get_blob(d)
            if b is not None:
                out[d] = b
        return out

    def get_tile(self, layer: str, tile: Tile, meta: int = 8) -> tuple[bytes, MetaIndex] | None:
        """A tile's bytes and its metatile's index, or None if not stored."""
        idx = self.get_index(layer, metatile_of(tile.z, tile.x, tile.y, meta))
        if idx is None:
            return None
        digest = idx.tile_hash(tile.x, tile.y)
        if digest is None:
            return None
        data = self.get_blob(digest)
        return None if data is None else (data, idx)

    @abc.abstractmethod
    def read_tile(self, layer: str, tile: Tile, meta: int = 8) -> StoredTile | None:
        """A tile with its metatile's header fields, or None if not stored."""

    @abc.abstractmethod
    def get_metatile(self, layer: str, meta: Meta) -> tuple[MetaIndex, dict[str, bytes]] | None:
        """A metatile's index and the bytes of its distinct tiles."""

    @abc.abstractmethod
    def layer_usage(self, layer: str) -> tuple[int, int, int]:
        """(indexes, distinct blobs, bytes of those blobs) of ``layer``."""

    @abc.abstractmethod
    def blob_totals(self) -> tuple[int, int]:
        """(blobs, bytes) of the whole store; walks every blob."""

    @abc.abstractmethod
    def iter_indexes(self, layer: str, zoom: int | None = None) -> Iterator[MetaIndex]:
        """Every stored index of ``layer`` (at ``zoom`` if given)."""

    def blob_size(self, digest: str) -> int | None:
        b = self.get_blob(digest)
        return None if b is None else len(b)

    # --- writing ---------------------------------------------------------
    @abc.abstractmethod
    def put_metatile(self, layer: str, index: MetaIndex, blobs: dict[str, bytes]) -> int:
        """Store a metatile atomically; return how many new blobs were written.

        ``blobs`` maps every distinct non-empty hash of ``index`` to its bytes
        (the store may skip those it has).
        """

    @abc.abstractmethod
    def mark_stale(self, layer: str, meta: Meta) -> bool:
        """Flag a stored metatile stale; False if it is not stored."""

    @abc.abstractmethod
    def delete_metatile(self, layer: str, meta: Meta) -> bool:
        """Remove a metatile's index; its blobs go when nothing uses them."""

    @abc.abstractmethod
    def collect_garbage(self) -> GCStats:
        """Delete blobs no index references, safely against running writers."""

    def close(self) -> None:
        pass

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
