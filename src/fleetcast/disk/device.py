"""What a disk (block device or raw image file) looks like: size and sector sizes.

Everything here is read-only: block devices are opened ``O_RDONLY`` for their ioctls.

A plain file has no hardware sector size. Its logical sector size is, in this order: the size declared
on the file (the extended attribute ``user.fleetcast.sector_size``, which ``declare_sector_size`` and
``partitions.write_table`` set; by hand: ``setfattr -n user.fleetcast.sector_size -v 4096 disk.img``),
else 4096 when a GPT header sits at byte 4096 and none at byte 512 (a 4Kn disk's image), else 512.
To hand such a file to a tool that needs a 4Kn block device: ``losetup --sector-size 4096 -f disk.img``.
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
SECTOR_XATTR = "user.fleetcast.sector_size"
GPT_SIGNATURE = b"EFI PART"
SECTOR_SIZES = (512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


def declared_sector_size(path: Path) -> int | None:
    """The logical sector size declared on a plain file, or None."""
    try:
        raw = os.getxattr(path, SECTOR_XATTR)
    except OSError:
        return None
    try:
        value = int(raw.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise DiskError(
            f"disk image {path} declares an unreadable sector size {raw[:20]!r} in {SECTOR_XATTR}",
            hint=f"remove it (setfattr -x {SECTOR_XATTR} {path}) or set 512 or 4096",
        ) from None
    if value not in SECTOR_SIZES:
        raise DiskError(
            f"disk image {path} declares a {value}-byte sector size in {SECTOR_XATTR}; "
            "expected a power of two from 512 to 65536"
        )
    return value


def declare_sector_size(path: Path, sector_size: int) -> None:
    """Record on a plain file that it is a disk with ``sector_size``-byte logical sectors."""
    try:
        os.setxattr(path, SECTOR_XATTR, str(sector_size).encode())
    except OSError as exc:
        if sector_size != FILE_SECTOR_SIZE:
            logger.warning(
                "cannot declare %d-byte sectors on %s (%s); a GPT still tells its sector size",
                sector_size,
                path,
                exc.strerror,
            )


def file_sector_size(path: Path) -> int:
    """Logical sector size of a plain disk-image file (see the module docstring)."""
    declared = declared_sector_size(path)
    if declared is not None:
        return declared
    try:
        with open(path, "rb") as f:
            f.seek(512)
            at512 = f.read(8)
            f.seek(4096)
            at4k = f.read(8)
    except OSError as exc:
        raise DiskError(f"disk image {path} is not readable: {exc.strerror}") from exc
    if at4k == GPT_SIGNATURE and at512 != GPT_SIGNATURE:
        return 4096
    return FILE_SECTOR_SIZE


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
    """Size and sector sizes of a block device or a plain file (see ``file_sector_size``).

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
        ss = file_sector_size(path)
        return DiskInfo(path, st.st_size, ss, ss, is_block=False)
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
