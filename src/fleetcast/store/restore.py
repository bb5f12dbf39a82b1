"""Restore: an image onto a disk or file, packs in any order, every chunk verified before it is written.

Order: refuse before writing anything (image id not the planned one, target too small, different logical
sector size, a resume that cannot be one); create a missing target file at the image's disk size
(sparse); **invalidate the headers** -- zero the start and end of every gap (partition table, GPT backup,
EBRs) and the first and last window of every partition (boot sectors, superblocks) -- and make the
image's used-but-zero ranges read zero (``BLKZEROOUT`` on a block device); then ask the ``PackSource``
for the packs still missing and, as each arrives (in any order), check its stored size and hash,
decompress and verify it in worker threads and write every entry that uses it (the entries inside the
header ranges go to a spill file). Only after all data is fsynced are the partition table and the
spilled headers written and fsynced: a restore killed before that leaves a disk no firmware boots and
no system mounts. ``on_checkpoint(done)`` gets the set of packs whose entries are durable (packs with
spilled entries count at the very end), so a resumed restore (``done=``) asks only for the others.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
import struct
import tempfile
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NamedTuple

import blake3

from fleetcast.errors import ChunkCorrupt, DiskError, FleetcastError, ManifestError, PackMissing, RestoreError
from fleetcast.progress import ProgressFn, human_bytes
from fleetcast.store.chunkstore import decompress_verify
from fleetcast.store.manifest import Area, Manifest, PackRef, check_entry
from fleetcast.store.source import ChunkSource, PackSource, as_pack_source

if TYPE_CHECKING:
    from fleetcast.disk.partitions import PartitionTable

logger = logging.getLogger(__name__)

BLKZEROOUT = 0x127F
CHECKPOINT_BYTES = 64 << 20
_ZERO_BUF = bytes(1 << 20)


@dataclass
class RestoreResult:
    image: str
    target: Path
    created: bool
    bytes_written: int = 0
    chunks_written: int = 0
    chunks_total: int = 0
    packs_written: int = 0
    zeroed_bytes: int = 0
    invalidated_bytes: int = 0
    grown: bool = False
    notes: list[str] = field(default_factory=list)
    table: PartitionTable | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "target": str(self.target),
            "created": self.created,
            "bytes_written": self.bytes_written,
            "chunks_written": self.chunks_written,
            "chunks_total": self.chunks_total,
            "packs_written": self.packs_written,
            "zeroed_bytes": self.zeroed_bytes,
            "grown": self.grown,
            "notes": self.notes,
        }


def _size(n: int) -> str:
    return f"{human_bytes(n)} ({n} bytes)"


def check_target(manifest: Manifest, target: Path) -> bool:
    """Refuse targets the image cannot go to; True when the target does not exist yet (it will be created)."""
    from fleetcast.disk.device import inspect
    from fleetcast.disk.discovery import in_use

    if not target.exists():
        if not target.parent.is_dir():
            raise RestoreError(f"cannot create target {target}: directory {target.parent} does not exist")
        return True
    try:
        info = inspect(target)
    except DiskError as exc:
        raise RestoreError(f"cannot restore onto {target}: {exc.message}", hint=exc.hint) from exc
    busy = in_use(target) if info.is_block else []
    if busy:
        raise RestoreError(
            f"target {target} is in use: {'; '.join(busy)}",
            hint="fleetcast never overwrites a disk in use: unmount it (and stop what holds it) first",
        )
    if info.logical_sector_size != manifest.logical_sector_size:
        raise RestoreError(
            f"target {target} has {info.logical_sector_size}-byte logical sectors but image "
            f"{manifest.name!r} was captured from a disk with {manifest.logical_sector_size}-byte "
            "logical sectors",
            hint="restore onto a disk with the same logical sector size",
        )
    if info.size < manifest.disk_size:
        raise RestoreError(
            f"target {target} is {_size(info.size)} but image {manifest.name!r} needs at least "
            f"{_size(manifest.disk_size)}",
            hint="pick a larger disk",
        )
    return False


def restore(
    manifest: Manifest,
    source: PackSource | ChunkSource,
    target: Path,
    *,
    grow: bool = False,
    progress: ProgressFn | None = None,
    done: Collection[str] = (),
    on_checkpoint: Callable[[frozenset[str]], None] | None = None,
    workers: int = 2,
    checkpoint_bytes: int = CHECKPOINT_BYTES,
    expected_id: str | None = None,
) -> RestoreResult:
    """Write ``manifest``'s image onto ``target``, asking ``source`` for the packs in any order.

    ``done`` is the set of packs a previous, interrupted restore of the same image onto the same target
    completed (what ``on_checkpoint`` reported, after an fsync): they are not asked for again.
    ``expected_id`` is the image id the caller planned (a task names the image by id): checked first."""
    target = Path(target)
    what = f"image {manifest.name!r}"
    manifest.open_index()  # a lazily loaded image: its index verified before anything else
    if expected_id is not None and manifest.image_id != expected_id:
        raise RestoreError(
            f"{what} has id {manifest.image_id or '(unknown)'} but {expected_id} was planned",
            hint="the image was changed or replaced since the deployment was planned; plan it again",
        )
    packs = manifest.pack_refs()
    by_id = {p.id: i for i, p in enumerate(packs)}
    unknown = sorted(set(done) - set(by_id))
    if unknown:
        raise RestoreError(
            f"cannot resume {what}: pack {unknown[0]} is marked done but the image does not use it",
            hint="restore from the start (no done packs)",
        )
    created = check_target(manifest, target)
    if created and done:
        raise RestoreError(
            f"cannot resume {what} with {len(done)} packs done: target {target} does not exist, "
            "so the packs written before are not there",
            hint="restore from the start (no done packs)",
        )
    result = RestoreResult(manifest.name, target, created, chunks_total=manifest.entry_count)
    try:
        if created:
            with open(target, "xb") as f:
                f.truncate(manifest.disk_size)
        is_block = stat.S_ISBLK(os.stat(target).st_mode)
        if not done and not created and not is_block:
            # an existing file: make it read zero everywhere, keeping its size (sparse, instant)
            old = os.stat(target).st_size
            os.truncate(target, 0)
            os.truncate(target, old)
        fd = os.open(target, os.O_RDWR)
    except OSError as exc:
        raise RestoreError(f"cannot open target {target} for writing: {exc.strerror}") from exc
    try:
        # headers first out, last in: until the end, no table and no filesystem header is on the disk
        result.invalidated_bytes = _invalidate_headers(fd, manifest)
        if not done and is_block:
            result.zeroed_bytes = _zero_ranges(fd, manifest)
        os.fsync(fd)
        with tempfile.TemporaryFile(prefix="fleetcast-restore-") as spill:
            writer = _PackWriter(manifest, fd, spill, result, what)
            _write_packs(
                manifest,
                as_pack_source(source),
                writer,
                set(done),
                progress=progress,
                on_checkpoint=on_checkpoint,
                workers=workers,
                checkpoint_bytes=checkpoint_bytes,
            )
            writer.check_totals()
            os.fsync(fd)  # all data durable before any header is written
            # filesystem headers first: without a table nothing finds them; then the table and the
            # gaps (MBR boot code, GPT as captured, EBRs) -- a kill in between leaves no table
            if manifest.table.label == "none":  # a bare filesystem: no table to hide it behind
                _write_table(manifest, target)
            writer.write_deferred(gaps=False)
            os.fsync(fd)
            if manifest.table.label != "none":
                _write_table(manifest, target)
            writer.write_deferred(gaps=True)
            os.fsync(fd)
        if on_checkpoint:
            on_checkpoint(frozenset(p.id for p in packs))
    except OSError as exc:
        _remove_created(target, created)
        raise RestoreError(f"writing {what} to {target} failed: {exc.strerror}") from exc
    except FleetcastError:
        _remove_created(target, created)
        raise
    finally:
        os.close(fd)
    if grow:
        _grow(manifest, target, result)
    logger.info(
        "restored %s onto %s: %d chunks, %d bytes",
        manifest.name,
        target,
        result.chunks_written,
        result.bytes_written,
    )
    return result


def _remove_created(target: Path, created: bool) -> None:
    """A restore that failed (a FleetcastError: corrupt pack, source gone, bad metadata) leaves no target
    file it created; an existing target keeps its invalidated headers (it mounts as nothing, and a resume
    can finish it)."""
    if created:
        with suppress(OSError):
            os.unlink(target)


def _write_table(manifest: Manifest, target: Path) -> None:
    from fleetcast.disk.partitions import write_table

    try:
        write_table(target, manifest.table)
    except DiskError as exc:
        raise RestoreError(
            f"cannot write the partition table of image {manifest.name!r}: {exc.message}"
        ) from exc


def _zero_ranges(fd: int, manifest: Manifest) -> int:
    """Make the image's used-but-zero ranges read zero on a block device (BLKZEROOUT, else write zeros)."""
    done = 0
    for area in manifest.areas:
        for off, length in area.zeros:
            _zero(fd, area.start + off, length)
            done += length
    return done


def _zero(fd: int, start: int, length: int) -> None:
    aligned_start = -(-start // 512) * 512
    aligned_end = (start + length) // 512 * 512
    if aligned_end > aligned_start:
        try:
            fcntl.ioctl(fd, BLKZEROOUT, struct.pack("QQ", aligned_start, aligned_end - aligned_start))
            _pwrite_zeros(fd, start, aligned_start - start)
            _pwrite_zeros(fd, aligned_end, start + length - aligned_end)
            return
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTTY):
                raise
    _pwrite_zeros(fd, start, length)


def _pwrite_zeros(fd: int, start: int, length: int) -> None:
    while length > 0:
        n = os.pwrite(fd, _ZERO_BUF[: min(length, len(_ZERO_BUF))], start)
        start += n
        length -= n


HEAD_GAP_BYTES = 1 << 20  # of each gap, this much at its start and at its end is invalidated


def _header_ranges(manifest: Manifest) -> list[tuple[int, int]]:
    """Disk byte ranges zeroed before any data is written and rewritten only at the end: the start and
    end of every gap (MBR, GPT headers and entries, EBRs, the GPT backup) and the first and last window of
    every partition (boot sectors and superblocks: ext, NTFS and its backup at the end, FAT and its
    backup in sector 6)."""
    out: list[tuple[int, int]] = []
    for area in manifest.areas:
        edge = HEAD_GAP_BYTES if area.kind == "gap" else manifest.chunk_size
        if area.size <= 2 * edge:
            out.append((area.start, area.size))
        else:
            out.append((area.start, edge))
            out.append((area.start + area.size - edge, edge))
    return out


def _deferred(manifest: Manifest, area: Area, window: int) -> bool:
    """An entry written only after all other data is durable: one inside a range ``_header_ranges``
    invalidates."""
    if area.kind == "gap":
        return True
    cs = manifest.chunk_size
    return area.size <= 2 * cs or window < cs or window + cs > area.size - cs


def _invalidate_headers(fd: int, manifest: Manifest) -> int:
    n = 0
    for start, length in _header_ranges(manifest):
        _zero(fd, start, length)
        n += length
    return n


class _Slice(NamedTuple):
    area: int
    offset: int  # in the pack's uncompressed content
    window: int
    hash: bytes
    extents: tuple[tuple[int, int], ...]


class _PackWriter:
    """Writes the entries of one pack; entries in header ranges go to a spill file until the end."""

    def __init__(self, manifest: Manifest, fd: int, spill: IO[bytes], result: RestoreResult, what: str):
        self.manifest = manifest
        self.fd = fd
        self.spill = spill
        self.result = result
        self.what = what
        # (spill offset, disk offset, length, in a gap: table sectors, boot code, EBRs)
        self.deferred: list[tuple[int, int, int, bool]] = []
        self.area_data = [0] * len(manifest.areas)
        self.v1: dict[str, list[_Slice]] | None = None
        self.blocks: dict[int, list[int]] = {}
        if manifest.index is None:
            self.v1 = {}
            index = {id(a): i for i, a in enumerate(manifest.areas)}
            for area, c in manifest.entries():
                self.v1.setdefault(c.id, []).append(
                    _Slice(index[id(area)], c.offset, c.window, bytes.fromhex(c.hash), c.extents)
                )
        else:
            self.blocks = manifest.index.blocks_of_pack()

    def slices(self, pack_no: int, pack_id: str) -> Iterator[_Slice]:
        if self.v1 is not None:
            yield from self.v1.get(pack_id, [])
            return
        index = self.manifest.index
        assert index is not None
        for e in index.pack_entries(pack_no, self.blocks.get(pack_no, [])):
            check_entry(self.manifest, e, self.what)
            yield _Slice(e.area, e.offset, e.window, e.hash, e.extents)

    def write_pack(self, pack_no: int, pack_id: str, data: bytes) -> bool:
        """Write every entry of the pack; True when some were deferred (the pack is not done yet)."""
        deferred = False
        for s in self.slices(pack_no, pack_id):
            area = self.manifest.areas[s.area]
            length = sum(n for _, n in s.extents)
            piece = data[s.offset : s.offset + length]
            if len(piece) != length or blake3.blake3(piece).digest() != s.hash:
                raise ChunkCorrupt(
                    f"{self.what}: pack {pack_id} does not hold chunk {s.hash.hex()} at offset {s.offset}",
                    hint="the store or the image's metadata is damaged; run 'fleetcast store check'",
                )
            self.area_data[s.area] += length
            self.result.chunks_written += 1
            self.result.bytes_written += length
            if _deferred(self.manifest, area, s.window):
                deferred = True
                pos = 0
                for off, n in s.extents:
                    at = self.spill.seek(0, os.SEEK_END)
                    self.spill.write(piece[pos : pos + n])
                    self.deferred.append((at, area.start + off, n, area.kind == "gap"))
                    pos += n
                continue
            _pwrite_extents(self.fd, piece, area.start, s.extents)
        return deferred

    def account(self, pack_no: int, pack_id: str) -> bool:
        """Count a pack an earlier (resumed) restore wrote toward the per-area totals; False (nothing
        counted) when it holds header entries: the headers were invalidated again, it must come again."""
        got = [0] * len(self.area_data)
        for s in self.slices(pack_no, pack_id):
            if _deferred(self.manifest, self.manifest.areas[s.area], s.window):
                return False
            got[s.area] += sum(n for _, n in s.extents)
        for i, n in enumerate(got):
            self.area_data[i] += n
        return True

    def check_totals(self) -> None:
        for i, area in enumerate(self.manifest.areas):
            if self.area_data[i] != area.data_bytes:
                raise ManifestError(
                    f"{self.what}: {area.label} received {self.area_data[i]} bytes of chunks but its "
                    f"manifest records {area.data_bytes}",
                    hint="the image's metadata is damaged; nothing on the target was made bootable",
                )

    def write_deferred(self, *, gaps: bool) -> None:
        """The spilled entries of the gaps (``gaps``) or of the filesystems."""
        for at, disk_off, n, in_gap in self.deferred:
            if in_gap != gaps:
                continue
            self.spill.seek(at)
            _pwrite_extents(self.fd, self.spill.read(n), disk_off, ((0, n),))


def _pwrite_extents(fd: int, piece: bytes, base: int, extents: Iterable[tuple[int, int]]) -> None:
    view = memoryview(piece)
    pos = 0
    for off, n in extents:
        written = 0
        while written < n:
            written += os.pwrite(fd, view[pos + written : pos + n], base + off + written)
        pos += n


def check_stored(what: str, pack: PackRef, stored: bytes) -> None:
    """A pack is intact only when its stored bytes are exactly the recorded size (and, from format 2 on,
    hash): bytes appended after the zstd frame, which decompression would ignore, fail here."""
    if len(stored) != pack.stored:
        raise ChunkCorrupt(
            f"{what}: pack {pack.id} is corrupt: it is {len(stored)} bytes, "
            f"the manifest records {pack.stored}",
            hint=_CORRUPT_HINT,
        )
    if pack.hash is not None:
        found = blake3.blake3(stored).hexdigest()
        if found != pack.hash:
            raise ChunkCorrupt(
                f"{what}: pack {pack.id} is corrupt: its stored bytes hash to {found}, "
                f"the manifest records {pack.hash}",
                hint=_CORRUPT_HINT,
            )


_CORRUPT_HINT = "run 'fleetcast store check'; the source delivered damaged bytes"


def _verify_pack(what: str, pack: PackRef, stored: bytes) -> bytes:
    check_stored(what, pack, stored)
    return decompress_verify(pack.id, stored, None, what=what)


def _named(what: str, stream: Iterator[tuple[str, bytes]]) -> Iterator[tuple[str, bytes]]:
    """The source's packs; a pack it reports missing (a local store) names the image (exit 4)."""
    try:
        yield from stream
    except PackMissing as exc:
        raise PackMissing(f"{what}: {exc.message}", hint=exc.hint) from exc
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()


@contextmanager
def _closing(it: Iterator[Any]) -> Iterator[None]:
    """Close a pack source's generator on the way out, so a failed restore stops its prefetching now
    (not when the garbage collector gets to it)."""
    try:
        yield
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


def _write_packs(
    manifest: Manifest,
    source: PackSource,
    writer: _PackWriter,
    done: set[str],
    *,
    progress: ProgressFn | None,
    on_checkpoint: Callable[[frozenset[str]], None] | None,
    workers: int,
    checkpoint_bytes: int,
) -> None:
    """Ask for the missing packs (again, while a round brings some), write each as it arrives."""
    packs = manifest.pack_refs()
    number = {p.id: i for i, p in enumerate(packs)}
    total = manifest.data_bytes
    done = {pid for pid in done if writer.account(number[pid], pid)}
    missing = {p.id for p in packs} - done
    if progress:
        progress(sum(writer.area_data), total)
    durable = set(done)
    pending_done: list[str] = []
    since = 0
    what = writer.what

    def finish(fut: Future[bytes], pid: str) -> None:
        nonlocal since
        data = fut.result()
        if not writer.write_pack(number[pid], pid, data):
            pending_done.append(pid)
        writer.result.packs_written += 1
        since += len(data)
        if progress:
            progress(sum(writer.area_data), total)
        if on_checkpoint and since >= checkpoint_bytes:
            checkpoint()

    def checkpoint() -> None:
        nonlocal since
        os.fsync(writer.fd)
        durable.update(pending_done)
        pending_done.clear()
        since = 0
        if on_checkpoint:
            on_checkpoint(frozenset(durable))

    with ThreadPoolExecutor(workers, thread_name_prefix="restore") as pool:
        while missing:
            before = len(missing)
            inflight: deque[tuple[Future[bytes], str]] = deque()
            stream = _named(what, source.packs([p.id for p in packs if p.id in missing]))  # first-use order
            with _closing(stream):
                for pid, stored in stream:
                    if pid not in missing:
                        continue  # not this image's, already written, or delivered twice
                    missing.discard(pid)
                    inflight.append((pool.submit(_verify_pack, what, packs[number[pid]], stored), pid))
                    while len(inflight) > workers:
                        finish(*inflight.popleft())
                while inflight:
                    finish(*inflight.popleft())
            if len(missing) == before:
                first = sorted(missing)[0]
                raise RestoreError(
                    f"{what}: the pack source delivered none of the {len(missing)} missing packs "
                    f"(first: {first})",
                    hint="check that the server or store holds the image's packs: "
                    "fleetcast image verify NAME",
                )
    if on_checkpoint and pending_done:
        checkpoint()


def _last_partition_area(manifest: Manifest) -> Area | None:
    """The partition that ends last (the one --grow grows), or the whole-disk area of a bare filesystem."""
    parts = [a for a in manifest.areas if a.kind in ("partition", "disk")]
    return max(parts, key=lambda a: a.start + a.size) if parts else None


def _grow(manifest: Manifest, target: Path, result: RestoreResult) -> None:
    from fleetcast.disk.filesystems import FsType, get
    from fleetcast.disk.grow import grow_last_partition

    last = _last_partition_area(manifest)
    if last is None:
        result.notes.append("--grow: the image has no partitions; nothing was grown")
        return
    fstype = FsType(last.fstype)
    if not get(fstype).growable:
        result.notes.append(f"--grow: {last.label} holds {fstype}; it grows, its filesystem is left as is")
    try:
        result.table = grow_last_partition(target, manifest.table, fstype)
    except DiskError as exc:
        raise RestoreError(
            f"image {manifest.name!r} was written to {target} but growing failed: {exc.message}"
        ) from exc
    result.grown = True
