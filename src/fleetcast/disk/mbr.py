"""MBR sectors written and read by fleetcast itself: the MBR's partition entries and the EBR chain.

sfdisk cannot write every valid MBR (it refuses logical partitions closer than its grain to the previous
one, and it picks EBR positions of its own), so a table with logical partitions is written here exactly
as it was read: each EBR at its recorded sector, holding its logical partition (start relative to the
EBR) and the link to the next EBR (start relative to the extended partition, type 05), as parted, fdisk
and sfdisk all lay it out. The MBR keeps the disk's boot code (bytes 0-439). CHS fields are computed
for a 255-head, 63-sector geometry (1023/254/63 beyond it); nothing modern reads them.

Also here: zeroing GPT headers an MBR does not own (stale signatures from the disk's previous table).
"""

from __future__ import annotations

import logging
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING

from fleetcast.disk.device import GPT_SIGNATURE
from fleetcast.errors import DiskError

if TYPE_CHECKING:
    from fleetcast.disk.partitions import Partition, PartitionTable

logger = logging.getLogger(__name__)

ENTRIES_AT = 446
DISK_ID_AT = 440
LINK_TYPE = 0x05
_HEADS, _SECTORS = 255, 63


def chs(lba: int) -> bytes:
    """The 3-byte CHS address of ``lba`` (head, sector | cylinder high bits, cylinder low byte)."""
    cyl, rem = divmod(lba, _HEADS * _SECTORS)
    if cyl > 1023:
        cyl, head, sector = 1023, 254, 63
    else:
        head, sector = rem // _SECTORS, rem % _SECTORS + 1
    return bytes((head, (sector & 0x3F) | ((cyl >> 2) & 0xC0), cyl & 0xFF))


def entry(boot: bool, ptype: int, start: int, size: int, abs_start: int) -> bytes:
    """One 16-byte partition entry; ``start`` as stored (relative), ``abs_start`` for the CHS fields."""
    last = abs_start + size - 1
    return (
        bytes((0x80 if boot else 0,))
        + chs(abs_start)
        + bytes((ptype,))
        + chs(last)
        + struct.pack("<II", start, size)
    )


def _entries(sector: bytes) -> list[tuple[int, int, int, int]]:
    """(boot flag, type, start, size) of the four entries of an MBR or EBR sector."""
    out = []
    for i in range(4):
        raw = sector[ENTRIES_AT + 16 * i : ENTRIES_AT + 16 * (i + 1)]
        start, size = struct.unpack_from("<II", raw, 8)
        out.append((raw[0], raw[4], start, size))
    return out


def _pread(fd: int, ss: int, lba: int, path: Path) -> bytes:
    try:
        data = os.pread(fd, ss, lba * ss)
    except OSError as exc:
        raise DiskError(f"cannot read sector {lba} of {path}: {exc.strerror}") from exc
    if len(data) < ss:
        raise DiskError(f"cannot read sector {lba} of {path}: the disk ends before it")
    return data


def read_ebrs(path: Path, table: PartitionTable) -> tuple[int, ...]:
    """The sector of each logical partition's EBR, following the chain on ``path``; () when there are no
    logical partitions or the chain does not match ``table`` (what sfdisk read)."""
    ext, logicals = table.extended, table.logical_partitions
    if ext is None or not logicals:
        return ()
    ss = table.sector_size
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise DiskError(f"cannot open {path} to read its EBR chain: {exc.strerror}") from exc
    found: list[int] = []
    try:
        lba = ext.start
        for part in logicals:
            sector = _pread(fd, ss, lba, path)
            first, link = _entries(sector)[:2]
            if sector[510:512] != b"\x55\xaa" or (lba + first[2], first[3]) != (part.start, part.size):
                logger.warning(
                    "EBR chain of %s does not match partition %d at sector %d; written by sfdisk",
                    path,
                    part.number,
                    lba,
                )
                return ()
            found.append(lba)
            lba = ext.start + link[2]
            if not link[2] or lba in found:
                break
    finally:
        os.close(fd)
    return tuple(found) if len(found) == len(logicals) else ()


def default_ebrs(table: PartitionTable) -> tuple[int, ...]:
    """EBR positions for a table read without them: the first at the extended partition's start, the
    others in the sector before their partition."""
    ext, logicals = table.extended, table.logical_partitions
    if ext is None:
        return ()
    return tuple(ext.start if i == 0 else p.start - 1 for i, p in enumerate(logicals))


def _check_chain(table: PartitionTable, ext: Partition, ebrs: tuple[int, ...], path: Path) -> None:
    prev_end = ext.start
    for lba, p in zip(ebrs, table.logical_partitions, strict=True):
        if not (prev_end <= lba < p.start) or p.end > ext.end:
            raise DiskError(
                f"cannot write the MBR of {path}: partition {p.number} (sectors {p.start}-{p.end - 1}) "
                f"needs its EBR at sector {lba} inside the extended partition "
                f"({ext.start}-{ext.end - 1}) after the previous logical partition (ends before {prev_end})"
            )
        prev_end = p.end


def write_dos(path: Path, table: PartitionTable, ebrs: tuple[int, ...]) -> None:
    """Write the MBR's entries and the EBR chain of ``table`` (EBRs at ``ebrs``) onto ``path``."""
    ss = table.sector_size
    ext = table.extended
    logicals = table.logical_partitions
    if logicals and ext is None:
        raise DiskError(f"cannot write the MBR of {path}: logical partitions but no extended partition")
    if ext is not None:
        _check_chain(table, ext, ebrs, path)
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError as exc:
        raise DiskError(f"cannot open {path} to write its MBR: {exc.strerror}") from exc
    try:
        mbr = bytearray(_pread(fd, ss, 0, path))
        mbr[DISK_ID_AT : DISK_ID_AT + 4] = struct.pack("<I", int(table.id, 16))
        mbr[ENTRIES_AT:510] = bytes(64)
        for p in table.partitions:
            if p.number <= 4:
                at = ENTRIES_AT + 16 * (p.number - 1)
                mbr[at : at + 16] = entry(p.bootable, int(p.type, 16), p.start, p.size, p.start)
        mbr[510:512] = b"\x55\xaa"
        sectors: list[tuple[int, bytes]] = [(0, bytes(mbr))]
        for i, (lba, p) in enumerate(zip(ebrs, logicals, strict=True)):
            assert ext is not None
            ebr = bytearray(ss)
            ebr[ENTRIES_AT : ENTRIES_AT + 16] = entry(
                p.bootable, int(p.type, 16), p.start - lba, p.size, p.start
            )
            if i + 1 < len(logicals):
                nxt, nxt_part = ebrs[i + 1], logicals[i + 1]
                ebr[ENTRIES_AT + 16 : ENTRIES_AT + 32] = entry(
                    False, LINK_TYPE, nxt - ext.start, nxt_part.end - nxt, nxt
                )
            ebr[510:512] = b"\x55\xaa"
            sectors.append((lba, bytes(ebr)))
        for lba, data in sectors:
            os.pwrite(fd, data, lba * ss)
        os.fsync(fd)
    except OSError as exc:
        raise DiskError(f"cannot write the MBR of {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)
    logger.info("wrote the MBR and %d EBRs of %s", len(ebrs), path)


def clear_stale_gpt(path: Path, size: int, ss: int) -> list[int]:
    """Zero GPT headers (LBA 1, last sector) on a disk whose new table is not a GPT; the sectors zeroed."""
    last = size // ss - 1
    zeroed: list[int] = []
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError as exc:
        raise DiskError(f"cannot open {path} to clear old GPT headers: {exc.strerror}") from exc
    try:
        for lba in (1, last):
            if lba > 0 and os.pread(fd, len(GPT_SIGNATURE), lba * ss) == GPT_SIGNATURE:
                os.pwrite(fd, bytes(ss), lba * ss)
                zeroed.append(lba)
        if zeroed:
            os.fsync(fd)
    except OSError as exc:
        raise DiskError(f"cannot clear the old GPT headers of {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)
    if zeroed:
        logger.info("cleared stale GPT headers of %s at sectors %s", path, zeroed)
    return zeroed
