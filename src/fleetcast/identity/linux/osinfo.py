"""What capture records about each Linux root of a disk, read-only: the manifest's per-partition ``os_info``
``{"os": "linux", "network_stack": ..., "name": ...}`` -- the server's plan refuses a static IP for an image
whose Linux root has no network stack fleetcast can configure (server/plan.check_static_ip), before any
disk is written.

``probe`` runs the reading in a child process in a mount namespace of its own (``unshare -m
--propagation private python -m fleetcast.identity.linux.osinfo DISK``, JSON on its output), in its own
session: its mounts are visible to nobody else and vanish with it, even when the capture is killed with
SIGKILL (the loop devices are attached read-only and detach themselves when their mount is gone).

Every ext partition (or a bare ext disk) is attached read-only through a loop device with offset/sizelimit
and mounted ``ro,noload`` (no journal replay: nothing is written, the loop device is read-only anyway). A
partition with ``/etc/os-release`` (or ``/usr/lib/os-release``) is a Linux root: its ``network_stack`` is
``identity.linux.network.detect``'s answer ("netplan", "networkmanager", "systemd-networkd", "ifupdown", or
None), ``name`` its os-release PRETTY_NAME. Partitions without one (a separate /home, /boot) give nothing;
one that cannot be mounted gives nothing either (a warning is logged): a missing ``os_info`` never refuses
a deployment.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

from fleetcast.errors import FleetcastError

logger = logging.getLogger(__name__)

MAX_TEXT = 255
PROBE_TIMEOUT = 300.0
OS_RELEASE = ("etc/os-release", "usr/lib/os-release")


def facts(root: Path) -> dict[str, Any] | None:
    """The ``os_info`` of the mounted filesystem ``root``; None when it is not a Linux root."""
    from fleetcast.identity.linux import files
    from fleetcast.identity.linux.network import detect

    text = next((t for rel in OS_RELEASE if (t := files.read(root, rel)) is not None), None)
    if text is None:
        return None
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip().isidentifier():
            try:
                parts = shlex.split(value, comments=False, posix=True)
            except ValueError:
                continue
            fields[key.strip()] = " ".join(parts)
    stack = detect(root)
    info: dict[str, Any] = {"os": "linux", "network_stack": stack.value if stack is not None else None}
    name = fields.get("PRETTY_NAME") or fields.get("NAME")
    if name:
        info["name"] = name[:MAX_TEXT]
    return info


def probe(disk: Path) -> dict[int, dict[str, Any]]:
    """Partition number (0: a bare filesystem) -> ``os_info`` for every Linux root on ``disk``, read by a
    child process whose mounts are private to it and end with it."""
    from fleetcast.identity.osinfo import run_probe

    unshare = shutil.which("unshare")
    if unshare is None:
        logger.info("%s: no unshare(1) for a private mount namespace; no Linux os_info", disk)
        return {}
    argv = [unshare, "-m", "--propagation", "private", sys.executable, "-m", __name__, os.fspath(disk)]
    return run_probe(argv, disk, "Linux", PROBE_TIMEOUT)


def _ext_volumes(disk: Path) -> list[tuple[int, int, int]]:
    """(partition number, offset, size) of every ext filesystem on ``disk`` (0: the whole disk)."""
    from fleetcast.disk.filesystems import FsType, detect
    from fleetcast.disk.partitions import read_table

    table = read_table(disk)
    ranges = [(p.number, p.start * table.sector_size, p.size * table.sector_size) for p in table.partitions]
    with open(disk, "rb") as f:
        if not ranges and table.label == "none":
            ranges = [(0, 0, os.lseek(f.fileno(), 0, os.SEEK_END))]
        return [(n, off, size) for n, off, size in ranges if detect(f, off, size) == FsType.EXT]


def probe_here(disk: Path) -> dict[int, dict[str, Any]]:
    """``probe``'s work, in this process (mount it in a private mount namespace: see ``probe``)."""
    from fleetcast.disk.filesystems import FsType
    from fleetcast.disk.loop import attach
    from fleetcast.disk.mount import mounted

    try:
        volumes = _ext_volumes(disk)
    except (FleetcastError, OSError) as exc:
        logger.debug("%s: no partition table read (%s); no Linux os_info", disk, exc)
        return {}
    out: dict[int, dict[str, Any]] = {}
    for number, offset, size in volumes:
        try:
            with (
                attach(disk, read_only=True, offset=offset, sizelimit=size) as dev,
                mounted(dev, FsType.EXT, read_only=True) as root,
            ):
                info = facts(root)
        except (FleetcastError, OSError) as exc:
            text = exc.message if isinstance(exc, FleetcastError) else str(exc)
            logger.warning("%s partition %d: not readable for os_info: %s", disk, number, text)
            continue
        if info is not None:
            out[number] = info
    return out


def main(argv: list[str]) -> int:
    from fleetcast.identity.osinfo import child_main

    return child_main(argv, "linux", probe_here)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
