"""``CaptureSink`` over the local store: a stop-gap until the persistent dedupe index lands.

``have`` answers from a hash -> (pack, offset) map built once per capture from every image in the store
(what ``existing_slices`` did in format 1), so it is one pass over the store's indexes, not a persistent
index; ``put_pack`` and ``publish`` go through ``images.CaptureTransaction`` (atomic publish, the store
lock held shared from the first ``have`` until ``publish``). The store-dedupe work replaces ``have``'s map
with the store's dedupe index behind the same protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import blake3

from fleetcast.errors import CaptureError
from fleetcast.store.images import CaptureTransaction, ImageStore
from fleetcast.store.manifest import INDEX_FILE, load_image
from fleetcast.store.source import KnownChunk


class StoreSink:
    def __init__(self, store: ImageStore, name: str) -> None:
        self.store = store
        self.name = name
        self.txn: CaptureTransaction | None = None
        self._slices: dict[bytes, tuple[str, int]] | None = None
        self._packs: dict[str, tuple[int, str] | None] = {}  # pack id -> (stored, stored hash) or absent
        self._hashes: dict[str, str] = {}  # pack id -> stored hash recorded by a v2 image

    def __enter__(self) -> StoreSink:
        self.txn = self.store.begin_capture(self.name).__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self.txn is not None
        self.txn.__exit__(exc_type, exc, tb)

    def _map(self) -> dict[bytes, tuple[str, int]]:
        if self._slices is None:
            self._slices = {}
            for manifest in self.store.list():
                for p in manifest.pack_refs():
                    if p.hash is not None:
                        self._hashes[p.id] = p.hash
                for _, c in manifest.entries():
                    self._slices.setdefault(bytes.fromhex(c.hash), (c.id, c.offset))
        return self._slices

    def _pack(self, pid: str) -> tuple[int, str] | None:
        if pid not in self._packs:
            path = self.store.chunks.path(pid)
            try:
                stored = path.stat().st_size
            except OSError:
                self._packs[pid] = None
                return None
            h = self._hashes.get(pid)
            if h is None:  # a v1 image's pack: hash its stored bytes once
                h = blake3.blake3(path.read_bytes()).hexdigest()
            self._packs[pid] = (stored, h)
        return self._packs[pid]

    def have(self, hashes: Sequence[bytes]) -> dict[bytes, KnownChunk]:
        known = self._map()
        out: dict[bytes, KnownChunk] = {}
        for h in hashes:
            hit = known.get(h)
            if hit is None:
                continue
            pack = self._pack(hit[0])
            if pack is not None:
                out[h] = KnownChunk(hit[0], hit[1], pack[0], pack[1])
        return out

    def put_pack(self, pack_id: str, stored: bytes) -> None:
        assert self.txn is not None
        if not self.txn.known(pack_id):
            self.txn.add_chunk(pack_id, stored)

    def publish(self, manifest: bytes, index: Path) -> str:
        assert self.txn is not None
        m = load_image(manifest, index)
        if m.to_json() != manifest:
            raise CaptureError(f"image {self.name!r}: the manifest does not read back to the same bytes")
        self.txn.commit(m, extra={INDEX_FILE: index})
        return m.image_id
