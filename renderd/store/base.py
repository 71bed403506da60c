"""What every tile store offers. Layout details are in docs/storage.md."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Iterable, Iterator

from ..tilemath import Meta, Tile, metatile_of
from .index import MetaIndex


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
