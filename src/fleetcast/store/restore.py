"""Restore: an image onto a disk or file, every chunk verified against its hash before it is written.

Order: refuse before writing anything (target too small, different logical sector size, bad start index);
create a missing target file at the image's disk size (sparse); write the partition table; make the
image's used-but-zero ranges read zero (a fresh or truncated file already does; a block device gets
``BLKZEROOUT``); write every chunk (decompress -> verify -> ``pwrite`` at its extents) with decompression
in worker threads and writes in manifest order; fsync; ``--grow`` last. Blocks the image does not use keep
whatever the target held, as with partclone. ``on_checkpoint(n)`` follows an fsync after the first ``n``
chunk entries, so an interrupted restore can resume with ``start_chunk=n``.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
import struct
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleetcast.errors import ChunkCorrupt, DiskError, RestoreError
from fleetcast.progress import ProgressFn, human_bytes
from fleetcast.store.chunkstore import chunk_hash, decompress_verify
from fleetcast.store.manifest import Area, ChunkRef, Manifest
from fleetcast.store.source import ChunkSource

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
    zeroed_bytes: int = 0
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
    source: ChunkSource,
    target: Path,
    *,
    grow: bool = False,
    progress: ProgressFn | None = None,
    start_chunk: int = 0,
    on_checkpoint: Callable[[int], None] | None = None,
    workers: int = 2,
    checkpoint_bytes: int = CHECKPOINT_BYTES,
) -> RestoreResult:
    target = Path(target)
    total_entries = manifest.entry_count
    if not 0 <= start_chunk <= total_entries:
        raise RestoreError(
            f"cannot resume image {manifest.name!r} at chunk {start_chunk}: "
            f"it has {total_entries} chunk entries"
        )
    created = check_target(manifest, target)
    if created and start_chunk:
        raise RestoreError(
            f"cannot resume image {manifest.name!r} at chunk {start_chunk}: target {target} does not exist, "
            "so the chunks before it are not there",
            hint="restore from the start (chunk 0)",
        )
    result = RestoreResult(manifest.name, target, created, chunks_total=total_entries)
    try:
        if created:
            with open(target, "xb") as f:
                f.truncate(manifest.disk_size)
        is_block = stat.S_ISBLK(os.stat(target).st_mode)
        if start_chunk == 0 and not created and not is_block:
            # an existing file: make it read zero everywhere, keeping its size (sparse, instant)
            old = os.stat(target).st_size
            os.truncate(target, 0)
            os.truncate(target, old)
        if start_chunk == 0:
            _write_table(manifest, target)
        fd = os.open(target, os.O_RDWR)
    except OSError as exc:
        raise RestoreError(f"cannot open target {target} for writing: {exc.strerror}") from exc
    try:
        if start_chunk == 0 and is_block:
            result.zeroed_bytes = _zero_ranges(fd, manifest)
        _write_chunks(
            manifest,
            source,
            fd,
            result,
            progress=progress,
            start_chunk=start_chunk,
            on_checkpoint=on_checkpoint,
            workers=workers,
            checkpoint_bytes=checkpoint_bytes,
        )
        os.fsync(fd)
    except OSError as exc:
        raise RestoreError(f"writing image {manifest.name!r} to {target} failed: {exc.strerror}") from exc
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


PACK_CACHE = 8  # decompressed packs kept for entries that come back to a pack (re-captured images)


def fetch_plan(
    entries: list[tuple[Area, ChunkRef]], capacity: int = PACK_CACHE
) -> tuple[list[str], list[int]]:
    """Which packs to fetch, in order, and for each entry the index of the fetch that serves it.

    A small LRU of decompressed packs is simulated: an entry whose pack is cached needs no fetch; a pack
    that was evicted is fetched again. Deterministic, so the fetch list can be handed to a ChunkSource
    (and prefetched) before anything is written.
    """
    fetches: list[str] = []
    serve: list[int] = []
    cache: dict[str, int] = {}  # pack id -> fetch index, in LRU order (oldest first)
    for _, chunk in entries:
        k = cache.pop(chunk.id, None)
        if k is None:
            k = len(fetches)
            fetches.append(chunk.id)
            if len(cache) >= capacity:
                cache.pop(next(iter(cache)))
        cache[chunk.id] = k
        serve.append(k)
    return fetches, serve


@contextmanager
def _closing(it: Iterator[Any]) -> Iterator[None]:
    """Close a chunk source's generator on the way out, so a failed restore stops its prefetching now
    (not when the garbage collector gets to it)."""
    try:
        yield
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


def _write_chunks(
    manifest: Manifest,
    source: ChunkSource,
    fd: int,
    result: RestoreResult,
    *,
    progress: ProgressFn | None,
    start_chunk: int,
    on_checkpoint: Callable[[int], None] | None,
    workers: int,
    checkpoint_bytes: int,
) -> None:
    entries: list[tuple[Area, ChunkRef]] = list(manifest.entries())
    total = manifest.data_bytes
    done = sum(c.length for _, c in entries[:start_chunk])
    if progress:
        progress(done, total)
    todo = entries[start_chunk:]
    what = f"image {manifest.name!r}"
    fetches, serve = fetch_plan(todo)
    last_use = {k: i for i, k in enumerate(serve)}
    fetched = source.fetch_many(fetches)
    futures: dict[int, Future[bytes]] = {}
    lookahead = workers + 1
    since_checkpoint = 0
    submitted = 0

    def submit_until(k: int) -> None:
        nonlocal submitted
        while submitted <= min(k, len(fetches) - 1):
            pid = fetches[submitted]
            try:
                got, stored = next(fetched)
            except StopIteration:
                raise RestoreError(f"{what}: the chunk source ended before chunk {pid}") from None
            if got != pid:
                raise RestoreError(f"{what}: the chunk source sent chunk {got}, expected {pid}")
            futures[submitted] = pool.submit(decompress_verify, pid, stored, None, what=what)
            submitted += 1

    with ThreadPoolExecutor(workers, thread_name_prefix="restore") as pool, _closing(fetched):
        for i, (area, chunk) in enumerate(todo):
            k = serve[i]
            submit_until(k + lookahead)
            pack = futures[k].result()
            length = chunk.length
            piece = pack[chunk.offset : chunk.offset + length]
            if len(piece) != length or chunk_hash(piece) != chunk.hash:
                raise ChunkCorrupt(
                    f"{what}: chunk {chunk.id} does not hold slice {chunk.hash} at offset {chunk.offset}",
                    hint="the store or the image manifest is damaged; run 'fleetcast store check'",
                )
            view = memoryview(piece)
            pos = 0
            for off, n in chunk.extents:
                written = 0
                while written < n:
                    written += os.pwrite(fd, view[pos + written : pos + n], area.start + off + written)
                pos += n
            if last_use[k] == i:
                del futures[k]
            done += length
            since_checkpoint += length
            result.bytes_written += length
            result.chunks_written += 1
            if progress:
                progress(done, total)
            if on_checkpoint and since_checkpoint >= checkpoint_bytes:
                os.fsync(fd)
                on_checkpoint(start_chunk + i + 1)
                since_checkpoint = 0
    if on_checkpoint and todo:
        os.fsync(fd)
        on_checkpoint(start_chunk + len(todo))


def _last_partition_area(manifest: Manifest) -> Area | None:
    """The partition that ends last (the one --grow grows), or the whole-disk area of a bare filesystem."""
    parts = [a for a in manifest.areas if a.kind in ("partition", "disk")]
    return max(parts, key=lambda a: a.start + a.size) if parts else None


def _grow(manifest: Manifest, target: Path, result: RestoreResult) -> None:
    from fleetcast.disk.filesystems import FsType
    from fleetcast.disk.grow import grow_last_partition

    last = _last_partition_area(manifest)
    if last is None:
        result.notes.append("--grow: the image has no partitions; nothing was grown")
        return
    fstype = FsType(last.fstype)
    if fstype not in (FsType.EXT, FsType.NTFS):
        result.notes.append(f"--grow: {last.label} holds {fstype}; it grows, its filesystem is left as is")
    try:
        result.table = grow_last_partition(target, manifest.table, fstype)
    except DiskError as exc:
        raise RestoreError(
            f"image {manifest.name!r} was written to {target} but growing failed: {exc.message}"
        ) from exc
    result.grown = True
