"""``fleetcast store gc --repack``: rewrite packs in which live data has fallen below a threshold.

An image re-captured many times references slices of older packs; a restore fetches each pack it uses
whole, so after many generations (and the removal of the old ones) it fetches bytes it does not need. The
**transfer amplification** of an image is the bytes of the packs it uses ÷ the (compressed) bytes of the
slices it uses (``amplification``). Repacking, under the store lock held exclusively (no capture, import
or other gc meanwhile):

1. per pack, its **live** bytes: the distinct slices any image references (exact, from the images'
   indexes); a pack whose live fraction of its content is below ``threshold`` is a candidate (not packs of
   format-1 images, nor packs ``protect`` names: leased to a capture in progress);
2. the candidates' live slices are copied, in the order of the first image that uses them, into new packs
   of about ``pack_size`` (compressed, hashed, fsynced, renamed into ``chunks/``) -- unreferenced until
   step 3, so a crash leaves only garbage for gc;
3. every image that used a candidate gets a new index (entries re-pointed) and manifest, swapped in
   atomically one image at a time (a crash leaves each image either old or new, both complete);
4. the candidates, now unreferenced, are removed (the dedupe index forgets them first).

Image ids change for the images rewritten (their manifests name other packs): deployments planned with the
old id must be planned again (the restore refuses an image that is not the one planned).

Memory is bounded whatever the store's size: the distinct slices (and where each moved) are rows of a
temporary SQLite file in the repack's work directory (``_Slices``, a 16 MiB page cache), not one Python
object per slice; in memory are one entry per pack (its number), one index block per image being walked,
one candidate pack and the new pack being filled (measured: docs/image-format.md, bench/repack.py).
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import sqlite3
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import blake3
import zstandard

from fleetcast.errors import StoreError
from fleetcast.store.chunkstore import (
    DEFAULT_LEVEL,
    chunk_hash,
    compress,
    copy_durable,
    decompress_verify,
    fsync_dir,
    write_file_durable,
)
from fleetcast.store.dedupe import DedupeIndex, announce_publish, db_path
from fleetcast.store.images import MANIFEST, ImageStore, rename_exchange
from fleetcast.store.index import Entry, IndexWriter
from fleetcast.store.manifest import INDEX_FILE, VERSION, Manifest, PackRef, load_image

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.8
PACK_SIZE = 16 << 20


@dataclass
class RepackReport:
    packs_before: int = 0
    candidates: int = 0
    new_packs: int = 0
    read_bytes: int = 0  # stored bytes of the candidate packs read
    written_bytes: int = 0  # stored bytes of the new packs
    live_bytes: int = 0  # uncompressed live bytes moved
    freed_bytes: int = 0  # stored bytes of the candidates removed
    images_rewritten: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "packs_before": self.packs_before,
            "candidates": self.candidates,
            "new_packs": self.new_packs,
            "read_bytes": self.read_bytes,
            "written_bytes": self.written_bytes,
            "live_bytes": self.live_bytes,
            "freed_bytes": self.freed_bytes,
            "images_rewritten": self.images_rewritten,
        }


def content_size(store: ImageStore, pack_id: str) -> int:
    """A pack's uncompressed size, from its zstd frame header (reads 18 bytes)."""
    with open(store.chunks.path(pack_id), "rb") as f:
        head = f.read(18)
    try:
        n = zstandard.frame_content_size(head)
    except zstandard.ZstdError as exc:
        raise StoreError(f"pack {pack_id} has no readable zstd frame header: {exc}") from exc
    if n < 0:
        raise StoreError(f"pack {pack_id} does not record its content size")
    return int(n)


def _slices(m: Manifest) -> Iterator[tuple[str, int, int]]:
    for _, c in m.entries():
        yield c.id, c.offset, c.length


def amplification(store: ImageStore, m: Manifest) -> tuple[int, float]:
    """(bytes a restore of ``m`` fetches, bytes of the slices it uses): each pack's stored size, and its
    stored size times the fraction of its content the image's distinct slices cover."""
    used: dict[str, dict[int, int]] = {}
    for pid, off, n in _slices(m):
        used.setdefault(pid, {})[off] = n
    fetched = 0
    needed = 0.0
    for p in m.pack_refs():
        fetched += p.stored
        needed += p.stored * sum(used.get(p.id, {}).values()) / content_size(store, p.id)
    return fetched, needed


class _Slices:
    """The distinct slices the store's images use, on disk: (pack, offset) -> length, and the new
    (pack, offset) of each moved slice. Packs are numbered in first-use order (``ids``)."""

    BATCH = 10_000

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        for pragma in ("journal_mode=OFF", "synchronous=OFF", "cache_size=-16384", "temp_store=FILE"):
            self.db.execute(f"PRAGMA {pragma}")
        self.db.execute(
            "CREATE TABLE slice (pack INTEGER, off INTEGER, len INTEGER, npack INTEGER, noff INTEGER, "
            "PRIMARY KEY (pack, off)) WITHOUT ROWID"
        )
        self.number: dict[str, int] = {}
        self.ids: list[str] = []

    def close(self) -> None:
        self.db.close()

    def pack_number(self, pid: str) -> int:
        n = self.number.get(pid)
        if n is None:
            n = self.number[pid] = len(self.ids)
            self.ids.append(pid)
        return n

    def add(self, slices: Iterable[tuple[str, int, int]]) -> None:
        """Every (pack, offset, length) an image uses (duplicates are one slice)."""
        batch: list[tuple[int, int, int]] = []
        self.db.execute("BEGIN")
        for pid, off, n in slices:
            batch.append((self.pack_number(pid), off, n))
            if len(batch) >= self.BATCH:
                self.db.executemany("INSERT OR IGNORE INTO slice (pack, off, len) VALUES (?, ?, ?)", batch)
                batch.clear()
        self.db.executemany("INSERT OR IGNORE INTO slice (pack, off, len) VALUES (?, ?, ?)", batch)
        self.db.execute("COMMIT")

    def live(self) -> dict[str, int]:
        """pack -> its live bytes (the sum of its distinct slices), in first-use order."""
        got = dict(self.db.execute("SELECT pack, SUM(len) FROM slice GROUP BY pack"))
        return {pid: int(got.get(i, 0)) for i, pid in enumerate(self.ids)}

    def of_pack(self, pid: str) -> list[tuple[int, int]]:
        """The live slices (offset, length) of a pack, by offset."""
        rows = self.db.execute("SELECT off, len FROM slice WHERE pack = ? ORDER BY off", (self.number[pid],))
        return [(int(o), int(n)) for o, n in rows]

    def set_moved(self, moves: list[tuple[str, int, str, int]]) -> None:
        """(old pack, old offset, new pack, new offset) of slices written into a new pack."""
        self.db.execute("BEGIN")
        self.db.executemany(
            "UPDATE slice SET npack = ?, noff = ? WHERE pack = ? AND off = ?",
            [(self.pack_number(new), noff, self.number[old], off) for old, off, new, noff in moves],
        )
        self.db.execute("COMMIT")

    def moved(self, pid: str, off: int) -> tuple[str, int] | None:
        n = self.number.get(pid)
        if n is None:
            return None
        row = self.db.execute("SELECT npack, noff FROM slice WHERE pack = ? AND off = ?", (n, off)).fetchone()
        if row is None or row[0] is None:
            return None
        return self.ids[row[0]], int(row[1])


def _image_slices(m: Manifest) -> Iterator[tuple[str, int, int]]:
    """(pack, offset, length) of every entry, from the index's records (no ChunkRef per entry)."""
    index = m.open_index()
    if index is None:  # format 1: the chunks are in the manifest
        yield from _slices(m)
        return
    ids = [p.id for p in m.packs]
    for e in index.entries():
        yield ids[e.pack], e.offset, sum(n for _, n in e.extents)


def repack_store(
    store: ImageStore,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    protect: Callable[[], Collection[str]] | Collection[str] | None = None,
    pack_size: int = PACK_SIZE,
    level: int = DEFAULT_LEVEL,
) -> RepackReport:
    report = RepackReport()
    with store.locked(exclusive=True):
        images = [store.open(n) for n in store.names()]  # every index verified; damage refuses
        kept = set(protect() if callable(protect) else (protect or ()))
        work = store.tmp_dir / f"repack-{os.getpid()}-{secrets.token_hex(4)}"
        work.mkdir(parents=True)
        slices = _Slices(work / "slices.sqlite")
        try:
            pinned: set[str] = set(kept)
            for m in images:
                if m.version == VERSION:
                    pinned.update(m.pack_ids())
                slices.add(_image_slices(m))
            live = slices.live()
            report.packs_before = len(live)
            candidates = [
                pid
                for pid, n in live.items()
                if pid not in pinned and n < threshold * content_size(store, pid)
            ]
            report.candidates = len(candidates)
            if not candidates:
                return report
            new_refs = _write_packs(store, work, candidates, slices, report, pack_size, level)
            cand = set(candidates)
            for m in images:
                if cand.isdisjoint(m.pack_ids()):
                    continue
                _rewrite_image(store, work, m, slices, new_refs, candidates=cand)
                report.images_rewritten.append(m.name)
            if db_path(store).exists():
                with DedupeIndex.open(store, sync=False) as dx:
                    dx.forget_packs(candidates)
            for pid in candidates:
                path = store.chunks.path(pid)
                report.freed_bytes += path.stat().st_size
                path.unlink()
        finally:
            slices.close()
            shutil.rmtree(work, ignore_errors=True)
    logger.info(
        "repack: %d of %d packs rewritten into %d (read %d, wrote %d bytes), %d images re-pointed",
        report.candidates,
        report.packs_before,
        report.new_packs,
        report.read_bytes,
        report.written_bytes,
        len(report.images_rewritten),
    )
    return report


def _write_packs(  # noqa: PLR0917 -- one call site
    store: ImageStore,
    work: Path,
    candidates: list[str],
    slices: _Slices,
    report: RepackReport,
    pack_size: int,
    level: int,
) -> dict[str, PackRef]:
    """Copy the candidates' live slices into new packs (where each went is recorded in ``slices``)."""
    refs: dict[str, PackRef] = {}
    pending: list[tuple[str, int]] = []  # (old pack, old offset) of the slices in the buffer
    buf: list[bytes] = []
    size = 0
    written: list[Path] = []

    def seal() -> None:
        nonlocal buf, size, pending
        if not buf:
            return
        content = b"".join(buf)
        pid = chunk_hash(content)
        stored = compress(content, level)
        path = work / pid
        write_file_durable(path, stored)
        written.append(path)
        refs[pid] = PackRef(pid, len(stored), str(blake3.blake3(stored).hexdigest()))
        pos = 0
        moves: list[tuple[str, int, str, int]] = []
        for (old, off), piece in zip(pending, buf, strict=True):
            moves.append((old, off, pid, pos))
            pos += len(piece)
        slices.set_moved(moves)
        report.new_packs += 1
        report.written_bytes += len(stored)
        buf, size, pending = [], 0, []

    for pid in candidates:
        stored = store.chunks.read(pid)
        report.read_bytes += len(stored)
        data = decompress_verify(pid, stored, None, what="repack")
        del stored
        for off, n in slices.of_pack(pid):
            piece = data[off : off + n]
            buf.append(piece)
            pending.append((pid, off))
            size += n
            report.live_bytes += n
            if size >= pack_size:
                seal()
        del data
    seal()
    dirs: set[Path] = set()
    for path in written:
        final = store.chunks.path(path.name)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.rename(path, final)
        dirs.add(final.parent)
    for d in dirs:
        fsync_dir(d)
    fsync_dir(store.chunks.root)
    return refs


def _rewrite_image(
    store: ImageStore,
    work: Path,
    m: Manifest,
    slices: _Slices,
    new_refs: dict[str, PackRef],
    *,
    candidates: set[str],
) -> None:
    """A new index and manifest for ``m`` with its moved slices re-pointed, swapped in atomically."""
    old_refs = {p.id: p for p in m.pack_refs()}
    numbers: dict[str, int] = {}
    packs: list[PackRef] = []
    image_dir = work / f"img-{m.name}"
    image_dir.mkdir()
    index_path = work / f"index-{m.name}"
    index = m.open_index()
    assert index is not None
    repointed = {i for i, p in enumerate(m.packs) if p.id in candidates}  # the others stay
    with open(index_path, "wb") as f:
        w = IndexWriter(f)
        for e in index.entries():
            pid, off = m.packs[e.pack].id, e.offset
            if e.pack in repointed:
                pid, off = slices.moved(pid, off) or (pid, off)
            n = numbers.get(pid)
            if n is None:
                n = numbers[pid] = len(packs)
                packs.append(new_refs.get(pid) or old_refs[pid])
            w.add(Entry(e.area, n, off, e.window, e.hash, e.extents))
        info = w.close()
        f.flush()
        os.fsync(f.fileno())
    new = replace(m, packs=tuple(packs), index_info=info, index=None, image_id="", index_path=None)
    doc = new.to_json()
    checked = load_image(doc, index_path)
    for (_, a), (_, b) in zip(m.entries(), checked.entries(), strict=True):
        if (a.hash, a.window, a.extents) != (b.hash, b.window, b.extents):
            raise StoreError(f"repack of image {m.name!r} changed entry at window {a.window} (a bug)")
    copy_durable(index_path, image_dir / INDEX_FILE)
    write_file_durable(image_dir / MANIFEST, doc)
    fsync_dir(image_dir)
    announce_publish(store, m.name, checked.image_id)
    final = store.images_dir / m.name
    rename_exchange(image_dir, final)  # image_dir now holds the old image
    fsync_dir(store.images_dir)
    shutil.rmtree(image_dir, ignore_errors=True)
    with DedupeIndex.open(store, sync=False) as dx:
        dx.add_image(checked)
