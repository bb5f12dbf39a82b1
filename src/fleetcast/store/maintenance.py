"""Keeping a store honest: ``verify`` one image, ``check`` the whole store, ``gc`` what nothing references."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections import deque
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleetcast.errors import ChunkCorrupt, ManifestError, NotFoundError, PackMissing, StoreError
from fleetcast.store.chunkstore import chunk_hash, decompress_exact
from fleetcast.store.manifest import CHUNK_ID_RE, PackRef

if TYPE_CHECKING:
    from fleetcast.store.images import ImageStore
    from fleetcast.store.manifest import Manifest

logger = logging.getLogger(__name__)

WORKERS = 2


@dataclass
class VerifyReport:
    name: str
    chunks: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "image": self.name,
            "ok": self.ok,
            "chunks": self.chunks,
            "bytes": self.bytes,
            "problems": self.problems,
        }


def _check_one(
    store: ImageStore, cid: str, slices: list[tuple[int, int, str]], what: str, pack: PackRef | None = None
) -> tuple[int, str | None]:
    """Decompress and re-hash one stored object, then check the slices (offset, length, hash) images use;
    with ``pack`` (what the image records), first its stored size and hash (appended bytes fail)."""
    from fleetcast.store.restore import check_stored

    try:
        stored = store.chunks.read(cid)
    except (StoreError, PackMissing) as exc:
        return 0, f"{what}: {exc.message}"
    try:
        if pack is not None:
            check_stored(what, pack, stored)
        data = decompress_exact(cid, stored, what=what)
    except ChunkCorrupt as exc:
        return 0, exc.message
    for off, length, h in slices:
        if len(data) < off + length or chunk_hash(data[off : off + length]) != h:
            return 0, f"{what}: chunk {cid} does not hold slice {h} at offset {off}"
    return len(data), None


def verify_image(store: ImageStore, name: str, *, expected_id: str | None = None) -> VerifyReport:
    """Read, decompress and re-hash every pack the image uses (each once) and every slice in it; each
    problem is in the report once (the caller prints them). Memory: one pack's slices at a time (v2)."""
    manifest = store.open(name)
    report = VerifyReport(name)
    what = f"image {name!r}"
    if expected_id is not None and manifest.image_id != expected_id:
        report.problems.append(f"{what} has id {manifest.image_id} but {expected_id} was expected")
    changed = _changed_since_publish(store).get(name)
    if changed:
        report.problems.append(changed)
    report.problems.extend(_check_entries(manifest, what))
    with ThreadPoolExecutor(WORKERS) as pool:
        inflight: deque[Future[tuple[int, str | None]]] = deque()

        def account(fut: Future[tuple[int, str | None]]) -> None:
            n, problem = fut.result()
            report.chunks += 1
            report.bytes += n
            if problem:
                report.problems.append(problem)

        for pack, slices in _pack_slices(manifest):
            inflight.append(pool.submit(_check_one, store, pack.id, slices, what, pack))
            while len(inflight) > WORKERS + 1:
                account(inflight.popleft())
        while inflight:
            account(inflight.popleft())
    return report


def _changed_since_publish(store: ImageStore) -> dict[str, str]:
    """Images edited in place since they were published (the dedupe index recorded their id)."""
    from fleetcast.store.dedupe import DedupeIndex, db_path

    if not db_path(store).exists():
        return {}
    try:
        with DedupeIndex.open(store, sync=False, create=False) as dx:
            return dx.changed_since_publish()
    except StoreError as exc:
        logger.warning("cannot read the dedupe index: %s", exc.message)
        return {}


def _check_entries(manifest: Manifest, what: str) -> list[str]:
    """What the format allows checking across entries (v2): each entry inside its window and area,
    windows increasing per area, and the bytes of each area's entries equal to its recorded data."""
    from fleetcast.store.manifest import check_entry

    if manifest.open_index() is None:
        return []
    data = [0] * len(manifest.areas)
    last = [-1] * len(manifest.areas)
    try:
        for e in manifest.index.entries() if manifest.index is not None else ():
            check_entry(manifest, e, what)
            if e.window <= last[e.area]:
                return [f"{what}: area {e.area} has entry window {e.window} after window {last[e.area]}"]
            last[e.area] = e.window
            data[e.area] += e.length
    except ManifestError as exc:
        return [exc.message]
    return [
        f"{what}: {a.label} records {a.data_bytes} bytes of data but its entries hold {n}"
        for a, n in zip(manifest.areas, data, strict=True)
        if n != a.data_bytes
    ]


def _pack_slices(manifest: Manifest) -> Iterator[tuple[PackRef, list[tuple[int, int, str]]]]:
    """Each pack of the image with the slices (offset, length, hash) its entries use."""
    index = manifest.open_index()
    if index is not None:
        blocks = index.blocks_of_pack()
        for i, p in enumerate(manifest.packs):
            got = {(e.offset, e.length, e.hash.hex()) for e in index.pack_entries(i, blocks.get(i, []))}
            yield p, sorted(got)
        return
    slices: dict[str, set[tuple[int, int, str]]] = {}
    for _, chunk in manifest.entries():
        slices.setdefault(chunk.id, set()).add((chunk.offset, chunk.length, chunk.hash))
    for p in manifest.pack_refs():
        yield p, sorted(slices.get(p.id, ()))


@dataclass
class CheckReport:
    images: int = 0
    chunks: int = 0
    damaged_manifests: list[str] = field(default_factory=list)
    damaged_chunks: list[str] = field(default_factory=list)
    missing_chunks: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    running_captures: list[str] = field(default_factory=list)
    unreferenced_chunks: int = 0
    unreferenced_bytes: int = 0
    unreferenced_packs: list[dict[str, Any]] = field(default_factory=list)  # [{"id", "bytes"}]
    dedupe_index: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.damaged_manifests or self.damaged_chunks or self.missing_chunks or self.leftovers)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "images": self.images,
            "chunks": self.chunks,
            "damaged_manifests": self.damaged_manifests,
            "damaged_chunks": self.damaged_chunks,
            "missing_chunks": self.missing_chunks,
            "leftovers": self.leftovers,
            "running_captures": self.running_captures,
            "unreferenced_chunks": self.unreferenced_chunks,
            "unreferenced_bytes": self.unreferenced_bytes,
            "unreferenced_packs": self.unreferenced_packs,
            "dedupe_index": self.dedupe_index,
        }


def _references(
    store: ImageStore, report: CheckReport | None, *, lazy: bool = False
) -> tuple[dict[str, PackRef], list[str]]:
    """Pack id -> what the images record about it (size, stored hash), and the images whose manifest
    (or, unless ``lazy``, index) is damaged.

    An image removed while this runs (its manifest or index vanished between listing and opening) is
    skipped: that is not damage, and its packs are unreferenced from now on."""
    refs: dict[str, PackRef] = {}
    damaged: list[str] = []
    for name in store.names():
        try:
            manifest = store.open(name, lazy=lazy)
        except NotFoundError:
            continue
        except StoreError as exc:
            if not store.exists(name):
                continue  # removed while we read it
            damaged.append(f"{name}: {exc.message}")
            continue
        if report is not None:
            report.images += 1
        for p in manifest.pack_refs():
            if p.id not in refs or refs[p.id].hash is None:
                refs[p.id] = p
    return refs, damaged


def check_store(store: ImageStore, *, repair: bool = False) -> CheckReport:
    """Leftovers of killed captures, damaged manifests, damaged or missing chunks, what gc would free,
    and the dedupe index's state; ``repair`` rebuilds the dedupe index from the images."""
    report = CheckReport()
    if not store.root.is_dir():
        raise StoreError(
            f"the store {store.root} does not exist", hint="capture an image first, or pass --store DIR"
        )
    report.dedupe_index = _check_dedupe(store, repair)
    refs, report.damaged_manifests = _references(store, report)
    report.damaged_manifests.extend(_changed_since_publish(store).values())
    present: dict[str, Path] = {}
    for fname, path in store.chunks.iter_files():
        if CHUNK_ID_RE.fullmatch(fname) and path.parent.name == fname[:2] and path.is_file():
            present[fname] = path
        else:
            report.leftovers.append(str(path))
    report.chunks = len(present)
    what = "store"

    def one(cid: str) -> str | None:
        # a referenced pack against what its images record (size, stored hash); every pack: exactly
        # one zstd frame (nothing appended) whose content hashes to its name
        return _check_one(store, cid, [], what, refs.get(cid))[1]

    with ThreadPoolExecutor(WORKERS) as pool:
        for problem in pool.map(one, sorted(present)):
            if problem:
                report.damaged_chunks.append(problem)
    for cid in refs:
        if cid not in present:
            report.missing_chunks.append(cid)
    for cid, path in present.items():
        if cid not in refs:
            with contextlib.suppress(OSError):
                size = path.stat().st_size
                report.unreferenced_chunks += 1
                report.unreferenced_bytes += size
                report.unreferenced_packs.append({"id": cid, "bytes": size})
    for path, live in store.tmp_entries():
        (report.running_captures if live else report.leftovers).append(str(path))
    return report


def _check_dedupe(store: ImageStore, repair: bool) -> dict[str, Any]:
    from fleetcast.store.dedupe import DedupeIndex, db_path
    from fleetcast.store.manifest import image_id

    if repair:
        dx, _ = DedupeIndex.rebuild(store)
        with dx:
            st = dx.stats()
        return {"state": "rebuilt", "images": st.images, "entries": st.entries, "bytes": st.bytes}
    if not db_path(store).exists():
        return {"state": "missing", "hint": "built by the next capture, or 'fleetcast store check --repair'"}
    try:
        with DedupeIndex.open(store, sync=False, create=False) as dx:
            st = dx.stats()
            known = dx.image_ids()
    except StoreError as exc:
        return {"state": "unreadable", "problem": exc.message}
    present: dict[str, str] = {}
    for name in store.names():
        with contextlib.suppress(OSError):
            present[name] = image_id(store.manifest_path(name).read_bytes())
    behind = sorted(n for n, i in present.items() if known.get(n) != i)
    return {
        "state": "behind" if behind else "current",
        "images": st.images,
        "entries": st.entries,
        "bytes": st.bytes,
        "images_not_indexed": behind,
    }


@dataclass
class GcReport:
    removed_chunks: int = 0
    freed_chunk_bytes: int = 0
    removed_leftovers: int = 0
    freed_leftover_bytes: int = 0
    protected_packs: int = 0

    @property
    def freed_bytes(self) -> int:
        return self.freed_chunk_bytes + self.freed_leftover_bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "removed_chunks": self.removed_chunks,
            "freed_chunk_bytes": self.freed_chunk_bytes,
            "removed_leftovers": self.removed_leftovers,
            "freed_leftover_bytes": self.freed_leftover_bytes,
            "freed_bytes": self.freed_bytes,
            "protected_packs": self.protected_packs,
        }


def _tree_size(path: Path) -> int:
    if path.is_file() or path.is_symlink():
        return path.lstat().st_size
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, f)).st_size
    return total


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


Protect = Callable[[], Collection[str]] | Collection[str] | None


def gc_store(store: ImageStore, *, protect: Protect = None) -> GcReport:
    """Remove chunks no image references and leftovers of killed captures (refuses while a capture runs).

    ``protect``: pack ids to keep although no image references them yet -- a set, or a callable called
    once while gc holds the store lock exclusively (the server passes its leases: packs a network capture
    uploaded or was told the store has). The dedupe index forgets the removed packs before their files go.
    """
    from fleetcast.store.dedupe import DedupeIndex, db_path

    if not store.root.is_dir():
        raise StoreError(f"the store {store.root} does not exist", hint="pass --store DIR")
    report = GcReport()
    with store.locked(exclusive=True):
        refs, damaged = _references(store, None, lazy=True)  # v2: the pack list is in the manifest
        if damaged:
            raise StoreError(
                f"refusing to collect garbage: {len(damaged)} image(s) have damaged manifests ({damaged[0]})",
                hint="fix or remove those images first ('fleetcast store check' lists them)",
            )
        kept = set(protect() if callable(protect) else (protect or ()))
        doomed: list[tuple[str, Path]] = []
        for fname, path in store.chunks.iter_files():
            if fname in refs and path.parent.name == fname[:2]:
                continue
            if fname in kept and path.parent.name == fname[:2]:
                report.protected_packs += 1
                continue
            doomed.append((fname, path))
        gone = [f for f, _ in doomed if CHUNK_ID_RE.fullmatch(f)]
        if gone and db_path(store).exists():
            with DedupeIndex.open(store, sync=False) as dx:
                dx.forget_packs(gone)
        for fname, path in doomed:
            size = _tree_size(path)
            _remove(path)
            if CHUNK_ID_RE.fullmatch(fname):
                report.removed_chunks += 1
                report.freed_chunk_bytes += size
            else:
                report.removed_leftovers += 1
                report.freed_leftover_bytes += size
        for path, live in store.tmp_entries():
            if live:  # an export/import work directory (captures are kept out by the exclusive lock)
                continue
            size = _tree_size(path)
            _remove(path)
            report.removed_leftovers += 1
            report.freed_leftover_bytes += size
    logger.info(
        "gc: removed %d chunks (%d bytes) and %d leftovers (%d bytes); %d protected packs kept",
        report.removed_chunks,
        report.freed_chunk_bytes,
        report.removed_leftovers,
        report.freed_leftover_bytes,
        report.protected_packs,
    )
    return report
