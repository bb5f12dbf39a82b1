"""Partition tables: read with ``sfdisk --json`` (read-only), written back with an sfdisk script.

A written table is identical to the one read: GPT disk GUID, partition GUIDs, names, types, attributes,
first/last usable LBA and entry-array length; MBR disk id, types and bootable flags. Partition numbers are
kept too (gaps in GPT numbering, logical partitions 5+), because each script line names its partition.

MBR with logical partitions: sfdisk lays out an EBR chain its own way and refuses logical partitions
closer than its grain to the previous one (parted makes such tables). So ``read_table`` also reads where
each EBR (extended boot record) sits (``PartitionTable.ebrs``, one sector number per logical partition,
in chain order) and ``write_table`` writes the MBR and that EBR chain itself, sector by sector, keeping
the MBR's boot code. A table read before ``ebrs`` existed is written by sfdisk, and by our own writer
(each EBR in the sector before its partition) when sfdisk refuses it.

Stale signatures: an MBR written onto a disk that held a GPT leaves GPT headers that tools still see;
``write_table`` zeroes a GPT header at LBA 1 and in the last sector when the new table is not a GPT.

4Kn disks as files: a plain file's sector size comes from ``device.file_sector_size``; sfdisk cannot be
told a sector size for a file, so tables with other than 512-byte sectors on a file are read and written
through a loop device with that logical sector size, and ``write_table`` declares the size on the file.

Writing onto a LARGER target: sfdisk always puts the GPT backup header in the last sector of the target.
``write_table(..., fit_to_disk=False)`` keeps the source's ``last_lba`` (an exact copy, the space after it
stays unusable); ``fit_to_disk=True`` leaves ``last-lba`` out so sfdisk extends the usable area to the end
of the target -- what ``disk.grow`` does before growing the last partition.

``label == "none"`` describes an unpartitioned disk (a bare filesystem); it has no partitions and the
whole disk is the filesystem.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetcast.disk import loop, mbr
from fleetcast.disk.device import (
    FILE_SECTOR_SIZE,
    GPT_SIGNATURE,
    declare_sector_size,
    declared_sector_size,
    inspect,
)
from fleetcast.errors import CommandError, DiskError
from fleetcast.run import run, run_text

logger = logging.getLogger(__name__)

LABELS = ("gpt", "dos", "none")
_GUID_RE = re.compile(r"[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}")
_DOS_ID_RE = re.compile(r"0x[0-9a-f]{8}")
_DOS_TYPE_RE = re.compile(r"[0-9a-f]{1,2}")
_NO_TABLE = "does not contain a recognized partition table"
GPT_DEFAULT_ENTRIES = 128
EXTENDED_TYPES = ("5", "f", "85")
MBR_SIGNATURE = b"\x55\xaa"


class TableError(DiskError):
    """A partition-table description (what a manifest's "table" holds) that is not valid; the store
    reports it as a ManifestError."""


@dataclass(frozen=True)
class Partition:
    number: int
    start: int  # sectors
    size: int  # sectors
    type: str  # GPT type GUID (upper case) or MBR type in hex without 0x ("83", "7", "ef")
    uuid: str = ""  # GPT partition GUID; "" on MBR
    name: str = ""  # GPT partition name; "" on MBR
    attrs: str = ""  # GPT attributes as sfdisk spells them ("RequiredPartition GUID:63"); "" when none
    bootable: bool = False  # MBR active flag

    @property
    def end(self) -> int:
        """First sector after the partition."""
        return self.start + self.size

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "start": self.start,
            "size": self.size,
            "type": self.type,
            "uuid": self.uuid,
            "name": self.name,
            "attrs": self.attrs,
            "bootable": self.bootable,
        }


@dataclass(frozen=True)
class PartitionTable:
    label: str  # "gpt" | "dos" | "none"
    id: str  # GPT disk GUID, MBR "0x1234abcd", "" for none
    sector_size: int
    first_lba: int | None = None  # GPT only
    last_lba: int | None = None  # GPT only
    table_length: int | None = None  # GPT only: number of entries in the partition array
    partitions: tuple[Partition, ...] = field(default_factory=tuple)
    ebrs: tuple[int, ...] = ()  # MBR only: sector of each logical partition's EBR, in chain order

    def partition(self, number: int) -> Partition:
        for part in self.partitions:
            if part.number == number:
                return part
        raise DiskError(
            f"partition table has no partition {number}; it has "
            f"{', '.join(str(p.number) for p in self.partitions) or 'none'}"
        )

    @property
    def end_sector(self) -> int:
        """First sector after the last partition (0 when there are none)."""
        return max((p.end for p in self.partitions), default=0)

    def min_disk_bytes(self) -> int:
        """Smallest disk that can hold this table's partitions (plus the GPT backup header and array)."""
        end = self.end_sector
        if self.label == "gpt":
            entries = self.table_length or GPT_DEFAULT_ENTRIES
            array_sectors = -(-entries * 128 // self.sector_size)
            end = max(end, (self.last_lba or 0) + 1) + array_sectors + 1
        return end * self.sector_size

    @property
    def logical_partitions(self) -> tuple[Partition, ...]:
        """MBR logical partitions (number 5 and up), in chain order."""
        if self.label != "dos":
            return ()
        return tuple(sorted((p for p in self.partitions if p.number > 4), key=lambda p: p.number))

    @property
    def extended(self) -> Partition | None:
        """The MBR extended partition (the container of the logical ones), if any."""
        if self.label != "dos":
            return None
        return next((p for p in self.partitions if p.number <= 4 and p.type in EXTENDED_TYPES), None)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "label": self.label,
            "id": self.id,
            "sector_size": self.sector_size,
            "first_lba": self.first_lba,
            "last_lba": self.last_lba,
            "table_length": self.table_length,
            "partitions": [p.to_dict() for p in self.partitions],
        }
        if self.ebrs:
            d["ebrs"] = list(self.ebrs)
        return d

    @classmethod
    def from_dict(cls, d: object) -> PartitionTable:
        """Validate and build; raises TableError naming the field, what was expected and what was found."""
        d = _expect_dict(d, "partition table", TABLE_KEYS, optional=("ebrs",))
        label = d["label"]
        if label not in LABELS:
            raise TableError(f"partition table: 'label' must be one of gpt, dos, none; found {label!r}")
        sector_size = _expect_int(d["sector_size"], "partition table: 'sector_size'", minimum=512)
        if sector_size & (sector_size - 1) or sector_size > 65536:
            raise TableError(
                f"partition table: 'sector_size' must be a power of two from 512 to 65536; "
                f"found {sector_size}"
            )
        disk_id = _expect_str(d["id"], "partition table: 'id'")
        first = _expect_opt_int(d["first_lba"], "partition table: 'first_lba'")
        last = _expect_opt_int(d["last_lba"], "partition table: 'last_lba'")
        length = _expect_opt_int(d["table_length"], "partition table: 'table_length'")
        if label == "gpt":
            if not _GUID_RE.fullmatch(disk_id):
                raise TableError(
                    f"partition table: a GPT disk 'id' must be an upper-case GUID; found {disk_id!r}"
                )
            if first is None or last is None or last < first:
                raise TableError(
                    f"partition table: a GPT needs first_lba <= last_lba; "
                    f"found first_lba={first}, last_lba={last}"
                )
        elif label == "dos":
            if not _DOS_ID_RE.fullmatch(disk_id):
                raise TableError(
                    f"partition table: an MBR disk 'id' must look like 0x1234abcd; found {disk_id!r}"
                )
            if first is not None or last is not None or length is not None:
                raise TableError("partition table: first_lba, last_lba and table_length must be null for MBR")
        elif disk_id or first is not None or last is not None or length is not None:
            raise TableError("partition table: label 'none' must have an empty id and null LBAs")
        raw_parts = d["partitions"]
        if not isinstance(raw_parts, list):
            raise TableError(
                f"partition table: 'partitions' must be a list; found {type(raw_parts).__name__}"
            )
        if label == "none" and raw_parts:
            raise TableError(f"partition table: label 'none' must have no partitions; found {len(raw_parts)}")
        parts = tuple(_partition_from_dict(p, i, label) for i, p in enumerate(raw_parts))
        numbers = [p.number for p in parts]
        if len(set(numbers)) != len(numbers):
            raise TableError(f"partition table: partition numbers repeat: {numbers}")
        if numbers != sorted(numbers):
            raise TableError(f"partition table: partitions must be sorted by number; found {numbers}")
        ebrs = _ebrs_from_dict(d.get("ebrs", []), label, parts)
        return cls(label, disk_id, sector_size, first, last, length, parts, ebrs)


TABLE_KEYS = ("label", "id", "sector_size", "first_lba", "last_lba", "table_length", "partitions")
PARTITION_KEYS = ("number", "start", "size", "type", "uuid", "name", "attrs", "bootable")


def _expect_dict(
    d: object, what: str, keys: tuple[str, ...], optional: tuple[str, ...] = ()
) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise TableError(f"{what} must be an object; found {type(d).__name__}")
    missing = [k for k in keys if k not in d]
    if missing:
        raise TableError(f"{what} is missing {', '.join(repr(k) for k in missing)}")
    extra = sorted(str(k) for k in d if k not in keys and k not in optional)
    if extra:
        raise TableError(f"{what} has unknown fields {', '.join(repr(k) for k in extra)}")
    return d


def _expect_int(v: object, what: str, *, minimum: int = 0) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise TableError(f"{what} must be an integer; found {v!r}")
    if v < minimum:
        raise TableError(f"{what} must be at least {minimum}; found {v}")
    return v


def _expect_opt_int(v: object, what: str) -> int | None:
    return None if v is None else _expect_int(v, what)


def _expect_str(v: object, what: str) -> str:
    if not isinstance(v, str):
        raise TableError(f"{what} must be a string; found {v!r}")
    return v


def _ebrs_from_dict(raw: object, label: str, parts: tuple[Partition, ...]) -> tuple[int, ...]:
    if not isinstance(raw, list):
        raise TableError(f"partition table: 'ebrs' must be a list; found {type(raw).__name__}")
    ebrs = tuple(_expect_int(v, f"partition table: ebrs[{i}]", minimum=1) for i, v in enumerate(raw))
    logicals = sorted((p for p in parts if p.number > 4), key=lambda p: p.number)
    if ebrs and (label != "dos" or len(ebrs) != len(logicals)):
        raise TableError(
            f"partition table: 'ebrs' needs one sector per MBR logical partition ({len(logicals)}); "
            f"found {len(ebrs)} on label {label!r}"
        )
    for lba, p in zip(ebrs, logicals, strict=False):
        if lba >= p.start:
            raise TableError(
                f"partition table: the EBR of partition {p.number} at sector {lba} must lie before "
                f"its start {p.start}"
            )
    return ebrs


def _partition_from_dict(d: object, index: int, label: str) -> Partition:
    what = f"partition table: partitions[{index}]"
    d = _expect_dict(d, what, PARTITION_KEYS)
    number = _expect_int(d["number"], f"{what}.number", minimum=1)
    start = _expect_int(d["start"], f"{what}.start", minimum=1)
    size = _expect_int(d["size"], f"{what}.size", minimum=1)
    ptype = _expect_str(d["type"], f"{what}.type")
    uuid = _expect_str(d["uuid"], f"{what}.uuid")
    name = _expect_str(d["name"], f"{what}.name")
    attrs = _expect_str(d["attrs"], f"{what}.attrs")
    bootable = d["bootable"]
    if not isinstance(bootable, bool):
        raise TableError(f"{what}.bootable must be true or false; found {bootable!r}")
    if label == "gpt":
        if not _GUID_RE.fullmatch(ptype):
            raise TableError(f"{what}.type must be an upper-case GUID on GPT; found {ptype!r}")
        if not _GUID_RE.fullmatch(uuid):
            raise TableError(f"{what}.uuid must be an upper-case GUID on GPT; found {uuid!r}")
        if bootable:
            raise TableError(f"{what}.bootable must be false on GPT (use attrs)")
        if "\n" in name or len(name) > 36:
            raise TableError(f"{what}.name must be one line of at most 36 characters; found {name!r}")
        if "\n" in attrs or '"' in attrs:
            raise TableError(f"{what}.attrs must not contain quotes or newlines; found {attrs!r}")
    else:
        if not _DOS_TYPE_RE.fullmatch(ptype):
            raise TableError(f"{what}.type must be a hex byte like '83' on MBR; found {ptype!r}")
        if uuid or name or attrs:
            raise TableError(f"{what}: uuid, name and attrs must be empty on MBR")
    return Partition(number, start, size, ptype, uuid, name, attrs, bootable)


def _gpt_table_length(path: Path, sector_size: int) -> int | None:
    """Number of partition entries from the primary GPT header (sfdisk's JSON leaves it out)."""
    try:
        with open(path, "rb") as f:
            f.seek(sector_size)
            header = f.read(92)
    except OSError as exc:
        raise DiskError(f"cannot read the GPT header of {path}: {exc.strerror}") from exc
    if len(header) < 92 or header[:8] != b"EFI PART":
        return None
    (entries,) = struct.unpack_from("<I", header, 80)
    return int(entries)


def _number_from_node(node: str, device: str) -> int:
    rest = node[len(device) :] if node.startswith(device) else node
    m = re.search(r"(\d+)$", rest)
    if not m:
        raise DiskError(f"cannot tell the partition number of {node!r} on {device!r}")
    return int(m.group(1))


@contextlib.contextmanager
def _sfdisk_device(path: Path, sector_size: int, *, read_only: bool) -> Iterator[Path]:
    """``path`` itself, or for a plain file with other than 512-byte sectors a loop device with them
    (sfdisk takes a file's sectors to be 512 bytes)."""
    if sector_size == FILE_SECTOR_SIZE or not path.is_file():
        yield path
        return
    with loop.attach(path, read_only=read_only, sector_size=sector_size) as dev:
        yield dev


def read_table(path: Path) -> PartitionTable:
    """The partition table of a disk or disk-image file (never writes: sfdisk --json opens it read-only)."""
    path = Path(path)
    info = inspect(path)
    with _sfdisk_device(path, info.logical_sector_size, read_only=True) as dev:
        try:
            out = run_text(["sfdisk", "--json", os.fspath(dev)])
        except CommandError as exc:
            if _NO_TABLE in exc.stderr:
                return PartitionTable("none", "", info.logical_sector_size)
            raise DiskError(
                f"cannot read the partition table of {path}: {exc.stderr or exc.message}"
            ) from exc
        try:
            pt = json.loads(out)["partitiontable"]
        except (ValueError, KeyError, TypeError) as exc:
            raise DiskError(f"sfdisk gave unreadable JSON for {path}: {out[:200]!r}") from exc
        if pt.get("label") == "dos" and _bare_filesystem(path):
            # A FAT or NTFS boot sector ends in 55 AA like an MBR; sfdisk then reports an empty "dos" table.
            return PartitionTable("none", "", info.logical_sector_size)
        table = parse_sfdisk_json(pt, dev)
    if table.label == "dos":
        _refuse_protective_mbr(path, table)
        table = dataclasses.replace(table, ebrs=mbr.read_ebrs(path, table))
    return table


def _refuse_protective_mbr(path: Path, table: PartitionTable) -> None:
    """A GPT disk whose GPT sfdisk did not see (another sector size) shows as one type-ee partition."""
    if [p.type for p in table.partitions] != ["ee"]:
        return
    ss = table.sector_size
    try:
        with open(path, "rb") as f:
            found = [s for s in (512, 4096) if s != ss and _signature_at(f, s)]
    except OSError as exc:
        raise DiskError(f"cannot read {path}: {exc.strerror}") from exc
    if found:
        raise DiskError(
            f"disk {path} has a GPT for {found[0]}-byte sectors but is read with {ss}-byte sectors",
            hint=f"attach it as a {found[0]}-byte-sector disk: losetup --sector-size {found[0]} -f {path}",
        )
    raise DiskError(
        f"disk {path} has a protective MBR (one type-ee partition) but no GPT fleetcast can read",
        hint=f"check the disk with: sfdisk --verify {path}",
    )


def _signature_at(f: Any, sector_size: int) -> bool:
    f.seek(sector_size)
    return bool(f.read(len(GPT_SIGNATURE)) == GPT_SIGNATURE)


def _bare_filesystem(path: Path) -> bool:
    from fleetcast.disk.filesystems import FsType, detect

    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            return detect(f, 0, size) in (FsType.FAT, FsType.NTFS, FsType.BITLOCKER)
    except OSError as exc:
        raise DiskError(f"cannot read {path}: {exc.strerror}") from exc


def parse_sfdisk_json(pt: dict[str, Any], path: Path) -> PartitionTable:
    """Build a PartitionTable from the ``partitiontable`` object of ``sfdisk --json``."""
    try:
        return _parse_sfdisk_json(pt, path)
    except KeyError as exc:
        raise DiskError(f"sfdisk's description of {path} lacks the field {exc.args[0]!r}") from exc
    except (ValueError, TypeError, AttributeError) as exc:
        raise DiskError(f"sfdisk's description of {path} has an unexpected value: {exc}") from exc


def _parse_sfdisk_json(pt: dict[str, Any], path: Path) -> PartitionTable:
    label = pt.get("label")
    if label not in ("gpt", "dos"):
        raise DiskError(f"partition table of {path} is {label!r}; fleetcast handles gpt and dos (MBR)")
    unit = pt.get("unit", "sectors")
    if unit != "sectors":
        raise DiskError(f"sfdisk reported {path} in unit {unit!r}; expected sectors")
    sector_size = int(pt.get("sectorsize", 512))
    device = str(pt.get("device", os.fspath(path)))
    parts: list[Partition] = []
    for p in pt.get("partitions", []):
        number = _number_from_node(str(p["node"]), device)
        if label == "gpt":
            parts.append(
                Partition(
                    number,
                    int(p["start"]),
                    int(p["size"]),
                    str(p["type"]).upper(),
                    str(p.get("uuid", "")).upper(),
                    str(p.get("name", "")),
                    str(p.get("attrs", "")),
                )
            )
        else:
            parts.append(
                Partition(
                    number,
                    int(p["start"]),
                    int(p["size"]),
                    str(p["type"]).lower(),
                    bootable=bool(p.get("bootable")),
                )
            )
    parts.sort(key=lambda part: part.number)
    if label == "gpt":
        return PartitionTable(
            "gpt",
            str(pt["id"]).upper(),
            sector_size,
            int(pt["firstlba"]),
            int(pt["lastlba"]),
            _gpt_table_length(path, sector_size),
            tuple(parts),
        )
    return PartitionTable("dos", str(pt["id"]).lower(), sector_size, partitions=tuple(parts))


def _node(path: Path, number: int) -> str:
    base = os.fspath(path)
    return f"{base}{'p' if base[-1:].isdigit() else ''}{number}"


def sfdisk_script(
    table: PartitionTable, target: Path, *, fit_to_disk: bool = False
) -> tuple[str, list[Partition]]:
    """The sfdisk script for ``table`` on ``target`` and the partitions whose names must be set separately
    (names with a double quote, which the script syntax cannot carry)."""
    lines = [
        f"label: {table.label}",
        f"label-id: {table.id}",
        "unit: sectors",
        f"sector-size: {table.sector_size}",
    ]
    if table.label == "gpt":
        if table.table_length is not None:
            lines.append(f"table-length: {table.table_length}")
        lines.append(f"first-lba: {table.first_lba}")
        if not fit_to_disk:
            lines.append(f"last-lba: {table.last_lba}")
    lines.append("")
    late_names: list[Partition] = []
    for p in table.partitions:
        fields = [f"start={p.start}", f"size={p.size}", f"type={p.type}"]
        if table.label == "gpt":
            fields.append(f"uuid={p.uuid}")
            if p.name and '"' not in p.name:
                fields.append(f'name="{p.name}"')
            elif p.name:
                late_names.append(p)
            if p.attrs:
                fields.append(f'attrs="{p.attrs}"')
        elif p.bootable:
            fields.append("bootable")
        lines.append(f"{_node(target, p.number)} : {', '.join(fields)}")
    return "\n".join(lines) + "\n", late_names


def write_table(path: Path, table: PartitionTable, *, fit_to_disk: bool = False) -> None:
    """Write ``table`` onto ``path`` (a disk or image file at least ``table.min_disk_bytes()`` large).

    Never wipes filesystem signatures (restore and grow write around existing data), but zeroes GPT
    headers a non-GPT table does not own. For label "none" any old GPT/MBR is erased so the bare
    filesystem restored next is what tools see. A plain file takes the table's sector size (declared on
    the file); a block device must already have it.
    """
    path = Path(path)
    info = inspect(path)
    if info.logical_sector_size != table.sector_size and info.is_block:
        raise DiskError(
            f"disk {path} has {info.logical_sector_size}-byte logical sectors but the partition "
            f"table uses {table.sector_size}-byte sectors",
            hint="restore onto a disk with the same logical sector size",
        )
    if not info.is_block and (
        table.sector_size != FILE_SECTOR_SIZE or declared_sector_size(path) is not None
    ):
        declare_sector_size(path, table.sector_size)
    need = table.min_disk_bytes()
    if info.size < need:
        raise DiskError(
            f"disk {path} is {info.size} bytes but the partition table needs at least {need} bytes"
        )
    if table.label == "none":
        _erase_table(path, info.size, table.sector_size)
        return
    if table.label == "dos":
        mbr.clear_stale_gpt(path, info.size, table.sector_size)
        if table.ebrs:
            mbr.write_dos(path, table, table.ebrs)
            _check_written(path, table)
            return
    try:
        _write_sfdisk(path, table, fit_to_disk=fit_to_disk)
    except DiskError:
        if table.label != "dos" or not table.logical_partitions:
            raise
        logger.info("sfdisk refused the MBR of %s; writing its EBR chain directly", path)
        mbr.write_dos(path, table, mbr.default_ebrs(table))
        _check_written(path, table)
        return
    logger.info("wrote %s partition table with %d partitions to %s", table.label, len(table.partitions), path)


def _write_sfdisk(path: Path, table: PartitionTable, *, fit_to_disk: bool) -> None:
    argv = [
        "sfdisk",
        "--quiet",
        "--no-reread",
        "--no-tell-kernel",
        "--wipe",
        "never",
        "--wipe-partitions",
        "never",
    ]
    with _sfdisk_device(path, table.sector_size, read_only=False) as dev:
        script, late_names = sfdisk_script(table, dev, fit_to_disk=fit_to_disk)
        try:
            run([*argv, os.fspath(dev)], input=script.encode())
            for p in late_names:
                run([*argv[:2], "--no-reread", "--part-label", os.fspath(dev), str(p.number), p.name])
        except CommandError as exc:
            raise DiskError(
                f"cannot write the partition table of {path}: {exc.stderr or exc.message}"
            ) from exc


def _check_written(path: Path, table: PartitionTable) -> None:
    """What sfdisk reads back from the MBR we wrote must be ``table``."""
    back = read_table(path)
    if (back.label, back.id, back.partitions) != (table.label, table.id, table.partitions):
        raise DiskError(
            f"the MBR written to {path} reads back differently: expected {table.to_dict()['partitions']}, "
            f"found {back.to_dict()['partitions']}"
        )
    logger.info("wrote dos partition table with %d partitions to %s", len(table.partitions), path)


def _erase_table(path: Path, size: int, sector_size: int) -> None:
    """Zero the first and last 34 sectors (MBR, both GPT headers and arrays)."""
    span = 34 * sector_size
    zeros = bytes(min(span, size))
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, zeros, 0)
            tail = max(size - span, len(zeros))
            if size > tail:
                os.pwrite(fd, zeros[: size - tail], tail)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise DiskError(f"cannot erase the old partition table of {path}: {exc.strerror}") from exc
