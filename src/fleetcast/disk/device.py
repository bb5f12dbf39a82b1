"""What a disk (block device or raw image file) looks like: size and sector sizes.

Everything here is read-only: block devices are opened ``O_RDONLY`` for their ioctls.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from fleetcast.errors import DiskError

logger = logging.getLogger(__name__)

BLKSSZGET = 0x1268  # logical sector size, int
BLKPBSZGET = 0x127B  # physical sector size, unsigned int
BLKGETSIZE64 = 0x80081272  # size in bytes, u64

FILE_SECTOR_SIZE = 512


@dataclass(frozen=True)
class DiskInfo:
    path: Path
    size: int
    logical_sector_size: int
    physical_sector_size: int
    is_block: bool

    @property
    def sectors(self) -> int:
        """Size in logical sectors (rounded down)."""
        return self.size // self.logical_sector_size


def _ioctl_int(fd: int, request: int, fmt: str) -> int:
    buf = bytearray(struct.calcsize(fmt))
    fcntl.ioctl(fd, request, buf)
    value: int = struct.unpack(fmt, buf)[0]
    return value


def inspect(path: Path) -> DiskInfo:
    """Size and sector sizes of a block device or a plain file (512/512 for files).

    Raises DiskError for a missing path, a directory or other non-disk, or an unreadable one.
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError as exc:
        raise DiskError(
            f"disk {path} does not exist", hint="give a block device or a disk-image file"
        ) from exc
    except OSError as exc:
        raise DiskError(f"cannot examine disk {path}: {exc.strerror}") from exc
    if stat.S_ISREG(st.st_mode):
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise DiskError(f"disk image {path} is not readable: {exc.strerror}") from exc
        os.close(fd)
        return DiskInfo(path, st.st_size, FILE_SECTOR_SIZE, FILE_SECTOR_SIZE, is_block=False)
    if not stat.S_ISBLK(st.st_mode):
        kind = (
            "a directory"
            if stat.S_ISDIR(st.st_mode)
            else "a character device"
            if stat.S_ISCHR(st.st_mode)
            else "a FIFO"
            if stat.S_ISFIFO(st.st_mode)
            else "a socket"
            if stat.S_ISSOCK(st.st_mode)
            else "not a regular file"
        )
        raise DiskError(
            f"{path} is not a disk: expected a block device or a disk-image file, found {kind}",
            hint="give a block device (/dev/sdX, /dev/nvme0n1, /dev/loopN) or a raw disk-image file",
        )
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        if exc.errno == errno.ENOMEDIUM:
            raise DiskError(f"disk {path} has no medium") from exc
        raise DiskError(f"disk {path} is not readable: {exc.strerror}") from exc
    try:
        size = _ioctl_int(fd, BLKGETSIZE64, "Q")
        logical = _ioctl_int(fd, BLKSSZGET, "i")
        physical = _ioctl_int(fd, BLKPBSZGET, "I")
    except OSError as exc:
        raise DiskError(f"cannot read the geometry of disk {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)
    return DiskInfo(path, size, logical, physical, is_block=True)
