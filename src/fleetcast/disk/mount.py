"""Mount a filesystem on a device for a while, by the filesystem registry's ``mount_argv``; always unmount.

Callers that need a filesystem's files (personalization, the lab's sample disks) use this instead of
choosing the mount command by filesystem type themselves.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from fleetcast.disk import filesystems
from fleetcast.disk.filesystems import FsType
from fleetcast.errors import CommandError, FilesystemError
from fleetcast.run import run

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def mounted(dev: Path, fstype: FsType | str, *, read_only: bool = False) -> Iterator[Path]:
    """Mount ``dev`` (a device holding one ``fstype`` filesystem) on a new temporary directory."""
    fs = filesystems.get(fstype)
    mountpoint = Path(tempfile.mkdtemp(prefix="fleetcast-mnt-"))
    try:
        argv = fs.mount_argv(dev, mountpoint, read_only=read_only)
        try:
            run(argv)
        except CommandError as exc:
            raise FilesystemError(
                f"cannot mount the {fs.fstype} filesystem on {dev}: {exc.stderr or exc.message}"
            ) from exc
        try:
            yield mountpoint
        finally:
            if not read_only:
                run(["sync", "-f", os.fspath(mountpoint)], check=False)
            if run(["umount", os.fspath(mountpoint)], check=False).returncode != 0:
                logger.warning("umount %s failed; detaching it lazily", mountpoint)
                run(["umount", "-l", os.fspath(mountpoint)], check=False)
    finally:
        with contextlib.suppress(OSError):
            mountpoint.rmdir()
