"""ext2/3/4: used blocks from the superblock, the group descriptors and the block bitmaps.

Used = every block whose bit is set in its group's block bitmap, plus, to be safe, every group's own
metadata wherever it lives (block bitmap, inode bitmap, inode table -- flex_bg places them in other
groups), the superblock/GDT/reserved-GDT copies of groups flagged BLOCK_UNINIT (their bitmap is not
on disk; the kernel computes it from exactly those), and the first 2 KiB (boot block + superblock).
A superset is harmless; a missing block is not, so anything unusual (bigalloc, a group descriptor
pointing outside the volume) makes the parser fall back to the whole partition with a warning.
"""

from __future__ import annotations

import logging
import os
import struct
from pathlib import Path
from typing import BinaryIO

from fleetcast.disk.filesystems.base import (
    Extent,
    Filesystem,
    FsType,
    bitmap_runs,
    merge,
    mount_command,
    read_at,
)
from fleetcast.errors import CommandError, FilesystemError
from fleetcast.run import run

logger = logging.getLogger(__name__)

SB_OFFSET = 1024
MAGIC = 0xEF53
COMPAT_SPARSE_SUPER2 = 0x200
INCOMPAT_META_BG = 0x10
INCOMPAT_64BIT = 0x80
RO_COMPAT_SPARSE_SUPER = 0x1
RO_COMPAT_BIGALLOC = 0x200
BG_BLOCK_UNINIT = 0x2


class Unsupported(Exception):
    """A feature the parser does not read; the caller copies the whole partition instead."""


class Superblock:
    """The fields of the ext superblock the allocation map needs (parsed with bounds checks)."""

    inodes_count: int
    first_data_block: int
    blocks_per_group: int
    clusters_per_group: int
    inodes_per_group: int
    feature_compat: int
    feature_incompat: int
    feature_ro_compat: int
    reserved_gdt_blocks: int
    first_meta_bg: int
    blocks_count: int
    desc_size: int
    block_size: int
    groups: int
    is64: bool
    backup_bgs: tuple[int, ...]

    def __init__(self, raw: bytes) -> None:
        if len(raw) < 1024:
            raise FilesystemError(f"ext superblock is {len(raw)} bytes; expected 1024")
        (magic,) = struct.unpack_from("<H", raw, 56)
        if magic != MAGIC:
            raise FilesystemError(f"ext superblock magic is {magic:#06x}; expected {MAGIC:#06x}")
        (
            self.inodes_count,
            blocks_lo,
            _r,
            _free,
            _free_inodes,
            self.first_data_block,
            log_block,
            _log_cluster,
            self.blocks_per_group,
            self.clusters_per_group,
            self.inodes_per_group,
        ) = struct.unpack_from("<11I", raw, 0)
        self.feature_compat, self.feature_incompat, self.feature_ro_compat = struct.unpack_from(
            "<3I", raw, 92
        )
        (self.reserved_gdt_blocks,) = struct.unpack_from("<H", raw, 206)
        (desc_size,) = struct.unpack_from("<H", raw, 254)
        (self.first_meta_bg,) = struct.unpack_from("<I", raw, 260)
        (blocks_hi,) = struct.unpack_from("<I", raw, 336)
        self.backup_bgs = struct.unpack_from("<2I", raw, 588)
        if log_block > 6:
            raise FilesystemError(
                f"ext block size 2^(10+{log_block}) is out of range; expected at most 64 KiB"
            )
        self.block_size = 1024 << log_block
        self.is64 = bool(self.feature_incompat & INCOMPAT_64BIT)
        self.blocks_count = blocks_lo | (blocks_hi << 32 if self.is64 else 0)
        self.desc_size = desc_size if self.is64 and desc_size >= 64 else 32
        if self.feature_ro_compat & RO_COMPAT_BIGALLOC:
            raise Unsupported("bigalloc")
        if self.blocks_per_group == 0 or self.blocks_per_group > self.block_size * 8:
            raise FilesystemError(
                f"ext blocks per group is {self.blocks_per_group}; expected 1 to {self.block_size * 8}"
            )
        if self.first_data_block >= self.blocks_count:
            raise FilesystemError(
                f"ext first data block {self.first_data_block} is beyond the block count {self.blocks_count}"
            )
        self.groups = -(-(self.blocks_count - self.first_data_block) // self.blocks_per_group)

    @property
    def size(self) -> int:
        return self.blocks_count * self.block_size

    def has_super(self, group: int) -> bool:
        if group == 0:
            return True
        if self.feature_compat & COMPAT_SPARSE_SUPER2:
            return group in self.backup_bgs
        if group <= 1 or not self.feature_ro_compat & RO_COMPAT_SPARSE_SUPER:
            return True
        if group % 2 == 0:
            return False
        for base in (3, 5, 7):
            n = base
            while n < group:
                n *= base
            if n == group:
                return True
        return False

    def group_start(self, group: int) -> int:
        return self.first_data_block + group * self.blocks_per_group

    def gdt_blocks(self) -> int:
        return -(-self.groups * self.desc_size // self.block_size)

    def super_and_gdt(self, group: int) -> list[tuple[int, int]]:
        """(first block, count) of the superblock copy, GDT and reserved GDT blocks in ``group``."""
        start = self.group_start(group)
        has_super = self.has_super(group)
        first = start + (1 if has_super else 0)
        out: list[tuple[int, int]] = []
        if has_super:
            out.append((start, 1))
        if not self.feature_incompat & INCOMPAT_META_BG:
            if has_super:
                out.append((first, self.gdt_blocks() + self.reserved_gdt_blocks))
            return out
        per_block = self.block_size // self.desc_size
        meta_group = group // per_block
        if meta_group < self.first_meta_bg:
            if has_super:
                out.append((first, self.first_meta_bg + self.reserved_gdt_blocks))
        elif group % per_block in (0, 1, per_block - 1):
            out.append((first, 1))
        return out


def group_descriptors(
    f: BinaryIO, offset: int, size: int
) -> tuple[Superblock, int, list[tuple[int, int, int, int]]]:
    """(superblock, inode size, [(block bitmap, inode bitmap, inode table, flags)] per group), every
    location checked to lie inside the filesystem."""
    sb = Superblock(read_at(f, offset + SB_OFFSET, 1024, what="ext superblock", limit=offset + size))
    if sb.size > size:
        raise FilesystemError(
            f"ext filesystem is {sb.size} bytes but its partition is only {size} bytes",
            hint="the partition was shrunk under the filesystem; capture it with --force-raw",
        )
    bs = sb.block_size
    gdt_block = sb.first_data_block + 1
    limit = offset + size
    # Group descriptors: contiguous after the superblock, or (meta_bg) one block per meta group.
    descs = bytearray()
    if sb.feature_incompat & INCOMPAT_META_BG:
        per_block = bs // sb.desc_size
        for meta in range(-(-sb.groups // per_block)):
            blk = gdt_block + meta if meta < sb.first_meta_bg else sb.group_start(meta * per_block)
            if meta >= sb.first_meta_bg and sb.has_super(meta * per_block):
                blk += 1
            descs += read_at(f, offset + blk * bs, bs, what="ext group descriptors", limit=limit)
    else:
        descs += read_at(
            f, offset + gdt_block * bs, sb.gdt_blocks() * bs, what="ext group descriptors", limit=limit
        )
    inode_size = _inode_size(f, offset, limit)
    inode_table_blocks = -(-sb.inodes_per_group * inode_size // bs)
    out: list[tuple[int, int, int, int]] = []
    for g in range(sb.groups):
        d = descs[g * sb.desc_size : (g + 1) * sb.desc_size]
        block_bitmap, inode_bitmap, inode_table = struct.unpack_from("<3I", d, 0)
        (flags,) = struct.unpack_from("<H", d, 18)
        if sb.desc_size >= 64:
            hi = struct.unpack_from("<3I", d, 32)
            block_bitmap |= hi[0] << 32
            inode_bitmap |= hi[1] << 32
            inode_table |= hi[2] << 32
        for blk, count in ((block_bitmap, 1), (inode_bitmap, 1), (inode_table, inode_table_blocks)):
            if not sb.first_data_block <= blk or blk + count > sb.blocks_count:
                raise FilesystemError(
                    f"ext group {g} points at block {blk} (+{count}); "
                    f"the filesystem has {sb.blocks_count} blocks"
                )
        out.append((block_bitmap, inode_bitmap, inode_table, flags))
    return sb, inode_size, out


def used_blocks(f: BinaryIO, offset: int, size: int) -> tuple[Superblock, list[tuple[int, int]]]:
    """(superblock, [(first block, count)]) of every block the filesystem uses."""
    sb, inode_size, descs = group_descriptors(f, offset, size)
    bs = sb.block_size
    limit = offset + size
    used: list[tuple[int, int]] = [(0, -(-2048 // bs))]
    inode_table_blocks = -(-sb.inodes_per_group * inode_size // bs)
    for g, (block_bitmap, inode_bitmap, inode_table, flags) in enumerate(descs):
        used.extend(((block_bitmap, 1), (inode_bitmap, 1), (inode_table, inode_table_blocks)))
        start = sb.group_start(g)
        nblocks = min(sb.blocks_per_group, sb.blocks_count - start)
        if flags & BG_BLOCK_UNINIT:
            used.extend(sb.super_and_gdt(g))
            continue
        bitmap = read_at(
            f, offset + block_bitmap * bs, bs, what=f"ext block bitmap of group {g}", limit=limit
        )
        used.extend((start + first, count) for first, count in bitmap_runs(bitmap, nblocks))
    return sb, used


def _inode_size(f: BinaryIO, offset: int, limit: int) -> int:
    raw = read_at(f, offset + SB_OFFSET, 128, what="ext superblock", limit=limit)
    (rev,) = struct.unpack_from("<I", raw, 76)
    if rev == 0:
        return 128
    (size,) = struct.unpack_from("<H", raw, 88)
    if size < 128 or size & (size - 1):
        raise FilesystemError(f"ext inode size is {size}; expected a power of two of at least 128")
    return int(size)


class Ext(Filesystem):
    fstype = FsType.EXT
    priority = 40
    growable = True
    mountable = True

    def probe_os(self, source: Path, f: BinaryIO, offset: int, size: int) -> str | None:
        """'linux' when /etc/os-release exists (debugfs reads the image at the offset: no loop device)."""
        proc = run(
            ["debugfs", "-R", "stat /etc/os-release", f"{os.fspath(source)}?offset={offset}"],
            check=False,
            timeout=30,
        )
        out = (proc.stdout or b"") + (proc.stderr or b"")
        return "linux" if proc.returncode == 0 and b"Inode:" in out else None

    def grow(self, dev: Path) -> None:
        """``e2fsck -fy`` then ``resize2fs``."""
        proc = run(["e2fsck", "-f", "-y", os.fspath(dev)], check=False)
        if proc.returncode >= 4:
            stderr = (proc.stderr or b"").decode(errors="replace").strip()
            raise FilesystemError(
                f"e2fsck found errors it could not fix on the restored ext filesystem ({dev}), "
                f"exit status {proc.returncode}: {stderr[-500:]}",
                hint="the image may be damaged: run fleetcast image verify",
            )
        try:
            run(["resize2fs", os.fspath(dev)])
        except CommandError as exc:
            raise FilesystemError(
                f"resize2fs could not grow the ext filesystem: {exc.stderr or exc.message}"
            ) from exc

    def mount_argv(self, dev: Path, mountpoint: Path, *, read_only: bool) -> list[str]:
        return mount_command("mount", "ro,noload" if read_only else "rw", dev, mountpoint, "ext4")

    def probe(self, head: bytes) -> bool:
        return len(head) >= 1082 and struct.unpack_from("<H", head, SB_OFFSET + 56)[0] == MAGIC

    def used_extents(self, f: BinaryIO, offset: int, size: int) -> list[Extent]:
        try:
            sb, blocks = used_blocks(f, offset, size)
        except Unsupported as exc:
            logger.warning("ext feature %s is not parsed; capturing the whole partition", exc)
            return [(0, size)]
        bs = sb.block_size
        return merge(((blk * bs, count * bs) for blk, count in blocks), size)
