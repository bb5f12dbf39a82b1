"""NTFS: used clusters from $Bitmap (MFT record 6), plus the boot sector and its backup.

Read path: boot sector → $MFT's own data runs (record 0) → record 6's unnamed $DATA runs → the cluster
bitmap. Every MFT record read gets its update-sequence fixups applied and checked.

``check_capturable`` refuses volumes that are unsafe to copy by their allocation map: the dirty flag in
$Volume's VOLUME_INFORMATION (record 3), and a hibernated Windows: ``hiberfil.sys`` in the root directory
(record 5's $I30 index) whose data starts with "hibr"/"HIBR" (what ntfs-3g itself checks before mounting).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from fleetcast.disk.filesystems.base import (
    Extent,
    Filesystem,
    FsType,
    bitmap_runs,
    describe,
    merge,
    mount_command,
    read_at,
)
from fleetcast.errors import CommandError, FilesystemError
from fleetcast.run import run

logger = logging.getLogger(__name__)

OEM_ID = b"NTFS    "
WINDOWS_CONFIG = "Windows/System32/config"
MFT_RECORD_MFT = 0
MFT_RECORD_LOGFILE = 2
MFT_RECORD_VOLUME = 3
MFT_RECORD_ROOT = 5
MFT_RECORD_BITMAP = 6
AT_ATTRIBUTE_LIST = 0x20
AT_FILE_NAME = 0x30
AT_VOLUME_INFORMATION = 0x70
AT_DATA = 0x80
AT_INDEX_ROOT = 0x90
AT_INDEX_ALLOCATION = 0xA0
AT_END = 0xFFFFFFFF
VOLUME_IS_DIRTY = 0x0001
FIXUP_STRIDE = 512
LOGFILE_NO_CLIENT = 0xFFFF
RESTART_VOLUME_IS_CLEAN = 0x0002


@dataclass(frozen=True)
class Boot:
    bytes_per_sector: int
    cluster_size: int
    total_sectors: int
    mft_lcn: int
    record_size: int
    index_block_size: int

    @property
    def clusters(self) -> int:
        return self.total_sectors * self.bytes_per_sector // self.cluster_size


def _size_field(value: int, cluster_size: int) -> int:
    """Clusters-per-record fields: positive = clusters, negative = 2^-value bytes."""
    if value >= 0x80:
        value -= 0x100
    return cluster_size * value if value > 0 else 1 << -value


def parse_boot(raw: bytes) -> Boot:
    if len(raw) < 512 or raw[3:11] != OEM_ID:
        raise FilesystemError("NTFS boot sector has no 'NTFS    ' OEM id")
    bps, spc = struct.unpack_from("<HB", raw, 0x0B)
    if bps not in (256, 512, 1024, 2048, 4096):
        raise FilesystemError(f"NTFS bytes per sector is {bps}; expected 256 to 4096")
    spc = 1 << (256 - spc) if spc > 0x80 else spc
    if spc == 0 or spc & (spc - 1):
        raise FilesystemError(f"NTFS sectors per cluster is {spc}; expected a power of two")
    cluster = bps * spc
    total_sectors, mft_lcn = struct.unpack_from("<QQ", raw, 0x28)
    rec, idx = raw[0x40], raw[0x44]
    record_size = _size_field(rec, cluster)
    index_size = _size_field(idx, cluster)
    if record_size < 512 or record_size > 65536 or record_size % FIXUP_STRIDE:
        raise FilesystemError(
            f"NTFS MFT record size is {record_size}; expected a multiple of 512 up to 64 KiB"
        )
    return Boot(bps, cluster, total_sectors, mft_lcn, record_size, index_size)


def fixup(buf: bytearray, magic: bytes, what: str) -> bytearray:
    """Apply NTFS update-sequence fixups in place (multi-sector protection)."""
    if buf[:4] != magic:
        raise FilesystemError(f"NTFS {what} has magic {bytes(buf[:4])!r}; expected {magic!r}")
    usa_ofs, usa_count = struct.unpack_from("<HH", buf, 4)
    if usa_count == 0 or usa_ofs + 2 * usa_count > len(buf) or (usa_count - 1) * FIXUP_STRIDE > len(buf):
        raise FilesystemError(f"NTFS {what} has an invalid update sequence ({usa_ofs}, {usa_count})")
    usn = buf[usa_ofs : usa_ofs + 2]
    for i in range(1, usa_count):
        end = i * FIXUP_STRIDE
        if buf[end - 2 : end] != usn:
            raise FilesystemError(f"NTFS {what} fails its update-sequence check in sector {i}")
        buf[end - 2 : end] = buf[usa_ofs + 2 * i : usa_ofs + 2 * i + 2]
    return buf


@dataclass(frozen=True)
class Attribute:
    type: int
    name: str
    resident: bool
    value: bytes  # resident value
    runs: tuple[tuple[int | None, int], ...]  # non-resident: (lcn or None for sparse, clusters)
    lowest_vcn: int
    data_size: int
    highest_vcn: int = -1


def attributes(record_in: bytes | bytearray, what: str) -> Iterator[Attribute]:
    record = bytes(record_in)
    (pos,) = struct.unpack_from("<H", record, 0x14)
    (used,) = struct.unpack_from("<I", record, 0x18)
    end = min(used, len(record))
    while pos + 8 <= end:
        atype, alen = struct.unpack_from("<II", record, pos)
        if atype == AT_END:
            return
        if alen < 16 or pos + alen > end:
            raise FilesystemError(f"NTFS {what} has an attribute of length {alen} at offset {pos}")
        a = record[pos : pos + alen]
        non_resident, name_len = a[8], a[9]
        (name_ofs,) = struct.unpack_from("<H", a, 10)
        name = a[name_ofs : name_ofs + 2 * name_len].decode("utf-16-le", errors="replace")
        if non_resident:
            if alen < 0x40:
                raise FilesystemError(f"NTFS {what} has a truncated non-resident attribute")
            lowest, highest = struct.unpack_from("<qq", a, 0x10)
            (mp_ofs,) = struct.unpack_from("<H", a, 0x20)
            (data_size,) = struct.unpack_from("<q", a, 0x30)
            runs = tuple(decode_runs(a[mp_ofs:], what))
            yield Attribute(atype, name, False, b"", runs, lowest, data_size, highest)
        else:
            if alen < 0x18:
                raise FilesystemError(f"NTFS {what} has a truncated resident attribute")
            vlen, vofs = struct.unpack_from("<IH", a, 0x10)
            if vofs + vlen > alen:
                raise FilesystemError(f"NTFS {what} has a resident value beyond its attribute")
            yield Attribute(atype, name, True, a[vofs : vofs + vlen], (), 0, vlen)
        pos += alen


def decode_runs(data: bytes, what: str) -> Iterator[tuple[int | None, int]]:
    """Mapping pairs → (lcn or None for a sparse run, length in clusters)."""
    pos = 0
    lcn = 0
    while pos < len(data) and data[pos]:
        header = data[pos]
        len_size, ofs_size = header & 0x0F, header >> 4
        pos += 1
        if len_size == 0 or len_size > 8 or ofs_size > 8 or pos + len_size + ofs_size > len(data):
            raise FilesystemError(f"NTFS {what} has a malformed run list (header {header:#04x})")
        length = int.from_bytes(data[pos : pos + len_size], "little")
        pos += len_size
        if ofs_size:
            lcn += int.from_bytes(data[pos : pos + ofs_size], "little", signed=True)
            pos += ofs_size
            yield lcn, length
        else:
            yield None, length


class Volume:
    """Read-only access to the few system files the capture needs."""

    def __init__(self, f: BinaryIO, offset: int, size: int) -> None:
        self.f, self.offset, self.size = f, offset, size
        self.limit = offset + size
        self.boot = parse_boot(read_at(f, offset, 512, what="NTFS boot sector", limit=self.limit))
        if self.boot.total_sectors * self.boot.bytes_per_sector > size:
            raise FilesystemError(
                f"NTFS volume is {self.boot.total_sectors * self.boot.bytes_per_sector} bytes but its "
                f"partition is only {size} bytes",
                hint="the partition was shrunk under the filesystem; capture it with --force-raw",
            )
        b = self.boot
        first = self._read_record_at(b.mft_lcn * b.cluster_size, "MFT record 0 ($MFT)")
        self.mft_runs = self._data_runs(first, "MFT record 0 ($MFT)")

    def _read_record_at(self, pos: int, what: str) -> bytearray:
        raw = bytearray(
            read_at(self.f, self.offset + pos, self.boot.record_size, what=what, limit=self.limit)
        )
        return fixup(raw, b"FILE", what)

    def _data_runs(
        self, record: bytes | bytearray, what: str, name: str = ""
    ) -> tuple[tuple[int | None, int], ...]:
        for attr in attributes(record, what):
            if attr.type == AT_DATA and attr.name == name and not attr.resident and attr.lowest_vcn == 0:
                return attr.runs
        raise FilesystemError(f"NTFS {what} has no non-resident $DATA attribute starting at VCN 0")

    def read_runs(self, runs: tuple[tuple[int | None, int], ...], length: int, what: str) -> bytes:
        cs = self.boot.cluster_size
        out = bytearray()
        for lcn, count in runs:
            if len(out) >= length:
                break
            n = min(count * cs, length - len(out))
            out += (
                bytes(n)
                if lcn is None
                else read_at(self.f, self.offset + lcn * cs, n, what=what, limit=self.limit)
            )
        if len(out) < length:
            raise FilesystemError(f"NTFS {what}: its runs hold {len(out)} bytes; expected {length}")
        return bytes(out)

    def record_position(self, number: int) -> int:
        """Byte position of MFT record ``number`` in the volume, located through $MFT's own run list."""
        pos = number * self.boot.record_size
        cs = self.boot.cluster_size
        vcn_bytes = 0
        for lcn, count in self.mft_runs:
            span = count * cs
            if pos < vcn_bytes + span:
                if lcn is None:
                    raise FilesystemError(f"NTFS MFT record {number} lies in a sparse part of $MFT")
                return lcn * cs + pos - vcn_bytes
            vcn_bytes += span
        raise FilesystemError(f"NTFS MFT record {number} is beyond the end of $MFT")

    def record(self, number: int) -> bytearray:
        """MFT record ``number`` with its fixups applied."""
        return self._read_record_at(self.record_position(number), f"MFT record {number}")

    def data(self, number: int, name: str = "") -> Attribute:
        """The $DATA attribute ``name`` of MFT record ``number`` as one attribute: when an attribute list
        spreads it over extension records, their run lists are joined in VCN order."""
        return self.attribute(number, AT_DATA, name, "$DATA")

    def attribute(self, number: int, atype: int, name: str, label: str) -> Attribute:
        """Attribute (``atype``, ``name``) of MFT record ``number``, joined over its extension records."""
        what = f"MFT record {number}"
        attrs = list(attributes(self.record(number), what))
        pieces = [a for a in attrs if a.type == atype and a.name == name]
        for al in (a for a in attrs if a.type == AT_ATTRIBUTE_LIST):
            value = (
                al.value if al.resident else self.read_runs(al.runs, al.data_size, f"{what} attribute list")
            )
            for ref in _list_entries(value, atype, name, what):
                if ref != number:
                    ext = f"MFT record {ref} (extension of {number})"
                    pieces += [
                        a for a in attributes(self.record(ref), ext) if a.type == atype and a.name == name
                    ]
        if not pieces:
            raise FilesystemError(f"NTFS {what} has no {label} attribute named {name!r}")
        first = next((a for a in pieces if a.resident or a.lowest_vcn == 0), None)
        if first is None:
            raise FilesystemError(f"NTFS {what} has no {label} piece starting at VCN 0")
        if first.resident:
            return first
        runs: list[tuple[int | None, int]] = []
        next_vcn = 0
        for piece in sorted(
            {a.lowest_vcn: a for a in pieces if not a.resident}.values(), key=lambda a: a.lowest_vcn
        ):
            if piece.lowest_vcn != next_vcn:
                raise FilesystemError(
                    f"NTFS {what}: {label} pieces are not contiguous "
                    f"(VCN {piece.lowest_vcn}, expected {next_vcn})"
                )
            runs += piece.runs
            next_vcn = piece.lowest_vcn + sum(count for _, count in piece.runs)
        return dataclasses.replace(first, runs=tuple(runs))

    def cluster_bitmap(self) -> bytes:
        attr = self.data(MFT_RECORD_BITMAP)
        need = (self.boot.clusters + 7) // 8
        if attr.resident:
            data = attr.value
        else:
            data = self.read_runs(attr.runs, min(attr.data_size, need), "$Bitmap")
        if len(data) < need:
            raise FilesystemError(f"NTFS $Bitmap has {len(data)} bytes; expected {need} for the volume")
        return data

    def volume_flags(self) -> int:
        for attr in attributes(self.record(MFT_RECORD_VOLUME), "MFT record 3 ($Volume)"):
            if attr.type == AT_VOLUME_INFORMATION and attr.resident and len(attr.value) >= 12:
                (flags,) = struct.unpack_from("<H", attr.value, 10)
                return int(flags)
        raise FilesystemError("NTFS MFT record 3 ($Volume) has no VOLUME_INFORMATION")

    def root_lookup(self, filename: str) -> int | None:
        """MFT record number of ``filename`` in the root directory (case-insensitive), or None."""
        return self.lookup(MFT_RECORD_ROOT, filename)

    def path_lookup(self, path: str) -> int | None:
        """MFT record number of ``path`` ("Windows/System32/config", from the root), or None."""
        number: int | None = MFT_RECORD_ROOT
        for part in (p for p in path.split("/") if p):
            assert number is not None
            number = self.lookup(number, part)
            if number is None:
                return None
        return number

    def lookup(self, directory: int, filename: str) -> int | None:
        """MFT record number of ``filename`` in directory record ``directory`` (case-insensitive), or None.

        Entries in index blocks that are no longer used can be stale: a match counts only when its
        record is in use and its sequence number matches the reference."""
        what = f"MFT record {directory} (directory)"
        wanted = filename.lower()
        refs: list[int] = []
        for attr in attributes(self.record(directory), what):
            if attr.name == "$I30" and attr.type == AT_INDEX_ROOT and attr.resident and len(attr.value) >= 32:
                refs += _index_entries(attr.value, 16, wanted)
        try:
            alloc: Attribute | None = self.attribute(
                directory, AT_INDEX_ALLOCATION, "$I30", "$INDEX_ALLOCATION"
            )
        except FilesystemError:
            alloc = None  # a small directory: its whole index is in the root
        if alloc is not None and not alloc.resident:
            data = self.read_runs(alloc.runs, alloc.data_size, f"{what} index")
            bsize = self.boot.index_block_size
            for pos in range(0, len(data) - bsize + 1, bsize):
                block = bytearray(data[pos : pos + bsize])
                if block[:4] != b"INDX":
                    continue
                fixup(block, b"INDX", f"{what} index block")
                refs += _index_entries(bytes(block), 0x18, wanted)
        for ref in refs:
            if self._live(ref):
                return ref & 0xFFFFFFFFFFFF
        return None

    def _live(self, ref: int) -> bool:
        number, seq = ref & 0xFFFFFFFFFFFF, ref >> 48
        try:
            rec = self.record(number)
        except FilesystemError:
            return False
        rec_seq, flags = struct.unpack_from("<HxxxxH", rec, 0x10)
        return bool(flags & 1) and seq in (0, rec_seq)

    def logfile_clean(self) -> bool:
        """False only when $LogFile positively holds changes not yet written to the volume (ntfs-3g's test:
        the newest restart area has a client in use and is not flagged clean). An empty log (all 0xFF, as
        mkntfs and ntfs-3g leave it) is clean; a log this parser cannot read is reported clean with a
        warning -- the dirty flag and hiberfil.sys checks still apply."""
        head = self.file_head(MFT_RECORD_LOGFILE, 16384)
        if not head.strip(b"\xff"):
            return True
        best: tuple[int, bool] | None = None
        try:
            (page_size,) = struct.unpack_from("<I", head, 0x10)
            if page_size not in (512, 1024, 2048, 4096, 8192):
                raise FilesystemError(f"NTFS $LogFile restart page size is {page_size}; expected 512 to 8192")
            for pos in (0, page_size):
                page = bytearray(head[pos : pos + page_size])
                if len(page) < page_size or page[:4] != b"RSTR":
                    continue
                fixup(page, b"RSTR", "$LogFile restart page")
                (ra_ofs,) = struct.unpack_from("<H", page, 0x18)
                if ra_ofs + 16 > page_size:
                    raise FilesystemError(f"NTFS $LogFile restart area offset {ra_ofs} is beyond its page")
                lsn, _clients, _free, in_use, flags = struct.unpack_from("<QHHHH", page, ra_ofs)
                clean = in_use == LOGFILE_NO_CLIENT or bool(flags & RESTART_VOLUME_IS_CLEAN)
                if best is None or lsn > best[0]:
                    best = (lsn, clean)
        except (FilesystemError, struct.error) as exc:
            logger.warning("cannot read the NTFS $LogFile restart area (%s); not judging it", exc)
            return True
        return True if best is None else best[1]

    def file_head(self, record_number: int, n: int) -> bytes:
        attr = self.data(record_number)
        if attr.resident:
            return attr.value[:n]
        return self.read_runs(attr.runs, min(n, attr.data_size), f"MFT record {record_number} data")


def _list_entries(value: bytes, atype: int, name: str, what: str) -> Iterator[int]:
    """MFT record numbers that the attribute-list ``value`` names for attribute (``atype``, ``name``)."""
    pos = 0
    while pos + 26 <= len(value):
        etype, elen, nlen, nofs = struct.unpack_from("<IHBB", value, pos)
        if elen < 26 or pos + elen > len(value):
            raise FilesystemError(f"NTFS {what} has a malformed attribute list entry at offset {pos}")
        ename = value[pos + nofs : pos + nofs + 2 * nlen].decode("utf-16-le", errors="replace")
        if etype == atype and ename == name:
            (ref,) = struct.unpack_from("<Q", value, pos + 16)
            yield int(ref & 0xFFFFFFFFFFFF)
        pos += elen


def _index_entries(buf: bytes, header_pos: int, wanted: str) -> list[int]:
    """File references (64-bit, with sequence number) of the entries named ``wanted`` in an index node."""
    found: list[int] = []
    if header_pos + 16 > len(buf):
        return found
    first, total_size = struct.unpack_from("<II", buf, header_pos)
    pos = header_pos + first
    end = min(header_pos + total_size, len(buf))
    while pos + 16 <= end:
        ref, elen, klen, flags = struct.unpack_from("<QHHI", buf, pos)
        if elen < 16 or flags & 2:  # malformed, or the last entry (no key)
            break
        key = buf[pos + 16 : pos + 16 + klen]
        if len(key) >= 0x42:
            nlen = key[0x40]
            name = key[0x42 : 0x42 + 2 * nlen].decode("utf-16-le", errors="replace")
            if name.lower() == wanted:
                found.append(int(ref))
        pos += elen
    return found


class Ntfs(Filesystem):
    fstype = FsType.NTFS
    priority = 20
    growable = True
    mountable = True

    def probe_os(self, source: Path, f: BinaryIO, offset: int, size: int) -> str | None:
        """'windows' when Windows/System32/config exists: read with this parser (no loop device)."""
        return "windows" if Volume(f, offset, size).path_lookup(WINDOWS_CONFIG) is not None else None

    def grow(self, dev: Path) -> None:
        """``ntfsresize --force --force`` (enlarges to the device size; Windows runs a quick chkdsk at first
        boot, as after any ntfsresize)."""
        try:
            run(["ntfsresize", "--force", "--force", "--no-progress-bar", os.fspath(dev)])
        except CommandError as exc:
            raise FilesystemError(
                f"ntfsresize could not grow the NTFS filesystem: {exc.stderr or exc.message}"
            ) from exc

    def mount_argv(self, dev: Path, mountpoint: Path, *, read_only: bool) -> list[str]:
        return mount_command("ntfs-3g", "ro" if read_only else "rw", dev, mountpoint)

    def probe(self, head: bytes) -> bool:
        return len(head) >= 512 and head[3:11] == OEM_ID and head[510:512] == b"\x55\xaa"

    def used_extents(self, f: BinaryIO, offset: int, size: int) -> list[Extent]:
        vol = Volume(f, offset, size)
        b = vol.boot
        cs = b.cluster_size
        bitmap = vol.cluster_bitmap()
        extents: list[Extent] = [(0, b.bytes_per_sector)]
        extents += ((first * cs, count * cs) for first, count in bitmap_runs(bitmap, b.clusters))
        # backup boot sector: the sector after the volume (NTFS counts one sector less than the partition)
        # and, when different, the partition's last sector
        extents.append((b.total_sectors * b.bytes_per_sector, b.bytes_per_sector))
        extents.append((size - b.bytes_per_sector, b.bytes_per_sector))
        return merge(extents, size)

    def check_capturable(self, f: BinaryIO, offset: int, size: int, name: str) -> None:
        vol = Volume(f, offset, size)
        hint = (
            "shut Windows down fully (not Fast Startup: run 'powercfg /h off' as administrator, then "
            "shut down), or capture it with --force-raw"
        )
        hib = vol.root_lookup("hiberfil.sys")
        if hib is not None and vol.file_head(hib, 4).lower() == b"hibr":
            raise FilesystemError(
                f"{describe(name, size, 'NTFS')} holds a hibernated Windows (hiberfil.sys is active); "
                "its files are not in a consistent state",
                hint=hint,
            )
        if vol.volume_flags() & VOLUME_IS_DIRTY:
            raise FilesystemError(
                f"{describe(name, size, 'NTFS')} was not shut down cleanly (the volume is marked dirty)",
                hint="run chkdsk in Windows and " + hint,
            )
        if not vol.logfile_clean():
            raise FilesystemError(
                f"{describe(name, size, 'NTFS')} was not shut down cleanly ($LogFile holds changes "
                "not yet written to the volume)",
                hint=hint,
            )
