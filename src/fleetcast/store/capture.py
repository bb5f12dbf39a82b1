"""Capture: a disk (block device or raw image file) into the store, reading only the used blocks.

The source is opened read-only once and read at byte offsets (no partition devices, no mounts). Each area
(partition, bare-filesystem disk, gap outside partitions) has its used extents from the filesystem's own
allocation map (``disk.filesystems``); they are cut at fixed windows of ``CHUNK_SIZE`` bytes of area offset,
all-zero ``ZERO_BLOCK`` blocks are elided, and what is left of a window is one chunk: hashed (blake3) in
the read threads (``reader.read_windows``: two, each with its own reads; used in window order), and --
only when the store does not have it yet -- compressed and written by a pool of worker threads while the
next windows are read.
"""

from __future__ import annotations

import logging
import tempfile
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import blake3

from fleetcast import __version__
from fleetcast.errors import CaptureError, UsageError
from fleetcast.progress import ProgressFn
from fleetcast.store.chunkstore import DEFAULT_LEVEL, MAX_OBJECT_BYTES, chunk_hash, compress
from fleetcast.store.ext_unchanged import Reused
from fleetcast.store.images import ImageStore, check_name
from fleetcast.store.index import Entry, IndexWriter
from fleetcast.store.manifest import INDEX_FILE, VERSION_2, Area, Extent, Manifest, PackRef, load_image
from fleetcast.store.previous import PreviousSource, reuse_plan
from fleetcast.store.reader import Readers, read_windows, split_zeros, windows
from fleetcast.store.sink_local import StoreSink
from fleetcast.store.source import CaptureSink, KnownChunk

logger = logging.getLogger(__name__)

CHUNK_SIZE = 64 << 10  # dedupe granularity: fixed windows of partition offset
PACK_SIZE = 16 << 20  # new chunks are compressed and stored together in packs of about this size
ZERO_BLOCK = 4096
HEAD_BYTES = 1 << 20  # the start of the disk (MBR, GPT, BIOS boot code) is always captured in full
EXTENDED_TYPES = ("5", "f", "85")  # MBR extended partitions: containers, their EBRs are captured as gaps


@dataclass
class CaptureStats:
    """What a capture added to the store (filled in when passed to ``capture``)."""

    new_chunks: int = 0
    new_bytes: int = 0
    chunks: int = 0
    read_bytes: int = 0
    unread_bytes: int = 0  # used bytes not read: provably unchanged since the previous image


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
    store: ImageStore | None,
    *,
    force_raw: bool = False,
    progress: ProgressFn | None = None,
    chunk_size: int = CHUNK_SIZE,
    level: int = DEFAULT_LEVEL,
    workers: int = 2,
    stats: CaptureStats | None = None,
    pack_size: int = PACK_SIZE,
    sink: CaptureSink | None = None,
    os_info: Mapping[int, dict[str, Any]] | Callable[[], Mapping[int, dict[str, Any]]] | None = None,
    previous: PreviousSource | None = None,
) -> Manifest:
    """Capture ``source`` as image ``name`` (format 2) through ``sink`` (default: the local store's;
    ``store`` may be None when a sink is given, e.g. an agent capturing to a server); the image is
    visible only once complete and durable. ``os_info``: partition number -> what an OS inspection
    found on it (recorded in that area's ``os_info``), or a function giving it, called once the disk is
    read (probes run meanwhile: ``identity.osinfo.start``). ``previous``: the image this one is likely
    much like (a re-capture): windows of ext areas whose data provably did not change since it are not
    read, their chunks are the previous ones (``store.ext_unchanged``; docs/image-format.md)."""
    from fleetcast.disk.device import inspect
    from fleetcast.disk.filesystems import probe_os
    from fleetcast.disk.partitions import read_table

    check_name(name)
    if pack_size + chunk_size > MAX_OBJECT_BYTES:
        raise UsageError(
            f"pack size {pack_size} with chunk size {chunk_size} would make packs larger than the "
            f"{MAX_OBJECT_BYTES} bytes a restore accepts"
        )
    source = Path(source)
    info_disk = inspect(source)
    if info_disk.size < 4 * info_disk.logical_sector_size:
        raise CaptureError(
            f"source {source} is not a disk: it is {info_disk.size} bytes, "
            "too small for a partition table or filesystem"
        )
    if sink is None and store is None:
        raise UsageError("capture needs a store or a sink to write to")
    if store is not None and sink is None and store.exists(name):
        raise CaptureError(
            f"image {name!r} already exists in the store {store.root}",
            hint=f"pick another name, or remove it first: fleetcast image rm {name}",
        )
    if info_disk.is_block:
        check_not_mounted_rw(source)
    table = read_table(source)
    try:
        f: BinaryIO = open(source, "rb", buffering=0)  # noqa: SIM115 -- closed below
    except OSError as exc:
        raise CaptureError(f"cannot open source {source} for reading: {exc.strerror}") from exc
    try:
        plans = _plan(f, source, table, info_disk.size, force_raw=force_raw)
        for plan in plans:
            if plan.kind != "gap":
                plan.os_hint = probe_os(plan.fstype, source, f, plan.start, plan.size)
        reuse: dict[int, Mapping[int, Reused]] = {}
        if previous is not None:
            areas_now = [(p.kind, p.number, p.start, p.size, p.fstype, p.used) for p in plans]
            reuse = reuse_plan(f, areas_now, previous, chunk_size=chunk_size, zero_block=ZERO_BLOCK)
        with (
            sink or StoreSink(_need(store), name) as out,
            tempfile.TemporaryDirectory(prefix="fleetcast-capture-") as tmp,
        ):
            index_path = Path(tmp) / INDEX_FILE
            packs = _Packs()
            with open(index_path, "wb") as index_file:
                index = IndexWriter(index_file)
                areas, packer = _capture_areas(
                    f,
                    plans,
                    out,
                    index,
                    packs,
                    chunk_size=chunk_size,
                    level=level,
                    workers=workers,
                    progress=progress,
                    source=source,
                    pack_size=pack_size,
                    reuse=reuse,
                )
                info = index.close()
            if callable(os_info):
                os_info = os_info()
            if os_info:
                areas = [
                    replace(a, os_info=os_info.get(a.number or 0)) if a.kind == "partition" else a
                    for a in areas
                ]
            hints = [a.os_hint for a in areas if a.os_hint]
            manifest = Manifest(
                name=name,
                created=datetime.now(UTC).isoformat(timespec="seconds"),
                tool_version=__version__,
                disk_size=info_disk.size,
                logical_sector_size=info_disk.logical_sector_size,
                physical_sector_size=info_disk.physical_sector_size,
                table_dict=table.to_dict(),
                chunk_size=chunk_size,
                zero_block=ZERO_BLOCK,
                pack_size=pack_size,
                os_hint="windows" if "windows" in hints else (hints[0] if hints else None),
                areas=tuple(areas),
                version=VERSION_2,
                packs=packs.done(),
                index_info=info,
            )
            data = manifest.to_json()
            manifest = load_image(data, index_path)  # never publish what we could not read back
            out.publish(data, index_path)
    finally:
        f.close()
    if stats is not None:
        stats.new_chunks = packer.new_packs
        stats.new_bytes = packer.new_bytes
        stats.chunks = manifest.entry_count
        stats.read_bytes = manifest.used_bytes
        stats.unread_bytes = sum(
            (e.length if e is not None else 0) + _length(z) for r in reuse.values() for e, z in r.values()
        )
    logger.info(
        "captured %s from %s: %d bytes used, %d stored in %d new packs",
        name,
        source,
        manifest.used_bytes,
        packer.new_bytes,
        packer.new_packs,
    )
    return manifest


def _need(store: ImageStore | None) -> ImageStore:
    assert store is not None
    return store


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


def _merge_add(runs: list[Extent], new: list[Extent]) -> None:
    for off, length in new:
        if runs and runs[-1][0] + runs[-1][1] == off:
            runs[-1] = (runs[-1][0], runs[-1][1] + length)
        else:
            runs.append((off, length))


class _Packs:
    """The image's pack list in first-use order: a pack number is given when a pack is first used (an
    existing pack when a chunk of it is referenced, a new pack when its first chunk is added), so index
    entries can be written at once; a new pack's id, stored size and hash are filled in when stored."""

    def __init__(self) -> None:
        self.refs: list[PackRef | None] = []
        self.existing: dict[str, int] = {}  # pack id -> number

    def of_existing(self, known: KnownChunk) -> int:
        n = self.existing.get(known.pack)
        if n is None:
            n = self.existing[known.pack] = len(self.refs)
            self.refs.append(PackRef(known.pack, known.stored, known.stored_hash))
        return n

    def new(self) -> int:
        self.refs.append(None)
        return len(self.refs) - 1

    def done(self) -> tuple[PackRef, ...]:
        out = tuple(r for r in self.refs if r is not None)
        if len(out) != len(self.refs) or len({r.id for r in out}) != len(out):
            raise CaptureError("capture made a pack list with a missing or repeated pack (a bug)")
        return out


class _Packer:
    """Collects new chunks into packs of about ``pack_size`` bytes; each sealed pack is hashed here and
    compressed + put into the sink by the worker pool while reading goes on."""

    def __init__(
        self,
        sink: CaptureSink,
        pool: ThreadPoolExecutor,
        packs: _Packs,
        *,
        level: int,
        pack_size: int,
        workers: int,
    ) -> None:
        self.sink = sink
        self.pool = pool
        self.packs = packs
        self.level = level
        self.pack_size = pack_size
        self.max_inflight = workers + 1
        self.buf: list[bytes | memoryview] = []
        self.size = 0
        self.number: int | None = None  # pack number of the pack being filled
        self.slices: dict[bytes, tuple[int, int]] = {}  # chunk hash -> (pack number, offset)
        self.inflight: deque[Future[None]] = deque()
        self.new_packs = 0
        self.new_bytes = 0

    def add(self, digest: bytes, data: bytes | memoryview) -> tuple[int, int]:
        if self.number is None:
            self.number = self.packs.new()
        ref = (self.number, self.size)
        self.slices[digest] = ref
        self.buf.append(data)
        self.size += len(data)
        if self.size >= self.pack_size:
            self.seal()
        return ref

    def seal(self) -> None:
        if not self.buf or self.number is None:
            return
        data = b"".join(self.buf)
        number = self.number
        self.buf, self.size, self.number = [], 0, None
        self.inflight.append(self.pool.submit(self._store, number, data))
        while len(self.inflight) > self.max_inflight:
            self.inflight.popleft().result()

    def _store(self, number: int, data: bytes) -> None:
        pid = chunk_hash(data)
        stored = compress(data, self.level)
        self.sink.put_pack(pid, stored)
        self.packs.refs[number] = PackRef(pid, len(stored), blake3.blake3(stored).hexdigest())
        self.new_packs += 1
        self.new_bytes += len(stored)

    def finish(self) -> None:
        self.seal()
        while self.inflight:
            self.inflight.popleft().result()


HAVE_BATCH = 256  # windows whose hashes one sink.have() call answers (their data is held meanwhile)


@dataclass
class _Window:
    window: int
    extents: list[Extent]
    digest: bytes
    data: bytes | memoryview | None  # (a view into its read's buffer when it is one run; None: not read)


HAVE_AHEAD = 2  # batches whose have() answers are awaited while the next ones are read and hashed


class _HaveAhead:
    """``sink.have`` of each batch in a thread of its own while the next batches are read and hashed (over
    the network one round trip per batch held the reading up: 9.7 s of a 49 s capture); the answers are
    used in the batches' order, so the index entries and the packs are exactly those of one call at a
    time. ``sink.have_threads`` calls run at once (``CaptureSink``: the network sink's requests go in
    parallel, so a slow round trip does not bound the reading; the local store answers one at a time)."""

    def __init__(self, sink: CaptureSink, packs: _Packs, packer: _Packer, index: IndexWriter) -> None:
        self.sink = sink
        self.packs = packs
        self.packer = packer
        self.index = index
        threads = max(1, sink.have_threads)
        self.ahead = max(HAVE_AHEAD, threads)
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="capture-have")
        self.pending: deque[tuple[Future[dict[bytes, KnownChunk]], list[_Window], int]] = deque()
        self.entries: dict[int, int] = {}  # area number -> index entries written

    def submit(self, batch: list[_Window], area_no: int) -> None:
        if batch:
            fut = self.pool.submit(self.sink.have, [w.digest for w in batch])
            self.pending.append((fut, list(batch), area_no))
            batch.clear()
        while len(self.pending) > self.ahead:
            self._use_oldest()

    def drain(self) -> None:
        while self.pending:
            self._use_oldest()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def _use_oldest(self) -> None:
        """The oldest batch's answer, then an index entry per window (new chunks packed)."""
        fut, batch, area_no = self.pending.popleft()
        known = fut.result()
        packs, packer = self.packs, self.packer
        for w in batch:
            hit = known.get(w.digest)
            if hit is not None:
                where = (packs.of_existing(hit), hit.offset)
            elif w.digest in packer.slices:
                where = packer.slices[w.digest]
            elif w.data is None:  # a window not read: its previous chunk must be there
                raise CaptureError(
                    f"chunk {w.digest.hex()[:16]} of the previous image (window {w.window} of area "
                    f"{area_no}) is no longer in the store",
                    hint="capture again (the previous image changed meanwhile)",
                )
            else:
                where = packer.add(w.digest, w.data)
            self.index.add(Entry(area_no, where[0], where[1], w.window, w.digest, tuple(w.extents)))
        self.entries[area_no] = self.entries.get(area_no, 0) + len(batch)


def _capture_areas(
    f: BinaryIO,
    plans: list[_Plan],
    sink: CaptureSink,
    index: IndexWriter,
    packs: _Packs,
    *,
    chunk_size: int,
    level: int,
    workers: int,
    progress: ProgressFn | None,
    source: Path,
    pack_size: int,
    reuse: Mapping[int, Mapping[int, Reused]],
) -> tuple[list[Area], _Packer]:
    reader = Readers(f.fileno(), source, block=source.is_block_device())
    with ThreadPoolExecutor(workers, thread_name_prefix="capture") as pool:
        packer = _Packer(sink, pool, packs, level=level, pack_size=pack_size, workers=workers)
        ahead = _HaveAhead(sink, packs, packer, index)
        try:
            areas = _read_areas(
                reader, plans, ahead, chunk_size=chunk_size, progress=progress, source=source, reuse=reuse
            )
        finally:
            ahead.close()
            reader.close()
        packer.finish()
    return areas, packer


@dataclass
class _Span:
    start: int
    size: int
    used: list[Extent]


def _without(plan: _Plan, reused: Mapping[int, Reused], chunk_size: int) -> _Span:
    """The area with the used extents of the windows in ``reused`` left out (what is still read)."""
    keep = [
        p for w, pieces in windows(list(plan.used), plan.size, chunk_size) if w not in reused for p in pieces
    ]
    return _Span(plan.start, plan.size, keep)


@dataclass
class _Prepared:
    """A window's bytes made ready in a read thread: its non-zero and zero runs, and (when any byte is
    not zero) the chunk and its digest."""

    nonzero: list[Extent]
    zeros: list[Extent]
    chunk: bytes | memoryview | None  # None: a window not read (its previous chunk is reused)
    digest: bytes


def _length(runs: list[Extent]) -> int:
    return sum(n for _, n in runs)


def _in_order(
    read: Iterator[tuple[int, list[Extent], _Prepared]], reused: Mapping[int, Reused]
) -> Iterator[tuple[int, list[Extent], _Prepared]]:
    """The windows read, with the windows not read (``reused``: the previous chunk and zero runs) put in
    among them in window order, as if read (``chunk`` None: the data was not read)."""
    order = sorted(reused)
    at = 0
    for window, pieces, ready in read:
        while at < len(order) and order[at] < window:
            yield _as_read(order[at], reused[order[at]])
            at += 1
        yield window, pieces, ready
    for w in order[at:]:
        yield _as_read(w, reused[w])


def _as_read(window: int, reuse: Reused) -> tuple[int, list[Extent], _Prepared]:
    entry, zero_runs = reuse
    nonzero = list(entry.extents) if entry is not None else []
    pieces = sorted(nonzero + zero_runs)
    return window, pieces, _Prepared(nonzero, zero_runs, None, entry.hash if entry is not None else b"")


def _prepare(window: int, pieces: list[Extent], buf: bytes, base: int) -> _Prepared:
    """``buf`` holds the area's bytes from offset ``base`` (the window's whole read): a chunk of one run
    is a view into it, not a copy."""
    nonzero, zero_runs = split_zeros(buf, base, pieces, ZERO_BLOCK)
    if not nonzero:
        return _Prepared(nonzero, zero_runs, b"", b"")
    view = memoryview(buf)
    if len(nonzero) == 1:
        off, length = nonzero[0]
        chunk: bytes | memoryview = view[off - base : off - base + length]
    else:
        chunk = b"".join(view[o - base : o - base + n] for o, n in nonzero)
    return _Prepared(nonzero, zero_runs, chunk, blake3.blake3(chunk).digest())


def _read_areas(
    reader: Readers,
    plans: list[_Plan],
    ahead: _HaveAhead,
    *,
    chunk_size: int,
    progress: ProgressFn | None,
    source: Path,
    reuse: Mapping[int, Mapping[int, Reused]],
) -> list[Area]:
    total = sum(sum(n for _, n in p.used) for p in plans)
    done = 0
    if progress:
        progress(0, total)
    areas: list[Area] = []
    for area_no, plan in enumerate(plans):
        zeros: list[Extent] = []
        data_bytes = skipped = 0
        batch: list[_Window] = []
        reused = reuse.get(area_no, {})
        span = _without(plan, reused, chunk_size) if reused else plan
        read = read_windows(reader, span, chunk_size, source, _prepare)
        for window, pieces, ready in _in_order(read, reused):
            if plan.keep_zeros:
                _merge_add(zeros, ready.zeros)
            else:
                skipped += sum(n for _, n in ready.zeros)
            done += sum(n for _, n in pieces)
            if ready.nonzero:
                data_bytes += len(ready.chunk) if ready.chunk is not None else _length(ready.nonzero)
                batch.append(_Window(window, ready.nonzero, ready.digest, ready.chunk))
                if len(batch) >= HAVE_BATCH:
                    ahead.submit(batch, area_no)
            if progress:
                progress(done, total)
        ahead.submit(batch, area_no)
        ahead.drain()
        entries = ahead.entries.get(area_no, 0)
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
                (),
                tuple(zeros),
                data=data_bytes,
                skipped=skipped,
                entries=entries,
            )
        )
    return areas
