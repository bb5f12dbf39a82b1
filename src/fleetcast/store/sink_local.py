"""``CaptureSink`` over the local store.

``have`` answers from the store's persistent dedupe index (``store.dedupe``: SQLite, batched lookups),
opened and brought up to date once per capture, inside the store lock; ``put_pack`` and ``publish`` go
through ``images.CaptureTransaction`` (atomic publish, the store lock held shared from before the first
``have`` until ``publish``, so gc cannot remove a pack ``have`` answered). ``publish`` then takes the new
image into the dedupe index in one transaction (a capture killed in between is caught up by the next
index open).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from fleetcast.errors import CaptureError, StoreError
from fleetcast.store.dedupe import DedupeIndex
from fleetcast.store.images import CaptureTransaction, ImageStore
from fleetcast.store.manifest import INDEX_FILE, load_image
from fleetcast.store.source import KnownChunk

logger = logging.getLogger(__name__)


class StoreSink:
    have_threads = 1  # the dedupe index answers one call at a time

    def __init__(self, store: ImageStore, name: str) -> None:
        self.store = store
        self.name = name
        self.txn: CaptureTransaction | None = None
        self._dx: DedupeIndex | None = None

    def __enter__(self) -> StoreSink:
        self.txn = self.store.begin_capture(self.name).__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self.txn is not None
        try:
            self.txn.__exit__(exc_type, exc, tb)
        finally:
            if self._dx is not None:
                self._dx.close()
                self._dx = None

    def _index(self) -> DedupeIndex:
        if self._dx is None:
            self._dx = DedupeIndex.open(self.store)  # inside the shared store lock the txn holds
        return self._dx

    def have(self, hashes: Sequence[bytes]) -> dict[bytes, KnownChunk]:
        return self._index().have(hashes)

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
        try:
            self._index().add_image(m)
        except StoreError as exc:  # the image is published; the next index open catches up
            logger.warning("image %s is published but the dedupe index was not updated: %s", m.name, exc)
        return m.image_id
