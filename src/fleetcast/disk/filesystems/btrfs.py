"""btrfs (one device): used bytes = the superblock copies, the first MiB, and every extent the extent
tree records (data extents and tree blocks), mapped from logical to physical addresses by the chunk
tree.

Read (little-endian): the superblock at 64 KiB ("_BHRfS_M": sector and node size, root tree, chunk tree,
log tree, device count, the bootstrap ``sys_chunk_array``); the chunk tree (CHUNK_ITEM: logical start
and length, stripes with their physical offsets: SINGLE has one stripe, DUP two on the same device,
both are copied); the root tree's ROOT_ITEM of the extent tree (objectid 2); the extent tree's
EXTENT_ITEM (start, length) and METADATA_ITEM (start, level: one node) keys. Every tree block, of
every tree, is itself an extent in the extent tree. Anything this parser does not read (several
devices, RAID profiles, a tree log to replay, a bad magic or address) makes it fall back to the whole
partition with a warning, as the ext and XFS parsers do.
"""

from __future__ import annotations

import bisect
import logging
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from fleetcast.disk.filesystems.base import Extent, Filesystem, FsType, merge, mount_command, read_at
from fleetcast.errors import FilesystemError

logger = logging.getLogger(__name__)

SB_OFFSET = 0x10000
SB_MIRRORS = (0x10000, 0x4000000, 0x4000000000)  # 64 KiB, 64 MiB, 256 GiB
SB_SIZE = 4096
MAGIC = b"_BHRfS_M"
HEADER = 0x65  # tree block header length
CHUNK_ITEM = 228
ROOT_ITEM = 132
EXTENT_ITEM = 168
METADATA_ITEM = 169
EXTENT_TREE = 2
PROFILE_MASK = 0x1F8  # RAID0|RAID1|DUP|RAID10|RAID5|RAID6 bits (and RAID1C3/4 above)
DUP = 0x20
RESERVED = 1 << 20  # btrfs never allocates the first MiB of a device
MAX_LEVEL = 8


class Unsupported(Exception):
    """Something the parser does not read; the caller copies the whole partition instead."""


@dataclass(frozen=True)
class Chunk:
    logical: int
    length: int
    physical: tuple[int, ...]  # one offset per stripe on this device


class Volume:
    def __init__(self, f: BinaryIO, offset: int, size: int) -> None:
        self.f, self.offset, self.size = f, offset, size
        sb = read_at(f, offset + SB_OFFSET, SB_SIZE, what="btrfs superblock", limit=offset + size)
        if sb[0x40:0x48] != MAGIC:
            raise Unsupported("no btrfs superblock magic")
        self.root, self.chunk_root, self.log_root = struct.unpack_from("<QQQ", sb, 0x50)
        (self.total_bytes,) = struct.unpack_from("<Q", sb, 0x70)
        (self.num_devices,) = struct.unpack_from("<Q", sb, 0x88)
        self.sector_size, self.node_size = struct.unpack_from("<II", sb, 0x90)
        (sys_size,) = struct.unpack_from("<I", sb, 0xA0)
        self.root_level, self.chunk_level = sb[0xC6], sb[0xC7]
        if self.num_devices != 1:
            raise Unsupported(f"{self.num_devices} devices")
        if self.log_root:
            raise Unsupported("a tree log waits to be replayed (not cleanly unmounted)")
        if not (4096 <= self.node_size <= 65536) or sys_size > 2048:
            raise Unsupported(f"node size {self.node_size}, system chunk array {sys_size} bytes")
        self.chunks: list[Chunk] = []
        self._starts: list[int] = []
        for key, item in _sys_chunks(sb[0x32B : 0x32B + sys_size]):
            self._add_chunk(key, item)
        for key, item in self.items(self.chunk_root, self.chunk_level):
            if key[1] == CHUNK_ITEM:
                self._add_chunk(key, item)

    def _add_chunk(self, key: tuple[int, int, int], item: bytes) -> None:
        length, _owner, _stripe_len, ctype = struct.unpack_from("<QQQQ", item, 0)
        (num_stripes,) = struct.unpack_from("<H", item, 44)
        if ctype & PROFILE_MASK & ~DUP:
            raise Unsupported(f"chunk at {key[2]} has profile bits {ctype & PROFILE_MASK:#x}")
        if len(item) < 48 + 32 * num_stripes or not num_stripes:
            raise Unsupported(f"chunk at {key[2]}: {num_stripes} stripes in {len(item)} bytes")
        physical = tuple(struct.unpack_from("<Q", item, 48 + 32 * i + 8)[0] for i in range(num_stripes))
        i = bisect.bisect_left(self._starts, key[2])
        if i < len(self._starts) and self._starts[i] == key[2]:
            return  # the bootstrap array repeats chunks of the chunk tree
        self._starts.insert(i, key[2])
        self.chunks.insert(i, Chunk(key[2], length, physical))

    def physical(self, logical: int, length: int) -> tuple[int, ...]:
        """Physical offsets (one per stripe) of the logical range, which lies in one chunk."""
        i = bisect.bisect_right(self._starts, logical) - 1
        if i < 0:
            raise Unsupported(f"logical address {logical} is in no chunk")
        c = self.chunks[i]
        if logical + length > c.logical + c.length:
            raise Unsupported(f"logical range {logical}+{length} leaves its chunk")
        return tuple(p + logical - c.logical for p in c.physical)

    def node(self, logical: int) -> bytes:
        pos = self.physical(logical, self.node_size)[0]
        raw = read_at(
            self.f, self.offset + pos, self.node_size, what="btrfs tree block", limit=self.offset + self.size
        )
        (bytenr,) = struct.unpack_from("<Q", raw, 0x30)
        if bytenr != logical:
            raise Unsupported(f"tree block at {logical} says it is at {bytenr}")
        return raw

    def items(self, logical: int, level: int, depth: int = 0) -> Iterator[tuple[tuple[int, int, int], bytes]]:
        """(key, item data) of every leaf item under the tree block at ``logical``."""
        if depth > MAX_LEVEL:
            raise Unsupported("tree deeper than 8 levels")
        raw = self.node(logical)
        (nritems,) = struct.unpack_from("<I", raw, 0x60)
        if raw[0x64] != level:
            raise Unsupported(f"tree block at {logical}: level {raw[0x64]}, expected {level}")
        if level == 0:
            if HEADER + 25 * nritems > len(raw):
                raise Unsupported(f"leaf at {logical}: {nritems} items")
            for i in range(nritems):
                objectid, ktype, koffset, doff, dsize = struct.unpack_from("<QBQII", raw, HEADER + 25 * i)
                if HEADER + doff + dsize > len(raw):
                    raise Unsupported(f"leaf at {logical}: item {i} outside the block")
                yield (objectid, ktype, koffset), raw[HEADER + doff : HEADER + doff + dsize]
            return
        if HEADER + 33 * nritems > len(raw):
            raise Unsupported(f"node at {logical}: {nritems} pointers")
        for i in range(nritems):
            (child,) = struct.unpack_from("<Q", raw, HEADER + 33 * i + 17)
            yield from self.items(child, level - 1, depth + 1)

    def extent_root(self) -> tuple[int, int]:
        for key, item in self.items(self.root, self.root_level):
            if key[0] == EXTENT_TREE and key[1] == ROOT_ITEM and len(item) >= 239:
                (bytenr,) = struct.unpack_from("<Q", item, 176)
                return bytenr, item[238]
        raise Unsupported("the root tree has no extent tree")

    def used(self) -> list[Extent]:
        """Physical byte ranges in use, relative to the partition start."""
        out: list[Extent] = [(0, RESERVED)]
        out += [(m, SB_SIZE) for m in SB_MIRRORS if m + SB_SIZE <= self.size]
        root, level = self.extent_root()
        for (objectid, ktype, koffset), _ in self.items(root, level):
            if ktype == EXTENT_ITEM:
                length = koffset
            elif ktype == METADATA_ITEM:
                length = self.node_size
            else:
                continue
            out += [(p, length) for p in self.physical(objectid, length)]
        return merge(out, self.size)


def _sys_chunks(array: bytes) -> Iterator[tuple[tuple[int, int, int], bytes]]:
    pos = 0
    while pos + 17 + 48 <= len(array):
        objectid, ktype, koffset = struct.unpack_from("<QBQ", array, pos)
        (num_stripes,) = struct.unpack_from("<H", array, pos + 17 + 44)
        end = pos + 17 + 48 + 32 * num_stripes
        if ktype != CHUNK_ITEM or end > len(array):
            raise Unsupported(f"bootstrap chunk array entry at {pos} (type {ktype})")
        yield (objectid, ktype, koffset), array[pos + 17 : end]
        pos = end


class Btrfs(Filesystem):
    fstype = FsType.BTRFS
    mountable = True

    @property
    def grow_note(self) -> str:
        return "btrfs grows only while mounted: run btrfs filesystem resize max on it at first boot"

    def probe(self, head: bytes) -> bool:
        return len(head) >= SB_OFFSET + 0x48 and head[SB_OFFSET + 0x40 : SB_OFFSET + 0x48] == MAGIC

    def used_extents(self, f: BinaryIO, offset: int, size: int) -> list[Extent]:
        try:
            return Volume(f, offset, size).used()
        except (Unsupported, FilesystemError, struct.error) as exc:
            logger.warning("btrfs at byte %d: %s; copying the whole partition", offset, exc)
            return [(0, size)]

    def mount_argv(self, dev: Path, mountpoint: Path, *, read_only: bool) -> list[str]:
        return mount_command("mount", "ro" if read_only else "rw", dev, mountpoint, "btrfs")
