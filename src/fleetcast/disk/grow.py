"""Grow a restored disk to fill a larger target: table, last partition, and its filesystem.

1. The table is rewritten without a pinned ``last-lba`` (``write_table(..., fit_to_disk=True)``), so the
   GPT usable area reaches the end of the target and the backup header sits in its last sector.
   Every GUID, name, type and attribute stays as it was; only the last partition's size changes.
2. The last partition (by position) grows to the end of the usable area, its end aligned down to 1 MiB.
   On MBR, a logical last partition grows its extended container with it; sizes stay below 2^32 sectors.
3. Its filesystem grows through a loop device limited to the partition (offset/sizelimit), by the
   filesystem registry's ``grow`` (ext2/3/4: ``e2fsck -fy`` then ``resize2fs``; NTFS: ``ntfsresize
   --force --force``); the others (FAT, XFS, swap, raw, BitLocker) are left as they are, with a logged
   warning and the registry's ``grow_note``.

A bare filesystem (label "none") grows to the whole target.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from fleetcast.disk import filesystems, loop
from fleetcast.disk.device import inspect
from fleetcast.disk.filesystems import FsType
from fleetcast.disk.partitions import (
    EXTENDED_TYPES,
    GPT_DEFAULT_ENTRIES,
    Partition,
    PartitionTable,
    read_table,
    write_table,
)
from fleetcast.errors import DiskError

logger = logging.getLogger(__name__)

ALIGN_BYTES = 1 << 20
MBR_MAX_SECTORS = (1 << 32) - 1


def last_usable_sector(table: PartitionTable, disk_sectors: int) -> int:
    """Last sector a partition may use on a disk of ``disk_sectors`` sectors."""
    if table.label == "gpt":
        entries = table.table_length or GPT_DEFAULT_ENTRIES
        array_sectors = -(-entries * 128 // table.sector_size)
        return disk_sectors - 1 - array_sectors - 1
    return min(disk_sectors, MBR_MAX_SECTORS) - 1


def grown_table(table: PartitionTable, disk_bytes: int) -> PartitionTable:
    """``table`` with its last partition (and on MBR its extended container) reaching the end of a disk
    of ``disk_bytes``, end aligned down to 1 MiB; unchanged when there is no room to grow."""
    if table.label == "none" or not table.partitions:
        return table
    ss = table.sector_size
    disk_sectors = disk_bytes // ss
    if disk_bytes < table.min_disk_bytes():
        raise DiskError(
            f"target is {disk_bytes} bytes but the partition table needs at least "
            f"{table.min_disk_bytes()} bytes"
        )
    align = max(ALIGN_BYTES // ss, 1)
    end = (last_usable_sector(table, disk_sectors) + 1) // align * align
    data_parts = [p for p in table.partitions if not (table.label == "dos" and p.type in EXTENDED_TYPES)]
    last = max(data_parts, key=lambda p: p.end)
    if end <= last.end:
        return table
    parts: list[Partition] = []
    for p in table.partitions:
        container = table.label == "dos" and p.type in EXTENDED_TYPES and p.start <= last.start < p.end
        parts.append(
            dataclasses.replace(p, size=end - p.start) if p.number == last.number or container else p
        )
    return dataclasses.replace(
        table,
        partitions=tuple(parts),
        last_lba=last_usable_sector(table, disk_sectors) if table.label == "gpt" else None,
    )


def grow_filesystem(target: Path, offset: int, size: int, fstype: FsType) -> str | None:
    """Grow the filesystem in [offset, offset+size) of ``target`` to fill it; a note when it is left as is."""
    fs = filesystems.get(fstype)
    if not fs.growable:
        logger.warning("grow: %s", fs.grow_note)
        return fs.grow_note
    with loop.attach(target, offset=offset, sizelimit=size) as dev:
        fs.grow(dev)
    logger.info("grew the %s filesystem at byte %d of %s to %d bytes", fstype, offset, target, size)
    return None


def grow_last_partition(target: Path, table: PartitionTable, fstype: FsType) -> PartitionTable:
    """Move the GPT backup header to the end of ``target``, grow the last partition and its filesystem.

    ``table`` is the table already written on ``target``; returns the table as now written. ``fstype``
    is the last partition's filesystem (for a bare filesystem: the disk's).
    """
    target = Path(target)
    info = inspect(target)
    if info.logical_sector_size != table.sector_size:
        raise DiskError(
            f"disk {target} has {info.logical_sector_size}-byte logical sectors but the partition table "
            f"uses {table.sector_size}-byte sectors"
        )
    if table.label == "none":
        grow_filesystem(target, 0, info.size, FsType(fstype))
        return table
    new = grown_table(table, info.size)
    write_table(target, new, fit_to_disk=True)
    written = read_table(target)
    ss = table.sector_size
    data_parts = [p for p in new.partitions if not (new.label == "dos" and p.type in EXTENDED_TYPES)]
    last = max(data_parts, key=lambda p: p.end)
    old = table.partition(last.number)
    if last.size > old.size:
        grow_filesystem(target, last.start * ss, last.size * ss, FsType(fstype))
    else:
        logger.info("grow: partition %d already ends at the end of %s", last.number, target)
    return written
