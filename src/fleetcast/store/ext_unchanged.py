"""Which windows of an ext4 area a re-capture need not read: the data of files provably unchanged since the
previous image (issue 11, docs/image-format.md "Re-capture: windows not read").

The filesystem's metadata is always read: superblock, group descriptors, inode bitmaps, inode tables and
extent trees of the disk as it is now. The previous image's inode tables come from its chunks (``fetch``,
each chunk checked against its blake3 digest). A regular file is *trusted* when its inode record is byte for
byte the previous image's, except the access time and the checksum (so its size, ctime/mtime to the
nanosecond, flags, extent root and in-inode attributes are the same), and it is an ordinary file: inode
number at least ``s_first_ino`` and none the superblock names (journal, quota, orphan file), extents (no
inline data, no EA inode, no DAX), at least ``MIN_FILE`` bytes (boot loaders write small files such as GRUB's
1 KiB ``grubenv`` in place, without the filesystem), and its first page is not a swap or hibernation header
(the kernel writes swap files' blocks without touching their inode). A window is not read when every used
byte of it lies in data blocks of trusted files, and the previous image's window has exactly the same used
bytes (its chunk's extents plus its zero runs): the previous window's chunk (digest, extents) and zero runs
are then this window's.

What this trusts (and nothing else): that file data on an ext4 filesystem changes only through the kernel's
filesystem code, which updates the inode's ctime (mtime) on every write, and that the clock does not go back
to within a timestamp of an earlier state. Anything unusual is "in doubt" and the whole area is read: a
filesystem not cleanly unmounted (not VALID, ERROR set, journal needing recovery), the orphan-file feature,
bigalloc, block-mapped (non-extent) files or directories, blocks claimed twice, a trusted file's block in
metadata, or any parse problem.
"""

from __future__ import annotations

import bisect
import logging
import struct
from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Protocol

import blake3

from fleetcast.disk.filesystems.base import read_at
from fleetcast.disk.filesystems.ext import SB_OFFSET, Superblock, Unsupported, group_descriptors
from fleetcast.errors import FleetcastError
from fleetcast.store.index import Entry
from fleetcast.store.manifest import Extent
from fleetcast.store.reader import split_zeros, windows

logger = logging.getLogger(__name__)

MIN_FILE = 64 << 10  # smaller files are always read (boot loaders' in-place writes: grubenv is 1 KiB)
STATE_VALID, STATE_ERROR = 0x1, 0x2
INCOMPAT_RECOVER, INCOMPAT_JOURNAL_DEV = 0x4, 0x8
COMPAT_ORPHAN_FILE = 0x1000
BG_INODE_UNINIT = 0x1
S_IFMT, S_IFREG, S_IFDIR, S_IFLNK = 0xF000, 0x8000, 0x4000, 0xA000
EXTENTS_FL, INLINE_DATA_FL, EA_INODE_FL, DAX_FL = 0x80000, 0x10000000, 0x200000, 0x2000000
EXTENT_MAGIC = 0xF30A
SPECIAL_INODE_FIELDS = (0xE0, 0x240, 0x244, 0x26C, 0x280)  # journal, user/group/project quota, orphan file
SWAP_MARKS = (b"SWAPSPACE2", b"SWAP-SPACE", b"SUSPEND", b"HIBERN", b"LINHIB")
PAGE = 4096

# a window not read: the previous image's chunk for it (None: it was all zero) and its zero runs
Reused = tuple[Entry | None, list[Extent]]
Fetch = Callable[[Sequence[tuple[bytes, int]]], Mapping[bytes, bytes]]  # (digest, length) -> chunk bytes


class WindowEntries(Protocol):
    def get(self, window: int) -> Entry | None: ...


class AreaEntries:
    """One area's index entries, compact (no Python object per chunk: about 70 bytes each, in arrays), by
    window; an ``Entry`` is made on ``get``. ``add`` them in window order."""

    _REC = struct.Struct("<32sIQII")  # digest, pack number, offset, first extent, extent count

    def __init__(self, area: int) -> None:
        self.area = area
        self.windows = array("q")
        self.recs = bytearray()
        self.exts = array("q")
        self.ordered = True

    def add(self, e: Entry) -> None:
        if self.windows and e.window <= self.windows[-1]:
            self.ordered = False  # (not in window order: the caller does not use the area)
        self.windows.append(e.window)
        self.recs += self._REC.pack(e.hash, e.pack, e.offset, len(self.exts) // 2, len(e.extents))
        for off, n in e.extents:
            self.exts.append(off)
            self.exts.append(n)

    def get(self, window: int) -> Entry | None:
        i = bisect.bisect_left(self.windows, window)
        if i == len(self.windows) or self.windows[i] != window:
            return None
        digest, pack, offset, first, count = self._REC.unpack_from(self.recs, i * self._REC.size)
        ext = self.exts
        extents = tuple((ext[2 * k], ext[2 * k + 1]) for k in range(first, first + count))
        return Entry(self.area, pack, offset, window, digest, extents)


@dataclass(frozen=True)
class PreviousArea:
    """The previous image's version of the area: its chunk per window and its zero runs (sorted)."""

    entries: WindowEntries
    zeros: Sequence[Extent]


class ReusedWindows(Mapping[int, Reused]):
    """The windows not read (sorted, in an array: no object per window), each giving its previous chunk
    and zero runs when asked."""

    def __init__(self, windows: array[int], previous: PreviousArea, chunk_size: int) -> None:
        self.windows, self.previous, self.chunk_size = windows, previous, chunk_size

    def __getitem__(self, window: int) -> Reused:
        if window not in self:
            raise KeyError(window)
        return self.previous.entries.get(window), _clip(self.previous.zeros, window, self.chunk_size)

    def __contains__(self, window: object) -> bool:
        if not isinstance(window, int):
            return False
        i = bisect.bisect_left(self.windows, window)
        return i < len(self.windows) and self.windows[i] == window

    def __iter__(self) -> Iterator[int]:
        return iter(self.windows)

    def __len__(self) -> int:
        return len(self.windows)


class _Doubt(Exception):
    """Something this module does not prove safe: read the whole area."""


@dataclass(frozen=True)
class Area:
    """The ext area being captured: where it is on the source (``f``), its size and used extents."""

    f: BinaryIO
    start: int
    size: int
    used: list[Extent]


def reusable(
    area: Area, *, previous: PreviousArea, fetch: Fetch, chunk_size: int, zero_block: int
) -> Mapping[int, Reused]:
    """Window -> what it reuses, for the windows of the ext ``area`` that need not be read; {} when
    anything is in doubt."""
    try:
        return _reusable(area, previous, fetch, chunk_size=chunk_size, zero_block=zero_block)
    except (_Doubt, Unsupported, FleetcastError, struct.error, ValueError, IndexError) as exc:
        text = exc.message if isinstance(exc, FleetcastError) else str(exc)
        logger.info("ext area at byte %d: every used block is read (%s)", area.start, text)
        return {}


def _reusable(
    area: Area, previous: PreviousArea, fetch: Fetch, *, chunk_size: int, zero_block: int
) -> Mapping[int, Reused]:
    f, start, size, used = area.f, area.start, area.size, area.used
    limit = start + size
    raw_sb = read_at(f, start + SB_OFFSET, 1024, what="ext superblock", limit=limit)
    sb, isz, descs = group_descriptors(f, start, size)
    (state,) = struct.unpack_from("<H", raw_sb, 58)
    if not state & STATE_VALID or state & STATE_ERROR:
        raise _Doubt(f"filesystem state {state:#x}: not cleanly unmounted, or errors recorded")
    if sb.feature_incompat & (INCOMPAT_RECOVER | INCOMPAT_JOURNAL_DEV):
        raise _Doubt("the journal needs recovery, or is on another device")
    if sb.feature_compat & COMPAT_ORPHAN_FILE:
        raise _Doubt("orphan file feature")
    (rev,) = struct.unpack_from("<I", raw_sb, 76)
    first_ino = struct.unpack_from("<I", raw_sb, 84)[0] if rev else 11
    special = {struct.unpack_from("<I", raw_sb, at)[0] for at in SPECIAL_INODE_FIELDS}
    bs = sb.block_size
    itb = -(-sb.inodes_per_group * isz // bs)

    def read(pos: int, n: int, what: str) -> bytes:
        return read_at(f, start + pos, n, what=what, limit=limit)

    meta: list[tuple[int, int]] = [(0, -(-2048 // bs))]  # block ranges that are not file data
    claims: list[tuple[int, int, int]] = []  # (first block, count, inode) of every file's data
    trusted: dict[
        int, tuple[int, bytes, list[tuple[int, int, int]]]
    ] = {}  # inode -> (table pos, record, extents)
    for g, (bbm, ibm, table, flags) in enumerate(descs):
        meta.extend(((bbm, 1), (ibm, 1), (table, itb), *sb.super_and_gdt(g)))
        if flags & BG_INODE_UNINIT:
            continue
        bitmap = read(ibm * bs, bs, f"inode bitmap of group {g}")
        raw = read(table * bs, itb * bs, f"inode table of group {g}")
        for idx in range(sb.inodes_per_group):
            if not bitmap[idx >> 3] >> (idx & 7) & 1:
                continue
            ino = g * sb.inodes_per_group + idx + 1
            rec = raw[idx * isz : (idx + 1) * isz]
            (mode,) = struct.unpack_from("<H", rec, 0)
            (links,) = struct.unpack_from("<H", rec, 0x1A)
            (iflags,) = struct.unpack_from("<I", rec, 0x20)
            kind = mode & S_IFMT
            acl = struct.unpack_from("<I", rec, 0x68)[0] | struct.unpack_from("<H", rec, 0x76)[0] << 32
            if acl:
                meta.append((acl, 1))
            if kind not in (S_IFREG, S_IFDIR, S_IFLNK) or iflags & INLINE_DATA_FL:
                continue
            if not iflags & EXTENTS_FL:
                (blocks_lo,) = struct.unpack_from("<I", rec, 0x1C)
                if (kind == S_IFLNK and blocks_lo == 0) or ino == 7:  # fast symlink; resize inode (GDT)
                    continue
                raise _Doubt(f"inode {ino} is block-mapped (no extents)")
            extents, tree, depth = _extents(rec[0x28:0x64], read, bs, ino)
            meta.extend(tree)
            claims.extend((p, n, ino) for _, p, n in extents)
            size_bytes = struct.unpack_from("<I", rec, 4)[0] | struct.unpack_from("<I", rec, 0x6C)[0] << 32
            (dtime,) = struct.unpack_from("<I", rec, 0x14)
            if (
                kind == S_IFREG
                and ino >= first_ino
                and ino not in special
                and links > 0
                and dtime == 0
                and not iflags & (EA_INODE_FL | DAX_FL)
                and size_bytes >= MIN_FILE
                and depth == 0  # every extent in the record itself, which is compared whole
            ):
                trusted[ino] = ((table * bs) + idx * isz, rec, extents)
    if not trusted:
        return {}
    _compare_with_previous(
        trusted, used, size, previous=previous, fetch=fetch, read=read, chunk_size=chunk_size,
        zero_block=zero_block,
    )  # fmt: skip
    _drop_swap_files(trusted, read, bs)
    proven = _check_claims(trusted, claims, meta, sb)
    return _windows(used, size, proven, bs=bs, previous=previous, chunk_size=chunk_size)


def _extents(
    root: bytes, read: Callable[[int, int, str], bytes], bs: int, ino: int
) -> tuple[list[tuple[int, int, int]], list[tuple[int, int]], int]:
    """(logical block, physical block, count) of every extent of an inode's tree, the tree's own blocks,
    and its depth (0: every extent is in ``root``, the inode's i_block, 60 bytes)."""
    out: list[tuple[int, int, int]] = []
    tree: list[tuple[int, int]] = []

    def node(data: bytes, depth_left: int) -> None:
        magic, entries, _max, depth = struct.unpack_from("<HHHH", data, 0)
        if magic != EXTENT_MAGIC or depth > 5 or depth_left < 0 or 12 + entries * 12 > len(data):
            raise _Doubt(f"inode {ino}: extent node not understood")
        for i in range(entries):
            at = 12 + i * 12
            if depth == 0:
                lblk, length, hi, lo = struct.unpack_from("<IHHI", data, at)
                out.append((lblk, lo | hi << 32, length - 32768 if length > 32768 else length))
            else:
                _lblk, lo, hi = struct.unpack_from("<IIH", data, at)
                child = lo | hi << 32
                tree.append((child, 1))
                node(read(child * bs, bs, f"extent block of inode {ino}"), depth_left - 1)

    node(root, 5)
    return out, tree, struct.unpack_from("<H", root, 6)[0]


def _prev_window(
    entry: Entry | None, zeros: list[Extent], chunk: bytes | None, window: int, chunk_size: int
) -> tuple[bytearray, list[Extent]]:
    """The previous image's bytes of a window (zeros where it had zero runs) and the ranges it covered."""
    buf = bytearray(chunk_size)
    covered: list[Extent] = list(zeros)
    if entry is not None and chunk is not None:
        pos = 0
        for off, n in entry.extents:
            buf[off - window : off - window + n] = chunk[pos : pos + n]
            pos += n
        covered.extend(entry.extents)
    return buf, _merged(covered)


def _compare_with_previous(
    trusted: dict[int, tuple[int, bytes, list[tuple[int, int, int]]]],
    used: list[Extent],
    size: int,
    *,
    previous: PreviousArea,
    fetch: Fetch,
    read: Callable[[int, int, str], bytes],
    chunk_size: int,
    zero_block: int,
) -> None:
    """Keep only the inodes whose records the previous image holds unchanged (but for atime/checksum)."""
    by_window: dict[int, list[int]] = {}
    for ino, (pos, rec, _) in trusted.items():
        w = pos - pos % chunk_size
        if (pos + len(rec) - 1) // chunk_size * chunk_size != w:
            raise _Doubt(f"inode {ino}'s record spans two windows")
        by_window.setdefault(w, []).append(ino)
    pieces = {w: p for w, p in windows(list(used), size, chunk_size) if w in by_window}
    same: set[int] = set()
    wanted: dict[bytes, int] = {}
    for w in by_window:
        entry = previous.entries.get(w)
        if w not in pieces:
            raise _Doubt(f"inode table at byte {w} is not in the used extents")
        here = pieces[w]
        base = here[0][0]
        data = read(base, here[-1][0] + here[-1][1] - base, "inode table window")
        nonzero, _ = split_zeros(data, base, here, zero_block)
        chunk = b"".join(data[o - base : o - base + n] for o, n in nonzero)
        if entry is None:
            continue
        if tuple(nonzero) == entry.extents and blake3.blake3(chunk).digest() == entry.hash:
            same.add(w)  # the window is the previous one, byte for byte (records kept as they are)
        else:
            wanted[entry.hash] = entry.length
    chunks = fetch(list(wanted.items())) if wanted else {}
    for w, inos in by_window.items():
        if w in same:
            continue
        entry = previous.entries.get(w)
        old_chunk: bytes | None = None
        if entry is not None:
            old_chunk = chunks.get(entry.hash)
            if old_chunk is not None and (
                len(old_chunk) != entry.length or blake3.blake3(old_chunk).digest() != entry.hash
            ):
                raise _Doubt("a previous chunk does not match its digest")
        old, covered = _prev_window(entry, _clip(previous.zeros, w, chunk_size), old_chunk, w, chunk_size)
        for ino in inos:
            pos, rec, _ = trusted[ino]
            missing = (entry is not None and old_chunk is None) or not _covers(covered, pos, len(rec))
            if missing or _masked(bytes(old[pos - w : pos - w + len(rec)])) != _masked(rec):
                trusted.pop(ino)


def _masked(rec: bytes) -> bytes:
    """An inode record without its access time and checksum fields (which change on a read)."""
    b = bytearray(rec)
    b[0x8:0xC] = bytes(4)  # i_atime
    b[0x7C:0x7E] = bytes(2)  # l_i_checksum_lo
    if len(b) > 128:
        (extra,) = struct.unpack_from("<H", b, 0x80)
        if extra >= 4:
            b[0x82:0x84] = bytes(2)  # i_checksum_hi
        if extra >= 0x10:
            b[0x8C:0x90] = bytes(4)  # i_atime_extra
    return bytes(b)


def _drop_swap_files(
    trusted: dict[int, tuple[int, bytes, list[tuple[int, int, int]]]],
    read: Callable[[int, int, str], bytes],
    bs: int,
) -> None:
    """A swap file's blocks are written by the kernel without its inode: read the first page of each
    trusted file and distrust it on a swap or hibernation signature (or when the page is not one run)."""
    for ino in list(trusted):
        extents = trusted[ino][2]
        first = [(p, n) for lblk, p, n in extents if lblk == 0]
        if not first:
            continue
        p, n = first[0]
        if n * bs < PAGE:
            trusted.pop(ino)
            continue
        page = read(p * bs, PAGE, f"first page of inode {ino}")
        if any(mark in page[PAGE - 16 :] for mark in SWAP_MARKS):
            trusted.pop(ino)


def _check_claims(
    trusted: dict[int, tuple[int, bytes, list[tuple[int, int, int]]]],
    claims: list[tuple[int, int, int]],
    meta: list[tuple[int, int]],
    sb: Superblock,
) -> list[tuple[int, int]]:
    """The trusted files' data block ranges, merged; a block of file data claimed twice, or also
    metadata: doubt."""
    ranges = sorted([(p, n) for p, n, _ in claims if n > 0] + _merged(meta))
    end = -1
    for p, n in ranges:
        if p < end:
            raise _Doubt(f"block {p} is claimed twice (file data and file data, or metadata)")
        end = max(end, p + n)
    proven = [(p, n) for ino in trusted for _, p, n in trusted[ino][2] if n > 0]
    for p, n in proven:
        if p < sb.first_data_block or p + n > sb.blocks_count:
            raise _Doubt(f"extent at block {p} (+{n}) lies outside the filesystem")
    return _merged(proven)


def _windows(
    used: list[Extent],
    size: int,
    proven_blocks: list[tuple[int, int]],
    *,
    bs: int,
    previous: PreviousArea,
    chunk_size: int,
) -> ReusedWindows:
    proven = [(p * bs, n * bs) for p, n in proven_blocks]
    out = array("q")
    for w, pieces in windows(list(used), size, chunk_size):
        if not all(_covers(proven, o, n) for o, n in pieces):
            continue
        entry = previous.entries.get(w)
        zeros = _clip(previous.zeros, w, chunk_size)
        before = _merged(list(zeros) + (list(entry.extents) if entry is not None else []))
        if before != _merged(list(pieces)):
            continue
        out.append(w)
    return ReusedWindows(out, previous, chunk_size)


def _merged(runs: list[Extent]) -> list[Extent]:
    out: list[Extent] = []
    for off, n in sorted(runs):
        if n <= 0:
            continue
        if out and out[-1][0] + out[-1][1] >= off:
            last_off, last_n = out[-1]
            out[-1] = (last_off, max(last_off + last_n, off + n) - last_off)
        else:
            out.append((off, n))
    return out


def _covers(runs: list[Extent], off: int, n: int) -> bool:
    """True when the merged, sorted ``runs`` hold all of ``[off, off + n)``."""
    i = bisect.bisect_right(runs, (off, 1 << 62)) - 1
    return i >= 0 and runs[i][0] <= off and off + n <= runs[i][0] + runs[i][1]


def _clip(zeros: Sequence[Extent], window: int, chunk_size: int) -> list[Extent]:
    """The zero runs inside ``[window, window + chunk_size)``, clipped to it."""
    end = window + chunk_size
    i = max(0, bisect.bisect_right(zeros, (window, 1 << 62)) - 1)
    out: list[Extent] = []
    while i < len(zeros) and zeros[i][0] < end:
        off, n = zeros[i]
        lo, hi = max(off, window), min(off + n, end)
        if lo < hi:
            out.append((lo, hi - lo))
        i += 1
    return out
