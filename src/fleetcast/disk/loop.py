"""Loop devices: attach a disk image (or a byte range of one) and always detach it again.

Only tools that need a block device (resize2fs, ntfsresize, ntfs-3g, mkfs, partclone) get a loop device;
fleetcast itself reads partitions at their byte offset in the file or disk.

Every device is made **autoclear while held open**: right after ``losetup`` the context manager opens it,
sets ``LO_FLAGS_AUTOCLEAR`` (``LOOP_SET_STATUS64``) and keeps that descriptor until it exits. The kernel
then detaches the device when its last user closes it, so a process killed by SIGKILL (no ``finally``)
leaves no loop device behind; only the instant between ``losetup`` and the ioctl is unprotected.

Kernels differ in whether they parse partition tables on loop devices (these lab machines parse none,
a normal Debian kernel does with ``--partscan``). :func:`partitions` asks the kernel to re-read the
table (``BLKRRPART``) and falls back to ``partx -u``, which adds, updates and removes partition devices
itself, so callers see ``DEVpN`` either way.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import struct
import time
from collections.abc import Iterator
from pathlib import Path

from fleetcast.errors import CommandError, DiskError
from fleetcast.run import run, run_text

logger = logging.getLogger(__name__)

BLKRRPART = 0x125F
LOOP_SET_STATUS64 = 0x4C04
LOOP_GET_STATUS64 = 0x4C05
LO_FLAGS_AUTOCLEAR = 4
LOOP_INFO64_SIZE = 232
LO_FLAGS_AT = 52
_PART_WAIT_SECONDS = 5.0


@contextlib.contextmanager
def attach(
    path: Path,
    *,
    read_only: bool = False,
    offset: int = 0,
    sizelimit: int = 0,
    partscan: bool = False,
    sector_size: int = 0,
) -> Iterator[Path]:
    """Attach ``path`` to a free loop device and yield the device path; detach it (by its own path) on exit.

    ``offset``/``sizelimit`` (bytes) expose only a byte range of the file, e.g. one partition.
    ``partscan`` asks the kernel for partition devices (see :func:`partitions` for the fallback).
    ``sector_size`` (e.g. 4096) sets the device's logical sector size, to test 4Kn disks.
    """
    path = Path(path)
    if not path.exists():
        raise DiskError(f"cannot attach {path} to a loop device: it does not exist")
    if offset < 0 or sizelimit < 0:
        raise DiskError(
            f"cannot attach {path} to a loop device: offset {offset} and sizelimit {sizelimit} "
            "must not be negative"
        )
    argv: list[str] = ["losetup", "--find", "--show"]
    if read_only:
        argv.append("--read-only")
    if offset:
        argv += ["--offset", str(offset)]
    if sizelimit:
        argv += ["--sizelimit", str(sizelimit)]
    if partscan:
        argv.append("--partscan")
    if sector_size:
        argv += ["--sector-size", str(sector_size)]
    argv.append(os.fspath(path))
    try:
        dev = Path(run_text(argv).strip())
    except CommandError as exc:
        raise DiskError(
            f"cannot attach {path} to a loop device: {exc.stderr or exc.message}",
            hint="loop devices need root and the loop kernel module",
        ) from exc
    logger.debug("attached %s to %s (offset=%d sizelimit=%d ro=%s)", path, dev, offset, sizelimit, read_only)
    holder = _hold_autoclear(dev)
    try:
        yield dev
    finally:
        if _partition_paths(dev):
            run(["partx", "-d", os.fspath(dev)], check=False)
        if holder is not None:
            os.close(holder)
        detach(dev)


def _hold_autoclear(dev: Path) -> int | None:
    """Open ``dev`` and flag it autoclear; the descriptor keeps it attached until closed (or killed)."""
    try:
        fd = os.open(dev, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        logger.warning("cannot open %s to make it autoclear: %s", dev, exc.strerror)
        return None
    try:
        info = bytearray(LOOP_INFO64_SIZE)
        fcntl.ioctl(fd, LOOP_GET_STATUS64, info)
        (flags,) = struct.unpack_from("<I", info, LO_FLAGS_AT)
        struct.pack_into("<I", info, LO_FLAGS_AT, flags | LO_FLAGS_AUTOCLEAR)
        fcntl.ioctl(fd, LOOP_SET_STATUS64, info)
    except OSError as exc:
        logger.warning("cannot make %s autoclear: %s", dev, exc.strerror)
    return fd


def _attached(dev: Path) -> bool:
    return (Path("/sys/class/block") / dev.name / "loop" / "backing_file").exists()


def detach(dev: Path) -> None:
    """Remove partition devices we may have added with partx, then detach ``dev``; retry briefly if busy."""
    if _partition_paths(dev):
        run(["partx", "-d", os.fspath(dev)], check=False)
    last = ""
    for attempt in range(20):
        if not _attached(dev):
            logger.debug("detached %s (autoclear)", dev)
            return
        proc = run(["losetup", "--detach", os.fspath(dev)], check=False)
        if proc.returncode == 0:
            logger.debug("detached %s", dev)
            return
        last = (proc.stderr or b"").decode(errors="replace").strip()
        time.sleep(0.05 * (attempt + 1))
    logger.warning("could not detach loop device %s: %s", dev, last)


def _partition_paths(dev: Path) -> list[Path]:
    """Partition devices of ``dev`` the kernel currently knows about (from sysfs), sorted by number."""
    name = dev.name
    sysdir = Path("/sys/class/block") / name
    found: list[tuple[int, Path]] = []
    if not sysdir.is_dir():
        return []
    for child in sysdir.iterdir():
        m = re.fullmatch(re.escape(name) + r"p?(\d+)", child.name)
        if m and (child / "partition").exists():
            found.append((int(m.group(1)), dev.parent / child.name))
    return [p for _, p in sorted(found)]


def _reread(dev: Path) -> bool:
    try:
        fd = os.open(dev, os.O_RDONLY)
    except OSError as exc:
        raise DiskError(f"cannot open {dev} to re-read its partition table: {exc.strerror}") from exc
    try:
        fcntl.ioctl(fd, BLKRRPART)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def partitions(dev: Path, *, expected: int | None = None) -> list[Path]:
    """Make ``DEVpN`` match the partition table on ``dev`` and return their paths (sorted by number).

    First the kernel's own re-read (``BLKRRPART``, what ``blockdev --rereadpt`` does); when the kernel
    parses no tables (or the ioctl is refused) ``partx -u`` creates/updates the devices instead.
    ``expected`` (a count) makes the call wait briefly for device nodes to appear.
    """
    dev = Path(dev)
    if not _reread(dev) or (expected and len(_partition_paths(dev)) < expected):
        logger.debug("BLKRRPART did not give partitions of %s; using partx -u", dev)
        proc = run(["partx", "-u", os.fspath(dev)], check=False)
        if proc.returncode != 0:
            stderr = (proc.stderr or b"").decode(errors="replace").strip()
            if "failed to read partition table" not in stderr:
                logger.debug("partx -u %s: %s", dev, stderr)
    deadline = time.monotonic() + _PART_WAIT_SECONDS
    while True:
        parts = _partition_paths(dev)
        ready = [p for p in parts if p.exists()]
        if len(ready) == len(parts) and (expected is None or len(parts) >= expected):
            return parts
        if time.monotonic() > deadline:
            raise DiskError(
                f"partition devices of {dev} did not appear: expected {expected or len(parts)}, "
                f"found {len(ready)}",
                hint="check the partition table with: sfdisk --list " + os.fspath(dev),
            )
        time.sleep(0.05)
