"""A re-capture's previous image, for not reading what provably did not change (``store.ext_unchanged``):
its manifest and index, and ``fetch`` -- the bytes of some of its chunks (the inode tables), each checked by
the caller against its digest. ``StorePrevious`` reads them from a local store (``fleetcast image capture``
and the server's ``POST previous/chunks``); the agent's network capture asks the server
(``agent.capture.RemotePrevious``)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import BinaryIO, Protocol

from fleetcast.errors import FleetcastError
from fleetcast.store.chunkstore import decompress_verify
from fleetcast.store.ext_unchanged import Area, AreaEntries, Fetch, PreviousArea, Reused, reusable
from fleetcast.store.images import ImageStore
from fleetcast.store.index import Entry
from fleetcast.store.manifest import Extent, Manifest

MAX_ENTRIES = 1_000_000  # a previous image with more index entries is not used: its ext windows are held
# here (compact, ~70 B each: 70 MB for 1,000,000 chunks of 64 KiB = 61 GiB used), on an agent running from RAM
MAX_FETCH = 256  # chunks one fetch asks for (protocol.MAX_CHUNK_REQUESTS: one request of the agent)


class PreviousSource(Protocol):
    manifest: Manifest

    def fetch(self, wanted: Sequence[tuple[bytes, int]]) -> Mapping[bytes, bytes]:
        """digest -> the chunk's bytes, for the (digest, length) pairs asked (missing: not there)."""
        ...


class StorePrevious:
    """The previous image ``name`` of a local store."""

    def __init__(self, store: ImageStore, name: str, manifest: Manifest | None = None) -> None:
        self.store = store
        self.manifest = manifest or store.open(name)

    def fetch(self, wanted: Sequence[tuple[bytes, int]]) -> Mapping[bytes, bytes]:
        lengths = dict(wanted)
        where: dict[int, list[Entry]] = {}
        index = self.manifest.index
        if index is None:
            return {}
        for e in index.entries():
            if e.hash in lengths and e.length == lengths[e.hash]:
                where.setdefault(e.pack, []).append(e)
                lengths.pop(e.hash)
        out: dict[bytes, bytes] = {}
        for pack_no, entries in where.items():
            ref = self.manifest.packs[pack_no]
            try:
                stored = self.store.chunk_path(ref.id).read_bytes()
                data = decompress_verify(ref.id, stored, None, what=f"image {self.manifest.name!r}")
            except (OSError, FleetcastError):
                continue  # not there: the caller reads the area instead
            for e in entries:
                out[e.hash] = data[e.offset : e.offset + e.length]
        return out


def reuse_plan(
    f: BinaryIO,
    plans: Sequence[tuple[str, int | None, int, int, str, list[Extent]]],
    previous: PreviousSource,
    *,
    chunk_size: int,
    zero_block: int,
) -> dict[int, Mapping[int, Reused]]:
    """Area number (in ``plans``: kind, number, start, size, fstype, used) -> the windows it need not
    read, for every ext area the previous image holds at the same place with the same chunking."""
    m = previous.manifest
    if m.index is None or m.chunk_size != chunk_size or m.zero_block != zero_block:
        return {}
    if m.entry_count > MAX_ENTRIES:
        return {}
    same: dict[int, int] = {}  # previous area number -> ours
    for i, (kind, number, start, size, fstype, _) in enumerate(plans):
        if fstype != "ext" or kind not in ("partition", "disk"):
            continue
        for j, a in enumerate(m.areas):
            if (a.kind, a.number, a.start, a.size, a.fstype) == (kind, number, start, size, fstype):
                same[j] = i
    if not same:
        return {}
    entries = {j: AreaEntries(j) for j in same}
    for e in _entries(m):
        if e.area in entries:
            entries[e.area].add(e)
    out: dict[int, Mapping[int, Reused]] = {}
    for j, i in same.items():
        if not entries[j].ordered:
            continue  # (an index not in window order: nothing is skipped there)
        kind, number, start, size, fstype, used = plans[i]
        prev = PreviousArea(entries[j], tuple(m.areas[j].zeros))
        found = reusable(
            Area(f, start, size, list(used)), previous=prev, fetch=_batched(previous),
            chunk_size=chunk_size, zero_block=zero_block,
        )  # fmt: skip
        if found:
            out[i] = found
    return out


def _entries(m: Manifest) -> Iterator[Entry]:
    if m.index is not None:
        yield from m.index.entries()


def _batched(previous: PreviousSource) -> Fetch:
    def fetch(wanted: Sequence[tuple[bytes, int]]) -> Mapping[bytes, bytes]:
        out: dict[bytes, bytes] = {}
        for at in range(0, len(wanted), MAX_FETCH):
            out.update(previous.fetch(wanted[at : at + MAX_FETCH]))
        return out

    return fetch
