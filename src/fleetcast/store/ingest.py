"""What a server needs to take in an image captured over the network: batched dedupe look-ups, packs
stored only after they are verified against their id, and an atomic publish.

A network capture spans many requests, so it cannot hold the store lock from its first look-up to its
publish the way a local capture does (``images.CaptureTransaction``). Instead the server *leases* the packs
it answered or received (in its database) and passes them to gc (``maintenance.gc_store(protect=...)``).
To leave gc no window: record the lease before ``put_pack``, and call ``have`` and record its leases inside
``with store.locked(exclusive=False, wait=True):`` (gc needs the lock exclusively).

Never trusted: a pack is stored only when its bytes are exactly one zstd frame (nothing appended) whose
content hashes to its id (and, when the client says, whose stored bytes hash to the stored hash it
recorded); a manifest is published only when it and its index validate (``load_image``), every pack it
names is in the store with the recorded stored size and stored hash, and the name is free.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
from collections.abc import Sequence
from pathlib import Path

import blake3

from fleetcast.errors import CaptureError, ChunkCorrupt, IntegrityError, StoreError
from fleetcast.store.chunkstore import MAX_OBJECT_BYTES, decompress_exact, fsync_dir, write_file_durable
from fleetcast.store.dedupe import DedupeIndex
from fleetcast.store.images import ImageStore, check_name
from fleetcast.store.manifest import CHUNK_ID_RE, INDEX_FILE, Manifest, PackRef, load_image
from fleetcast.store.source import KnownChunk

logger = logging.getLogger(__name__)

_HINT = "the client sent damaged bytes; it should send the pack again"


def verify_pack_bytes(pack_id: str, stored: bytes, stored_hash: str | None = None) -> PackRef:
    """Check uploaded pack bytes: one zstd frame, nothing after it, content hashing to ``pack_id``.
    Returns the PackRef (id, stored size, stored hash); raises IntegrityError naming the pack."""
    if not CHUNK_ID_RE.fullmatch(pack_id):
        raise StoreError(f"pack id must be 64 lower-case hex digits; found {pack_id!r}")
    what = f"uploaded pack {pack_id}"
    if not stored:
        raise ChunkCorrupt(f"{what} is empty", hint=_HINT)
    if len(stored) > MAX_OBJECT_BYTES:
        raise ChunkCorrupt(f"{what} is {len(stored)} bytes, more than {MAX_OBJECT_BYTES}", hint=_HINT)
    decompress_exact(pack_id, stored, what="upload", hint=_HINT)
    h = str(blake3.blake3(stored).hexdigest())
    if stored_hash is not None and h != stored_hash:
        raise ChunkCorrupt(f"{what}: its stored bytes hash to {h}, expected {stored_hash}", hint=_HINT)
    return PackRef(pack_id, len(stored), h)


class StoreIngest:
    """The server's side of a network capture over one local store (one per server is enough;
    thread-safe)."""

    def __init__(self, store: ImageStore) -> None:
        self.store = store
        self._dx: DedupeIndex | None = None
        self._lock = threading.Lock()

    def index(self) -> DedupeIndex:
        with self._lock:
            if self._dx is None:
                self.store.ensure()
                self._dx = DedupeIndex.open(self.store)
            return self._dx

    def refresh(self) -> None:
        """Catch the dedupe index up with images published or removed behind its back (rarely needed:
        every publish updates it)."""
        self.index().sync()

    def close(self) -> None:
        with self._lock:
            if self._dx is not None:
                self._dx.close()
                self._dx = None

    def have(self, hashes: Sequence[bytes]) -> dict[bytes, KnownChunk]:
        """The subset of these 32-byte chunk hashes the store keeps, with where (batched)."""
        with self.store.locked(exclusive=False, wait=True):
            return self.index().have(hashes)

    def put_pack(self, pack_id: str, stored: bytes, *, stored_hash: str | None = None) -> PackRef:
        """Verify and store one uploaded pack (durable when this returns). Idempotent: a pack already
        present with the same bytes is left as it is; a damaged copy is replaced."""
        ref = verify_pack_bytes(pack_id, stored, stored_hash)
        final = self.store.chunks.path(pack_id)
        with self.store.locked(exclusive=False, wait=True):
            if _same_file(final, ref):
                self.index().note_pack(ref)
                return ref
            tmp = self.store.tmp_dir / f"up-{pack_id[:16]}-{os.getpid()}-{secrets.token_hex(4)}"
            try:
                write_file_durable(tmp, stored)
                new_dir = not final.parent.is_dir()
                final.parent.mkdir(parents=True, exist_ok=True)
                os.rename(tmp, final)
                fsync_dir(final.parent)
                if new_dir:
                    fsync_dir(self.store.chunks.root)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise StoreError(f"cannot store pack {pack_id} in {self.store.root}: {exc.strerror}") from exc
            self.index().note_pack(ref)
        logger.info("stored uploaded pack %s (%d bytes)", pack_id, ref.stored)
        return ref

    def publish(
        self,
        manifest_bytes: bytes,
        index: bytes | Path,
        *,
        expected_id: str | None = None,
        replace: bool = False,
    ) -> Manifest:
        """Publish an uploaded image atomically: manifest + index validated, every pack present and
        intact (stored size, stored hash), name free; then visible, and taken into the dedupe index.
        ``replace``: an image of the same name is replaced atomically (readers see the old or the new
        one, never neither); its packs that nothing else uses go at the next gc."""
        store = self.store
        store.ensure()
        tmp_index: Path | None = None
        if isinstance(index, bytes):
            tmp_index = store.tmp_dir / f"up-index-{os.getpid()}-{secrets.token_hex(4)}"
            try:
                tmp_index.write_bytes(index)
            except OSError as exc:
                raise StoreError(f"cannot write an uploaded index in {store.tmp_dir}: {exc.strerror}") from (
                    exc
                )
            index_path = tmp_index
        else:
            index_path = Path(index)
        try:
            m = load_image(manifest_bytes, index_path, expected_id=expected_id, what="the uploaded image")
            check_name(m.name)
            if m.to_json() != manifest_bytes:
                raise CaptureError(
                    f"uploaded image {m.name!r}: the manifest is not in canonical form (it does not read "
                    "back to the same bytes)"
                )
            dx = self.index()
            with store.begin_capture(
                m.name, replace=replace
            ) as txn:  # shared lock: gc cannot remove a pack from here on
                for p in m.pack_refs():
                    self._check_pack(m.name, p, dx)
                txn.commit(m, extra={INDEX_FILE: index_path})
            try:
                dx.add_image(m)
            except StoreError as exc:
                logger.warning("image %s is published but the dedupe index was not updated: %s", m.name, exc)
        finally:
            if tmp_index is not None:
                with contextlib.suppress(OSError):
                    tmp_index.unlink()
        logger.info("published uploaded image %s (id %s)", m.name, m.image_id)
        return m

    def _check_pack(self, name: str, p: PackRef, dx: DedupeIndex) -> None:
        what = f"uploaded image {name!r}"
        path = self.store.chunks.path(p.id)
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise IntegrityError(
                f"{what} names pack {p.id}, which the store does not have",
                hint="upload the pack before publishing",
            ) from exc
        if size != p.stored:
            raise IntegrityError(
                f"{what}: pack {p.id} is {size} bytes in the store, the manifest records {p.stored}"
            )
        if p.hash is None or dx.pack_hash(p.id) == p.hash:
            return
        found = str(blake3.blake3(path.read_bytes()).hexdigest())
        if found != p.hash:
            raise IntegrityError(
                f"{what}: pack {p.id}'s stored bytes hash to {found}, the manifest records {p.hash}"
            )


def _same_file(path: Path, ref: PackRef) -> bool:
    try:
        if path.stat().st_size != ref.stored:
            return False
        return str(blake3.blake3(path.read_bytes()).hexdigest()) == ref.hash
    except OSError:
        return False
