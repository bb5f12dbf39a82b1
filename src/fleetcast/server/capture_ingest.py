"""The store side of a network capture (issue 11): ``store.ingest.StoreIngest`` (one per server,
thread-safe) with the answers the upload routes need (a verification failure is a 422)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fleetcast.errors import IntegrityError
from fleetcast.store.images import ImageStore
from fleetcast.store.ingest import StoreIngest
from fleetcast.store.source import KnownChunk


class PackRejected(IntegrityError):
    """An uploaded pack that does not verify: answered 422, so the agent sends it again from the start."""

    http_status = 422


class CaptureIngest:
    def __init__(self, store_root: Path) -> None:
        self.store = ImageStore(store_root)
        self._impl = StoreIngest(self.store)  # one dedupe-index handle, locked

    def have(self, hashes: Sequence[bytes]) -> dict[bytes, KnownChunk]:
        return self._impl.have(hashes)

    def has_pack(self, pack_id: str, stored: int) -> bool:
        try:
            return self.store.chunks.path(pack_id).stat().st_size == stored
        except OSError:
            return False

    def put_pack(self, pack_id: str, stored: bytes, stored_hash: str) -> None:
        try:
            self._impl.put_pack(pack_id, stored, stored_hash=stored_hash)
        except IntegrityError as exc:
            raise PackRejected(exc.message, hint=exc.hint) from exc

    def publish(self, manifest: bytes, index: Path, *, replace: bool) -> str:
        return self._impl.publish(manifest, index, replace=replace).image_id
