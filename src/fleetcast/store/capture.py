"""Capture: a disk (block device or raw image file) into the store, reading only the used blocks.

The source is opened read-only once and read at byte offsets (no partition devices, no mounts). Each area
(partition, bare-filesystem disk, gap outside partitions) has its used extents from the filesystem's own
allocation map (``disk.filesystems``); they are cut at fixed windows of ``CHUNK_SIZE`` bytes of area offset,
all-zero ``ZERO_BLOCK`` blocks are elided, and what is left of a window is one chunk: hashed (blake3) on
the reading thread, and -- only when the store does not have it yet -- compressed and written by a pool of
worker threads while the next windows are read.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from fleetcast import __version__
from fleetcast.errors import CaptureError, FleetcastError, UsageError
from fleetcast.progress import ProgressFn
from fleetcast.store.chunkstore import DEFAULT_LEVEL, MAX_OBJECT_BYTES, chunk_hash, compress
from fleetcast.store.images import CaptureTransaction, ImageStore, check_name
from fleetcast.store.manifest import Area, ChunkRef, Extent, Manifest

logger = logging.getLogger(__name__)

CHUNK_SIZE = 64 << 10  # dedupe granularity: fixed windows of partition offset
PACK_SIZE = 16 << 20  # new chunks are compressed and stored together in packs of about this size
ZERO_BLOCK = 4096
HEAD_BYTES = 1 << 20  # the start of the disk (MBR, GPT, BIOS boot code) is always captured in full
EXTENDED_TYPES = ("5", "f", "85")  # MBR extended partitions: containers, their EBRs are captured as gaps
_ZEROS = bytes(1 << 20)


@dataclass
class CaptureStats:
    """What a capture added to the store (filled in when passed to ``capture``)."""

    new_chunks: int = 0
    new_bytes: int = 0
    chunks: int = 0
    read_bytes: int = 0


@dataclass
class _Plan:
    kind: str
    number: int | None
    start: int
    size: int
    fstype: str
    used: list[Extent]
    keep_zeros: bool  # record used-but-zero ranges (restore zeroes them on a disk that held old data)
    os_hint: str | None = None


def capture(
    source: Path,
    name: str,
    store: ImageStore,
    *,
    force_raw: bool = False,
    progress: ProgressFn | None = None,
    chunk_size: int = CHUNK_SIZE,
    level: int = DEFAULT_LEVEL,
    workers: int = 2,
    stats: CaptureStats | None = None,
    pack_size: int = PACK_SIZE,
) -> Manifest:
    """Capture ``source`` as image ``name``; the image is visible only once complete and durable."""
    from fleetcast.disk.device import inspect
    from fleetcast.disk.partitions import read_table

    check_name(name)
    if pack_size + chunk_size > MAX_OBJECT_BYTES:
        raise UsageError(
            f"pack size {pack_size} with chunk size {chunk_size} would make packs larger than the "
            f"{MAX_OBJECT_BYTES} bytes a restore accepts"
        )
    source = Path(source)
    info = inspect(source)
    if info.size < 4 * info.logical_sector_size:
        raise CaptureError(
            f"source {source} is not a disk: it is {info.size} bytes, "
            "too small for a partition table or filesystem"
        )
    if store.exists(name):
        raise CaptureError(
            f"image {name!r} already exists in the store {store.root}",
            hint=f"pick another name, or remove it first: fleetcast image rm {name}",
        )
    if info.is_block:
        check_not_mounted_rw(source)
    table = read_table(source)
    try:
        f: BinaryIO = open(source, "rb", buffering=0)  # noqa: SIM115 -- closed below
    except OSError as exc:
        raise CaptureError(f"cannot open source {source} for reading: {exc.strerror}") from exc
    try:
        plans = _plan(f, source, table, info.size, force_raw=force_raw)
        for plan in plans:
            if plan.kind != "gap":
                plan.os_hint = _probe_os(source, plan)
        with store.begin_capture(name) as txn:
            areas = _capture_areas(
                f,
                plans,
                txn,
                chunk_size=chunk_size,
                level=level,
                workers=workers,
                progress=progress,
                source=source,
                pack_size=pack_size,
            )
            hints = [a.os_hint for a in areas if a.os_hint]
            manifest = Manifest(
                name=name,
                created=datetime.now(UTC).isoformat(timespec="seconds"),
                tool_version=__version__,
                disk_size=info.size,
                logical_sector_size=info.logical_sector_size,
                physical_sector_size=info.physical_sector_size,
                table_dict=table.to_dict(),
                chunk_size=chunk_size,
                zero_block=ZERO_BLOCK,
                pack_size=pack_size,
                os_hint="windows" if "windows" in hints else (hints[0] if hints else None),
                areas=tuple(areas),
            )
            Manifest.from_json(manifest.to_json())  # never publish what we could not read back
            txn.commit(manifest)
    finally:
        f.close()
    if stats is not None:
        stats.new_chunks = len(txn.new_chunks)
        stats.new_bytes = sum(txn.new_chunks.values())
        stats.chunks = manifest.entry_count
        stats.read_bytes = manifest.used_bytes
    logger.info(
        "captured %s from %s: %d bytes used, %d stored in %d new chunks",
        name,
        source,
        manifest.used_bytes,
        sum(txn.new_chunks.values()),
        len(txn.new_chunks),
    )
    return manifest


def _block_devices(source: Path) -> dict[str, Path]:
    """'major:minor' -> device node for a block device and its partitions (from sysfs)."""
    out: dict[str, Path] = {}
    real = source.resolve()
    sysdir = Path("/sys/class/block") / real.name
    try:
        out[(sysdir / "dev").read_text().strip()] = real
        for child in sysdir.iterdir():
            if (child / "partition").exists():
                out[(child / "dev").read_text().strip()] = real.parent / child.name
    except OSError:
        pass
    return out


def check_not_mounted_rw(source: Path, mountinfo: Path = Path("/proc/self/mountinfo")) -> None:
    """Refuse a block device when it or one of its partitions is mounted read-write: its filesystem would
    change under the capture. Read-only mounts are fine."""
    devices = _block_devices(source)
    nodes = {str(p): p for p in devices.values()}
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return
    for line in lines:
        fields = line.split()
        if len(fields) < 10 or "-" not in fields:
            continue
        sep = fields.index("-")
        mount_point, options, majmin = fields[4], fields[5].split(","), fields[2]
        mount_source = fields[sep + 2] if len(fields) > sep + 2 else ""
        dev = devices.get(majmin) or nodes.get(mount_source)
        if dev is not None and "rw" in options:
            raise CaptureError(
                f"source {source} is in use: {dev} is mounted read-write on {mount_point}",
                hint=f"unmount it (or remount it read-only) before capturing: umount {mount_point}",
            )


def _plan(f: BinaryIO, source: Path, table: object, disk_size: int, *, force_raw: bool) -> list[_Plan]:
    from fleetcast.disk.filesystems import FsType, check_capturable, detect, used_extents
    from fleetcast.disk.partitions import PartitionTable

    assert isinstance(table, PartitionTable)
    ss = table.sector_size

    def fs_plan(kind: str, number: int | None, start: int, size: int, what: str) -> _Plan:
        fstype = detect(f, start, size)
        if force_raw or fstype in (FsType.RAW, FsType.SWAP, FsType.BITLOCKER):
            if fstype == FsType.BITLOCKER and not force_raw:
                check_capturable(fstype, f, start, size, what)
            used = [(0, size)]
        else:
            check_capturable(fstype, f, start, size, what)
            used = used_extents(fstype, f, start, size)
        return _Plan(kind, number, start, size, str(fstype), used, keep_zeros=True)

    if table.label == "none":
        return [fs_plan("disk", None, 0, disk_size, f"disk {source}")]
    plans: list[_Plan] = []
    parts = sorted((p for p in table.partitions if p.type not in EXTENDED_TYPES), key=lambda p: p.start)
    pos = 0
    for p in parts:
        start, size = p.start * ss, p.size * ss
        if start + size > disk_size:
            raise CaptureError(
                f"partition {p.number} of {source} ends at byte {start + size}, "
                f"beyond the disk ({disk_size} bytes)"
            )
        if start < pos:
            raise CaptureError(f"partition {p.number} of {source} overlaps the previous partition")
        if start > pos:
            plans.append(_gap(pos, start - pos))
        plans.append(fs_plan("partition", p.number, start, size, f"partition {p.number} of {source}"))
        pos = start + size
    if pos < disk_size:
        plans.append(_gap(pos, disk_size - pos))
    return plans


def _gap(start: int, size: int) -> _Plan:
    # the head of the disk is kept exactly (zeros included); other gaps only for the data they hold
    head = start < HEAD_BYTES
    return _Plan("gap", None, start, size, "raw", [(0, size)], keep_zeros=head)


def _probe_os(source: Path, plan: _Plan) -> str | None:
    """Best effort: 'windows' for NTFS with Windows/System32/config, 'linux' for ext with /etc/os-release."""
    from fleetcast.run import run

    try:
        if plan.fstype == "ext":
            proc = run(
                ["debugfs", "-R", "stat /etc/os-release", f"{source}?offset={plan.start}"],
                check=False,
                timeout=30,
            )
            out = (proc.stdout or b"") + (proc.stderr or b"")
            return "linux" if proc.returncode == 0 and b"Inode:" in out else None
        if plan.fstype == "ntfs":
            from fleetcast.disk.loop import attach

            with attach(source, read_only=True, offset=plan.start, sizelimit=plan.size) as dev:
                proc = run(
                    ["ntfsls", "-f", "-p", "/Windows/System32/config", os.fspath(dev)],
                    check=False,
                    timeout=60,
                )
            return "windows" if proc.returncode == 0 and proc.stdout else None
    except (FleetcastError, OSError) as exc:
        logger.debug("os probe of %s at %d failed: %s", source, plan.start, exc)
    return None


def _windows(used: list[Extent], size: int, chunk_size: int) -> Iterator[tuple[int, list[Extent]]]:
    """(window offset, extents clipped to the window) for every window that has used bytes."""
    i = 0
    n = len(used)
    while i < n:
        off, length = used[i]
        window = off - off % chunk_size
        wend = min(window + chunk_size, size)
        pieces: list[Extent] = []
        while i < n:
            off, length = used[i]
            if off >= wend:
                break
            end = min(off + length, wend)
            pieces.append((off, end - off))
            if off + length > wend:
                used[i] = (wend, off + length - wend)  # the rest goes to the next window
                break
            i += 1
        yield window, pieces


def split_zeros(
    data: bytes, base: int, pieces: list[Extent], zero_block: int
) -> tuple[list[Extent], list[Extent]]:
    """Split extents (absolute area offsets; ``data`` holds bytes from ``base``) into non-zero and zero runs.

    Zero detection works on ``zero_block``-aligned blocks of area offset, clipped to each extent.
    """
    nonzero: list[Extent] = []
    zeros: list[Extent] = []

    def add(runs: list[Extent], off: int, length: int) -> None:
        if runs and runs[-1][0] + runs[-1][1] == off:
            runs[-1] = (runs[-1][0], runs[-1][1] + length)
        else:
            runs.append((off, length))

    zb = _ZEROS[:zero_block]
    for off, length in pieces:
        rel = off - base
        if data.find(zb, rel, rel + length) < 0 and length >= zero_block:
            add(nonzero, off, length)  # fast path: no zero block can be inside
            continue
        pos = off
        end = off + length
        while pos < end:
            bend = min(pos - pos % zero_block + zero_block, end)
            seg = data[pos - base : bend - base]
            add(zeros if seg == _ZEROS[: bend - pos] else nonzero, pos, bend - pos)
            pos = bend
    return nonzero, zeros


def _merge_add(runs: list[Extent], new: list[Extent]) -> None:
    for off, length in new:
        if runs and runs[-1][0] + runs[-1][1] == off:
            runs[-1] = (runs[-1][0], runs[-1][1] + length)
        else:
            runs.append((off, length))


class _Packer:
    """Collects new chunks into packs of about ``pack_size`` bytes; each sealed pack is hashed here and
    compressed + written by the worker pool while reading goes on."""

    def __init__(
        self, txn: CaptureTransaction, pool: ThreadPoolExecutor, *, level: int, pack_size: int, workers: int
    ) -> None:
        self.txn = txn
        self.pool = pool
        self.level = level
        self.pack_size = pack_size
        self.max_inflight = workers + 1
        self.buf: list[bytes] = []
        self.size = 0
        self.seq = 0
        self.ids: dict[int, str] = {}  # pack sequence number -> pack id
        self.slices: dict[str, tuple[int, int]] = {}  # chunk hash -> (pack sequence, offset)
        self.submitted: set[str] = set()
        self.inflight: deque[Future[None]] = deque()

    def add(self, chunk_hash_: str, data: bytes) -> tuple[int, int]:
        ref = (self.seq, self.size)
        self.slices[chunk_hash_] = ref
        self.buf.append(data)
        self.size += len(data)
        if self.size >= self.pack_size:
            self.seal()
        return ref

    def seal(self) -> None:
        if not self.buf:
            return
        data = b"".join(self.buf)
        pid = chunk_hash(data)
        self.ids[self.seq] = pid
        self.buf, self.size, self.seq = [], 0, self.seq + 1
        if pid in self.submitted or self.txn.known(pid):
            return
        self.submitted.add(pid)
        self.inflight.append(self.pool.submit(self._store, pid, data))
        while len(self.inflight) > self.max_inflight:
            self.inflight.popleft().result()

    def _store(self, pid: str, data: bytes) -> None:
        self.txn.add_chunk(pid, compress(data, self.level))

    def finish(self) -> None:
        self.seal()
        while self.inflight:
            self.inflight.popleft().result()


def existing_slices(store: ImageStore) -> dict[str, tuple[str, int]]:
    """Chunk hash -> (pack id, offset) over every image in the store: what a new capture can reuse."""
    index: dict[str, tuple[str, int]] = {}
    for manifest in store.list():
        for _, c in manifest.entries():
            index.setdefault(c.hash, (c.id, c.offset))
    return index


# (chunk hash, window, extents, pack: an existing pack id, or the sequence number of a new pack, offset)
_Ref = tuple[str, int, list[Extent], str | int, int]


def _capture_areas(
    f: BinaryIO,
    plans: list[_Plan],
    txn: CaptureTransaction,
    *,
    chunk_size: int,
    level: int,
    workers: int,
    progress: ProgressFn | None,
    source: Path,
    pack_size: int,
) -> list[Area]:
    fd = f.fileno()
    total = sum(sum(n for _, n in p.used) for p in plans)
    done = 0
    if progress:
        progress(0, total)
    index = existing_slices(txn.store)
    present: dict[str, bool] = {}

    def reusable(h: str) -> tuple[str, int] | None:
        hit = index.get(h)
        if hit is None:
            return None
        if hit[0] not in present:
            present[hit[0]] = txn.store.chunks.has(hit[0])
        return hit if present[hit[0]] else None

    raw_areas: list[tuple[_Plan, list[_Ref], list[Extent]]] = []
    with ThreadPoolExecutor(workers, thread_name_prefix="capture") as pool:
        packer = _Packer(txn, pool, level=level, pack_size=pack_size, workers=workers)
        for plan in plans:
            refs: list[_Ref] = []
            zeros: list[Extent] = []
            for window, pieces in _windows(list(plan.used), plan.size, chunk_size):
                span_start = pieces[0][0]
                span_len = pieces[-1][0] + pieces[-1][1] - span_start
                try:
                    data = os.pread(fd, span_len, plan.start + span_start)
                except OSError as exc:
                    raise CaptureError(
                        f"cannot read {source} at byte {plan.start + span_start}: {exc.strerror}"
                    ) from exc
                if len(data) != span_len:
                    raise CaptureError(
                        f"short read from {source} at byte {plan.start + span_start}: "
                        f"expected {span_len} bytes, got {len(data)}"
                    )
                nonzero, zero_runs = split_zeros(data, span_start, pieces, ZERO_BLOCK)
                if plan.keep_zeros:
                    _merge_add(zeros, zero_runs)
                done += sum(n for _, n in pieces)
                if nonzero:
                    if len(nonzero) == 1 and nonzero[0][1] == span_len:
                        chunk = data
                    else:
                        chunk = b"".join(data[o - span_start : o - span_start + n] for o, n in nonzero)
                    h = chunk_hash(chunk)
                    old = reusable(h)
                    if old is not None:
                        refs.append((h, window, nonzero, old[0], old[1]))
                    else:
                        seq, off = packer.slices.get(h) or packer.add(h, chunk)
                        refs.append((h, window, nonzero, seq, off))
                if progress:
                    progress(done, total)
            raw_areas.append((plan, refs, zeros))
        packer.finish()
    areas: list[Area] = []
    for plan, refs, zeros in raw_areas:
        chunks: list[ChunkRef] = []
        for h, w, ext, where, off in refs:
            pid = where if isinstance(where, str) else packer.ids[where]
            chunks.append(ChunkRef(pid, h, off, w, tuple(ext), txn.stored_size(pid)))
        used = sum(n for _, n in plan.used)
        areas.append(
            Area(
                plan.kind,
                plan.number,
                plan.start,
                plan.size,
                plan.fstype,
                plan.os_hint,
                used,
                tuple(chunks),
                tuple(zeros),
            )
        )
    return areas
