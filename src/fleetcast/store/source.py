"""The small protocol a restore reads chunks through. The local store is one implementation;
``fleetcast.transport`` implements it for HTTP and multicast, so restore never imports transport."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol


class ChunkSource(Protocol):
    """Gives the *stored* (zstd-compressed) bytes of chunks by id. The restore decompresses and
    verifies every chunk against its id before writing it, so a source never needs to be trusted."""

    def fetch(self, chunk_id: str) -> bytes:
        """The stored bytes of one chunk; raises a FleetcastError subclass when it cannot."""
        ...

    def fetch_many(self, chunk_ids: Iterable[str]) -> Iterator[tuple[str, bytes]]:
        """The stored bytes of these chunks, in the order given (implementations may prefetch)."""
        ...
