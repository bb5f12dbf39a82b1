"""Filesystem detection and allocation maps: which byte ranges of a partition hold data.

``detect`` looks at superblock magic (BitLocker "-FVE-FS-", NTFS "NTFS    ", FAT boot sector with a
sane BPB, ext magic 0xEF53 at byte 1080, XFS "XFSB", btrfs "_BHRfS_M" at 64 KiB, swap
"SWAPSPACE2"; everything else is RAW).
``used_extents`` returns
sorted, merged byte ranges relative to the partition start, read from the filesystem's own allocation
map by the parsers in this package (no mount, read access only). ``check_capturable`` refuses BitLocker
and hibernated or unclean NTFS, naming the partition.

Callers pass an already-open file (the disk image or block device, opened read-only) and the
partition's byte offset and size; for an unpartitioned disk, offset 0 and the disk size.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import BinaryIO

from fleetcast.disk.filesystems import btrfs, ext, fat, ntfs, raw, xfs
from fleetcast.disk.filesystems.base import REGISTRY, Extent, Filesystem, FsType, merge, total
from fleetcast.errors import FilesystemError, FleetcastError

logger = logging.getLogger(__name__)

__all__ = [
    "REGISTRY",
    "Extent",
    "Filesystem",
    "FsType",
    "btrfs",
    "check_capturable",
    "detect",
    "ext",
    "fat",
    "get",
    "merge",
    "ntfs",
    "probe_os",
    "raw",
    "total",
    "used_extents",
    "xfs",
]

PROBE_BYTES = 0x11000  # up to and including btrfs's superblock at 64 KiB


def _head(f: BinaryIO, offset: int, size: int) -> bytes:
    try:
        f.seek(offset)
        return f.read(min(PROBE_BYTES, size))
    except OSError as exc:
        raise FilesystemError(
            f"cannot read the first bytes of the partition at byte {offset}: {exc.strerror}"
        ) from exc


def detect(f: BinaryIO, offset: int, size: int) -> FsType:
    """The filesystem in [offset, offset+size) of ``f``, from its magic numbers; RAW when unknown."""
    head = _head(f, offset, size)
    for fs in sorted(REGISTRY.values(), key=lambda fs: fs.priority):
        if fs.probe(head):
            return fs.fstype
    return FsType.RAW


def get(fstype: FsType | str) -> Filesystem:
    """The registered filesystem for ``fstype``; raw for a type fleetcast does not know."""
    fs = REGISTRY.get(FsType(fstype)) if fstype in FsType.__members__.values() else None
    return fs if fs is not None else REGISTRY[FsType.RAW]


def probe_os(fstype: FsType | str, source: Path, f: BinaryIO, offset: int, size: int) -> str | None:
    """ "windows", "linux" or None for the volume at [offset, offset+size) of ``source`` (opened as ``f``).

    Best effort: a volume that cannot be read says None (logged). No loop device, no mount."""
    try:
        return get(fstype).probe_os(source, f, offset, size)
    except (FleetcastError, OSError) as exc:
        logger.debug("os probe of %s at byte %d failed: %s", source, offset, exc)
        return None


def used_extents(fstype: FsType | str, f: BinaryIO, offset: int, size: int) -> list[Extent]:
    """Byte ranges (relative to the partition start) the filesystem uses: sorted, merged, within [0, size)."""
    fs = get(fstype)
    extents = merge(fs.used_extents(f, offset, size), size)
    logger.debug(
        "%s at byte %d: %d extents, %d of %d bytes used",
        fs.fstype,
        offset,
        len(extents),
        total(extents),
        size,
    )
    return extents


def check_capturable(fstype: FsType | str, f: BinaryIO, offset: int, size: int, name: str) -> None:
    """Raise FilesystemError when the partition cannot be captured by its allocation map.

    ``name`` is how messages name it: "partition 3", or "the disk" for a bare filesystem.
    """
    get(fstype).check_capturable(f, offset, size, name)
