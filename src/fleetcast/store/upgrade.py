"""``fleetcast store upgrade``: format-1 images rewritten as format 2, each atomically.

For each v1 image: its entries become a binary index (``store.index``), its packs get their stored hash
(each pack is read, checked against its recorded size and its content hash -- an upgrade never vouches for
a damaged pack), the areas their ``data``/``skipped``/``entries``; the new manifest and index replace the
old directory in one exchange (``CaptureTransaction(replace=True)``: readers see the v1 image or the v2
one, never neither). The packs stay where they are: nothing is recompressed. A v1 image keeps restoring
without an upgrade; the upgrade makes it small to open and list (its manifest no longer holds an entry per
64 KiB window) and gives its packs a stored hash.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import blake3

from fleetcast.errors import ChunkCorrupt, IntegrityError, StoreError
from fleetcast.store.chunkstore import decompress_exact
from fleetcast.store.dedupe import DedupeIndex
from fleetcast.store.images import ImageStore
from fleetcast.store.index import Entry, IndexWriter
from fleetcast.store.manifest import INDEX_FILE, VERSION, VERSION_2, Manifest, PackRef, load_image

logger = logging.getLogger(__name__)


@dataclass
class UpgradeReport:
    upgraded: list[dict[str, Any]] = field(default_factory=list)  # name, old_id, new_id, manifest bytes
    current: list[str] = field(default_factory=list)  # already format 2
    failed: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"upgraded": self.upgraded, "current": self.current, "failed": self.failed}


def upgrade_store(store: ImageStore, *, names: list[str] | None = None) -> UpgradeReport:
    report = UpgradeReport()
    for name in names or store.names():
        try:
            m = store.open(name, lazy=True)
        except StoreError as exc:
            report.failed.append(f"{name}: {exc.message}")
            continue
        if m.version != VERSION:
            report.current.append(name)
            continue
        try:
            report.upgraded.append(upgrade_image(store, m))
        except (StoreError, IntegrityError) as exc:
            report.failed.append(f"{name}: {exc.message}")
    return report


def _entries(m: Manifest, number: dict[str, int]) -> Iterator[Entry]:
    for area_no, area in enumerate(m.areas):
        for c in area.chunks:
            yield Entry(area_no, number[c.id], c.offset, c.window, bytes.fromhex(c.hash), c.extents)


def upgrade_image(store: ImageStore, m: Manifest) -> dict[str, Any]:
    """Rewrite one v1 image as v2 (atomic); returns what changed."""
    what = f"image {m.name!r}"
    packs: list[PackRef] = []
    for p in m.pack_refs():
        try:
            stored = store.chunks.read(p.id)
        except IntegrityError as exc:
            raise IntegrityError(f"cannot upgrade {what}: {exc.message}", hint=exc.hint) from exc
        if len(stored) != p.stored:
            raise ChunkCorrupt(
                f"cannot upgrade {what}: pack {p.id} is {len(stored)} bytes, the manifest records {p.stored}",
                hint="run 'fleetcast store check'",
            )
        decompress_exact(p.id, stored, what=f"cannot upgrade {what}")
        packs.append(PackRef(p.id, p.stored, str(blake3.blake3(stored).hexdigest())))
    number = {p.id: i for i, p in enumerate(packs)}
    areas = []
    for a in m.areas:
        data = sum(c.length for c in a.chunks)
        skipped = a.used - data - sum(n for _, n in a.zeros)
        if skipped < 0:
            raise StoreError(f"cannot upgrade {what}: {a.label} holds more data and zeros than it uses")
        areas.append(replace(a, chunks=(), data=data, skipped=skipped, entries=len(a.chunks)))
    with store.begin_capture(m.name, replace=True) as txn:  # the shared store lock: no gc meanwhile
        if store.open(m.name, lazy=True).image_id != m.image_id:
            raise StoreError(f"cannot upgrade {what}: it changed while it was being upgraded")
        index_path = txn.dir / "upgraded-index"
        with open(index_path, "wb") as f:
            w = IndexWriter(f)
            for e in _entries(m, number):
                w.add(e)
            info = w.close()
        v2 = replace(
            m,
            areas=tuple(areas),
            version=VERSION_2,
            packs=tuple(packs),
            index_info=info,
            index=None,
            image_id="",
            index_path=None,
        )
        doc = v2.to_json()
        new = load_image(doc, index_path)  # never publish what does not read back
        for (_, old_c), (_, new_c) in zip(m.entries(), new.entries(), strict=True):
            if old_c != new_c:
                raise StoreError(
                    f"cannot upgrade {what}: entry at window {old_c.window} differs after (a bug)"
                )
        txn.commit(new, extra={INDEX_FILE: index_path})
    try:
        with DedupeIndex.open(store, sync=False) as dx:
            dx.add_image(new)
    except StoreError as exc:
        logger.warning("upgraded %s but the dedupe index was not updated: %s", m.name, exc.message)
    logger.info("upgraded %s to format 2 (id %s -> %s)", m.name, m.image_id, new.image_id)
    return {
        "name": m.name,
        "old_id": m.image_id,
        "new_id": new.image_id,
        "old_manifest_bytes": len(m.to_json()),
        "new_manifest_bytes": len(doc),
        "index_bytes": info.size,
    }
