"""Keeping a store honest: ``verify`` one image, ``check`` the whole store, ``gc`` what nothing references."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleetcast.errors import ChunkCorrupt, NotFoundError, StoreError
from fleetcast.store.chunkstore import chunk_hash, decompress_verify
from fleetcast.store.manifest import CHUNK_ID_RE, PackRef

if TYPE_CHECKING:
    from fleetcast.store.images import ImageStore

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
    except StoreError as exc:
        return 0, f"{what}: {exc.message}"
    try:
        if pack is not None:
            check_stored(what, pack, stored)
        data = decompress_verify(cid, stored, None, what=what)
    except ChunkCorrupt as exc:
        return 0, exc.message
    for off, length, h in slices:
        if len(data) < off + length or chunk_hash(data[off : off + length]) != h:
            return 0, f"{what}: chunk {cid} does not hold slice {h} at offset {off}"
    return len(data), None


def verify_image(store: ImageStore, name: str) -> VerifyReport:
    """Read, decompress and re-hash every stored object the image uses (each once) and every slice."""
    manifest = store.open(name)
    slices: dict[str, set[tuple[int, int, str]]] = {}
    for _, chunk in manifest.entries():
        slices.setdefault(chunk.id, set()).add((chunk.offset, chunk.length, chunk.hash))
    report = VerifyReport(name)
    what = f"image {name!r}"
    packs = {p.id: p for p in manifest.pack_refs()}
    with ThreadPoolExecutor(WORKERS) as pool:
        for n, problem in pool.map(lambda c: _check_one(store, c, sorted(slices[c]), what, packs[c]), slices):
            report.chunks += 1
            report.bytes += n
            if problem:
                logger.error("%s", problem)
                report.problems.append(problem)
    return report


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
            "dedupe_index": self.dedupe_index,
        }


def _references(store: ImageStore, report: CheckReport | None) -> tuple[dict[str, int], list[str]]:
    """Stored object id -> stored size over all images, and the names of images whose manifest is damaged.

    An image removed while this runs (its manifest vanished between listing and opening) is skipped: it
    is not damage, and its packs are unreferenced from now on."""
    refs: dict[str, int] = {}
    damaged: list[str] = []
    for name in store.names():
        try:
            manifest = store.open(name)
        except NotFoundError:
            continue
        except StoreError as exc:
            damaged.append(f"{name}: {exc.message}")
            continue
        if report is not None:
            report.images += 1
        for p in manifest.pack_refs():
            refs.setdefault(p.id, p.stored)
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
    present: dict[str, Path] = {}
    for fname, path in store.chunks.iter_files():
        if CHUNK_ID_RE.fullmatch(fname) and path.parent.name == fname[:2] and path.is_file():
            present[fname] = path
        else:
            report.leftovers.append(str(path))
    report.chunks = len(present)
    what = "store"

    def one(cid: str) -> str | None:
        return _check_one(store, cid, [], what)[1]

    with ThreadPoolExecutor(WORKERS) as pool:
        for problem in pool.map(one, sorted(present)):
            if problem:
                report.damaged_chunks.append(problem)
    for cid in refs:
        if cid not in present:
            report.missing_chunks.append(cid)
    for cid, path in present.items():
        if cid not in refs:
            report.unreferenced_chunks += 1
            report.unreferenced_bytes += path.stat().st_size
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
        refs, damaged = _references(store, None)
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
