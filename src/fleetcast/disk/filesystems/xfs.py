"""XFS: used blocks = the data device minus the free extents of every allocation group's by-block
free-space B+tree (the "bno" tree rooted in the AGF).

Layout read (all big-endian): the superblock at byte 0 ("XFSB": block size, data blocks, AG size and
count, sector size, version); in each AG the AGF in its second sector ("XAGF": AG length, bno root
block and tree height); the tree's short-form blocks ("ABTB", or "AB3B" with the v5 CRC header) hold
(start block, block count) records in leaves and keys + child pointers in nodes. Blocks on the AG free
list (AGFL) are not in the tree and count as used; a superset is harmless. Anything inconsistent (a
bad magic, a record outside its AG, a loop in the tree) makes the parser fall back to the whole
partition with a warning, as the ext parser does.
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path
from typing import BinaryIO

from fleetcast.disk.filesystems.base import Extent, Filesystem, FsType, merge, mount_command, read_at
from fleetcast.errors import FilesystemError

logger = logging.getLogger(__name__)

SB_MAGIC = b"XFSB"
AGF_MAGIC = b"XAGF"
BNO_MAGICS = {b"ABTB": 16, b"AB3B": 56}  # magic -> block header length (v4, v5 with CRC)
MAX_LEVELS = 8


class Unsupported(Exception):
    """Something the parser does not read; the caller copies the whole partition instead."""


class Superblock:
    def __init__(self, raw: bytes) -> None:
        if raw[:4] != SB_MAGIC:
            raise Unsupported(f"no XFS superblock magic (found {raw[:4]!r})")
        self.block_size, self.dblocks = struct.unpack_from(">IQ", raw, 4)
        self.agblocks, self.agcount = struct.unpack_from(">II", raw, 84)
        (self.sect_size,) = struct.unpack_from(">H", raw, 102)
        if not (512 <= self.block_size <= 65536 and self.block_size & (self.block_size - 1) == 0):
            raise Unsupported(f"block size {self.block_size}")
        if not (512 <= self.sect_size <= self.block_size):
            raise Unsupported(f"sector size {self.sect_size}")
        if not self.agblocks or not self.agcount or self.dblocks > self.agblocks * self.agcount:
            raise Unsupported(f"{self.agcount} AGs of {self.agblocks} blocks for {self.dblocks} blocks")


def free_extents(f: BinaryIO, offset: int, size: int) -> tuple[Superblock, list[Extent]]:
    """The superblock and every free extent (byte offset relative to the partition, length)."""
    limit = offset + size
    sb = Superblock(read_at(f, offset, 512, what="XFS superblock", limit=limit))
    bs = sb.block_size
    if sb.dblocks * bs > size:
        raise Unsupported(f"filesystem of {sb.dblocks * bs} bytes in a {size}-byte partition")
    free: list[Extent] = []
    for agno in range(sb.agcount):
        ag_start = agno * sb.agblocks
        agf = read_at(f, offset + ag_start * bs + sb.sect_size, 64, what=f"XFS AGF {agno}", limit=limit)
        if agf[:4] != AGF_MAGIC:
            raise Unsupported(f"AG {agno} has no AGF magic (found {agf[:4]!r})")
        length, bno_root = struct.unpack_from(">II", agf, 12)
        (bno_level,) = struct.unpack_from(">I", agf, 28)
        if length > sb.agblocks or not 0 < bno_level <= MAX_LEVELS:
            raise Unsupported(f"AG {agno}: length {length}, bno tree height {bno_level}")
        ag = _Ag(f, offset, limit, sb, ag_start, length)
        for start, count in ag.walk(bno_root, bno_level - 1, set()):
            free.append(((ag_start + start) * bs, count * bs))
    return sb, free


class _Ag:
    """One allocation group's by-block free-space tree, read from ``f``."""

    def __init__(  # noqa: PLR0917 -- one AG's reading context
        self, f: BinaryIO, offset: int, limit: int, sb: Superblock, start: int, length: int
    ) -> None:
        self.f, self.offset, self.limit, self.sb = f, offset, limit, sb
        self.start, self.length = start, length

    def walk(self, block: int, level: int, seen: set[int]) -> list[tuple[int, int]]:
        """(AG block, count) of every free extent under tree block ``block`` at height ``level``."""
        if block >= self.length or block in seen:
            raise Unsupported(f"bno tree block {block} outside its AG or visited twice")
        seen.add(block)
        bs = self.sb.block_size
        raw = read_at(
            self.f,
            self.offset + (self.start + block) * bs,
            bs,
            what="XFS free-space tree block",
            limit=self.limit,
        )
        hdr = BNO_MAGICS.get(raw[:4])
        if hdr is None:
            raise Unsupported(f"bno tree block {block}: magic {raw[:4]!r}")
        blevel, numrecs = struct.unpack_from(">HH", raw, 4)
        if blevel != level:
            raise Unsupported(f"bno tree block {block}: level {blevel}, expected {level}")
        if level == 0:
            if hdr + numrecs * 8 > bs:
                raise Unsupported(f"bno leaf {block}: {numrecs} records")
            recs = [struct.unpack_from(">II", raw, hdr + 8 * i) for i in range(numrecs)]
            for start, count in recs:
                if start + count > self.length:
                    raise Unsupported(f"free extent {start}+{count} beyond the AG ({self.length} blocks)")
            return recs
        maxrecs = (bs - hdr) // 12
        if numrecs > maxrecs:
            raise Unsupported(f"bno node {block}: {numrecs} pointers, at most {maxrecs}")
        out: list[tuple[int, int]] = []
        for i in range(numrecs):
            (child,) = struct.unpack_from(">I", raw, hdr + maxrecs * 8 + 4 * i)
            out += self.walk(child, level - 1, seen)
        return out


def used_from_free(fs_bytes: int, free: list[Extent]) -> list[Extent]:
    """[0, fs_bytes) minus the free extents."""
    used: list[Extent] = []
    pos = 0
    for start, length in merge(free, fs_bytes):
        if start > pos:
            used.append((pos, start - pos))
        pos = start + length
    if pos < fs_bytes:
        used.append((pos, fs_bytes - pos))
    return used


class Xfs(Filesystem):
    fstype = FsType.XFS
    mountable = True

    @property
    def grow_note(self) -> str:
        return "XFS grows only while mounted: run xfs_growfs on its mount point at first boot"

    def mount_argv(self, dev: Path, mountpoint: Path, *, read_only: bool) -> list[str]:
        return mount_command("mount", "ro,norecovery" if read_only else "rw", dev, mountpoint, "xfs")

    def probe(self, head: bytes) -> bool:
        return head[:4] == SB_MAGIC

    def used_extents(self, f: BinaryIO, offset: int, size: int) -> list[Extent]:
        try:
            sb, free = free_extents(f, offset, size)
        except (Unsupported, FilesystemError) as exc:
            logger.warning("XFS at byte %d: %s; copying the whole partition", offset, exc)
            return [(0, size)]
        return used_from_free(sb.dblocks * sb.block_size, free)
