"""The two seams of the image engine: where a restore gets packs from, and where a capture puts them.

restore never imports transport and capture never imports the store's directory layout: both talk to
these protocols. The local store implements both; ``fleetcast.transport`` implements ``PackSource`` over
HTTP, and a multicast receiver, a peer or a cache can implement it next. Words: a **pack** is the stored
and transferred unit (one zstd frame of about 16 MiB, named by the blake3 of its uncompressed content);
a **chunk** (an index **entry**) is the dedupe unit, a slice of a pack (docs/image-format.md).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import NamedTuple, Protocol, runtime_checkable


@runtime_checkable
class PackSource(Protocol):
    """Gives the *stored* bytes of packs, in any order -- the contract every source implements.

    ``packs(wanted)`` yields ``(pack_id, stored_bytes)`` pairs:

    - in **any order** the source likes (a multicast stream, a peer or a cache delivers in *its* order);
    - each pack **at most once per call** is what a source should aim for, but the restore ignores a
      pack it does not need (another image's, or one already written) and a pack delivered twice;
    - a source may stop early (end of a multicast round, a peer leaving): the restore then calls
      ``packs`` again with the set of packs **still missing**, and fails naming them when a call
      delivers none of them. A source that cannot deliver a pack at all raises a ``FleetcastError``
      subclass naming it (e.g. ``TransportError``, ``StoreError``).

    ``wanted`` is a snapshot (the restore passes a list in the image's first-use order, which an in-order
    source such as HTTP may follow); the source must not rely on it shrinking while it iterates. The source is
    never trusted: the restore checks each pack's stored size and hash from the image's manifest, then
    every chunk slice against its own hash, before writing a byte of it. A generator implementation is
    closed (``close()``) when the restore stops early, so it should stop its prefetching there.
    """

    def packs(self, wanted: Collection[str]) -> Iterator[tuple[str, bytes]]: ...


class ChunkSource(Protocol):
    """The in-order source of format version 1 (kept for callers not yet moved to ``PackSource``):
    ``fetch_many(ids)`` yields the stored bytes of these packs in the order given. ``restore`` adapts it
    with ``as_pack_source``."""

    def fetch(self, chunk_id: str) -> bytes: ...

    def fetch_many(self, chunk_ids: Iterable[str]) -> Iterator[tuple[str, bytes]]: ...


class _InOrder:
    def __init__(self, source: ChunkSource) -> None:
        self.source = source

    def packs(self, wanted: Collection[str]) -> Iterator[tuple[str, bytes]]:
        return self.source.fetch_many(list(wanted))


def as_pack_source(source: PackSource | ChunkSource) -> PackSource:
    """A ``PackSource`` for either kind of source (an in-order one is asked for the missing packs)."""
    if isinstance(source, PackSource):
        return source
    return _InOrder(source)


class KnownChunk(NamedTuple):
    """Where a store already keeps a chunk: its pack, the slice's offset in the pack's uncompressed
    content, and the pack's stored size and stored hash (blake3 of the stored bytes, 64 hex digits)."""

    pack: str
    offset: int
    stored: int
    stored_hash: str


class CaptureSink(Protocol):
    """Where a capture writes an image: the local store is one implementation, a server over the network
    the next one. Used as a context manager; leaving it without ``publish`` abandons everything put
    (nothing becomes visible). The capture's reading side only ever calls these four methods.

    - ``have(hashes)`` -> the subset of these chunk hashes (32-byte blake3 digests) the store already
      keeps, with where: **batched**, one call (one round trip) answers thousands of hashes. A chunk
      answered here must stay available until ``publish`` returns (the local store holds its lock).
    - ``put_pack(pack_id, stored)``: one new pack, ``stored`` is its single zstd frame; may be called from
      worker threads for distinct packs; durable at the latest when ``publish`` returns.
    - ``publish(manifest, index)``: the manifest's JSON bytes and the path of the finished binary chunk
      index; **atomic** -- afterwards the image is complete and visible under its name, before it is not.
      Returns the image id (blake3 of the manifest bytes, which record the index's hash).
    - ``have_threads``: how many ``have`` calls may run at once (capture asks ahead while it reads): the
      local store 1 (one call at a time), the network sink more (parallel requests, so one slow round
      trip does not hold the reading up).
    """

    have_threads: int

    def __enter__(self) -> CaptureSink: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    def have(self, hashes: Sequence[bytes]) -> dict[bytes, KnownChunk]: ...

    def put_pack(self, pack_id: str, stored: bytes) -> None: ...

    def publish(self, manifest: bytes, index: Path) -> str: ...
