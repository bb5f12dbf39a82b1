"""The Windows installations on an agent's disks, read-only: what its inventory reports for the
duplicate-SID audit (issue 13).

Every NTFS partition of every disk (or a disk that is one bare NTFS volume) is attached read-only
through a loop device with offset/sizelimit (kernels that parse no partition tables too) and mounted
read-only with ntfs-3g; a volume with ``Windows/System32/config`` gives one ``Found``: machine SID,
computer name, version and domain (``sidaudit.inventory``). A volume that cannot be read gives a
``Found`` with ``error`` set, so the audit can say what it could not check. Nothing is written:
dirty hives are read through a replayed copy in a temporary folder (``inspect``).

Mounting costs a fraction of a second per volume, and the agent sends its inventory every minute, so
results are cached per (disk, partition, offset, size) until ``invalidate()`` -- which the agent
calls after every task, as a task may have rewritten the disk.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from fleetcast.errors import FleetcastError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Found:
    """One Windows volume (``protocol.WindowsInstall``); ``partition`` 0 is a bare volume."""

    disk: str
    partition: int
    machine_sid: str | None = None
    computer_name: str = ""
    version: str = ""
    domain: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Volume:
    disk: Path
    number: int
    offset: int
    size: int
    fstype: str


_Key = tuple[str, int, int, int]
_cache: dict[_Key, Found | None] = {}
_lock = threading.Lock()


def invalidate() -> None:
    """Forget every cached result (a task may have rewritten a disk)."""
    with _lock:
        _cache.clear()


def _volumes(disk: Path) -> list[_Volume]:
    from fleetcast.disk.filesystems import FsType, detect
    from fleetcast.disk.partitions import read_table

    table = read_table(disk)
    ranges = [(p.number, p.start * table.sector_size, p.size * table.sector_size) for p in table.partitions]
    found: list[_Volume] = []
    with open(disk, "rb") as f:
        if not ranges and table.label == "none":
            ranges = [(0, 0, os.lseek(f.fileno(), 0, os.SEEK_END))]
        for number, offset, size in ranges:
            fstype = detect(f, offset, size)
            if fstype in (FsType.NTFS, FsType.BITLOCKER):
                found.append(_Volume(disk, number, offset, size, str(fstype)))
    return found


def _read(vol: _Volume) -> Found | None:
    """The installation on one volume, None when the volume holds no Windows."""
    from fleetcast.disk.filesystems import FsType
    from fleetcast.disk.loop import attach
    from fleetcast.disk.mount import mounted
    from fleetcast.identity.windows.layout import CONFIG, find
    from fleetcast.identity.windows.sidaudit import inventory

    where = Found(str(vol.disk), vol.number)
    if vol.fstype == FsType.BITLOCKER:
        return replace(where, error="BitLocker-encrypted volume: its machine SID cannot be read offline")
    error: str | None = None
    try:
        with (
            attach(vol.disk, read_only=True, offset=vol.offset, sizelimit=vol.size) as dev,
            mounted(dev, FsType.NTFS, read_only=True) as root,
        ):
            if find(root, CONFIG) is None:
                return None
            # errors are caught inside the mount, so that no traceback keeps a file of it open
            try:
                inv = inventory(root)
            except FleetcastError as exc:
                error = exc.message.replace(f"{root}{os.sep}", "")
            except OSError as exc:
                error = str(exc).replace(f"{root}{os.sep}", "")
            gc.collect()
    except (FleetcastError, OSError) as exc:
        error = exc.message if isinstance(exc, FleetcastError) else str(exc)
    if error is not None:
        logger.warning("%s partition %d: Windows volume not readable: %s", vol.disk, vol.number, error)
        return replace(where, error=error)
    if not inv["machine_sid"]:
        return replace(where, computer_name=inv["computer_name"], version=inv["version"],
                       error="SAM holds no machine SID (Domains\\Account\\V)")  # fmt: skip
    return replace(where, machine_sid=inv["machine_sid"], computer_name=inv["computer_name"],
                   version=inv["version"], domain=inv["domain"])  # fmt: skip


def scan_disk(disk: Path) -> list[Found]:
    """The Windows installations on ``disk``; a disk whose table cannot be read has none (logged)."""
    try:
        vols = _volumes(disk)
    except (FleetcastError, OSError) as exc:
        logger.debug("%s: no partition table read (%s); no Windows volume reported", disk, exc)
        return []
    out: list[Found] = []
    for vol in vols:
        key = (str(vol.disk), vol.number, vol.offset, vol.size)
        with _lock:
            if key in _cache:
                cached = _cache[key]
                if cached is not None:
                    out.append(cached)
                continue
        found = _read(vol)
        with _lock:
            _cache[key] = found
        if found is not None:
            out.append(found)
    return out


def scan(disks: Iterable[Path]) -> list[Found]:
    """The Windows installations on all ``disks``, in their order."""
    return [f for d in disks for f in scan_disk(Path(d))]
