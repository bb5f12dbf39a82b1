"""FAT12/16/32: used = reserved sectors + all FATs + the fixed root directory (FAT12/16) + every data
cluster whose FAT entry is not 0 (free). Bad-cluster entries count as used (copying them is harmless)."""

from __future__ import annotations

import logging
import re
import struct
from dataclasses import dataclass
from typing import BinaryIO

from fleetcast.disk.filesystems.base import Extent, Filesystem, FsType, merge, read_at
from fleetcast.errors import FilesystemError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Bpb:
    bytes_per_sector: int
    sectors_per_cluster: int
    reserved: int
    fats: int
    root_entries: int
    total_sectors: int
    fat_sectors: int
    fat32_bpb: bool = False  # BPB_FATSz16 == 0: the FAT32 layout, whatever the cluster count

    @property
    def root_dir_sectors(self) -> int:
        return -(-self.root_entries * 32 // self.bytes_per_sector)

    @property
    def first_data_sector(self) -> int:
        return self.reserved + self.fats * self.fat_sectors + self.root_dir_sectors

    @property
    def clusters(self) -> int:
        return max(self.total_sectors - self.first_data_sector, 0) // self.sectors_per_cluster

    @property
    def bits(self) -> int:
        """32 for the FAT32 BPB layout (as Linux decides: mkfs.fat -F 32 can make FAT32 volumes with
        fewer than 65525 clusters), else 12 or 16 by the cluster count, as the specification says."""
        if self.fat32_bpb:
            return 32
        if self.clusters < 4085:
            return 12
        if self.clusters < 65525:
            return 16
        return 32

    @property
    def cluster_size(self) -> int:
        return self.bytes_per_sector * self.sectors_per_cluster


def parse_bpb(raw: bytes) -> Bpb:
    """The BIOS parameter block, with the sanity checks that tell a FAT boot sector from other data."""
    if len(raw) < 512:
        raise FilesystemError(f"FAT boot sector is {len(raw)} bytes; expected 512")
    if raw[510:512] != b"\x55\xaa":
        raise FilesystemError("FAT boot sector lacks the 55 AA signature")
    if raw[0] not in (0xEB, 0xE9):
        raise FilesystemError(f"FAT boot sector starts with {raw[0]:#04x}; expected a jump (0xeb or 0xe9)")
    bps, spc, reserved, fats, root_entries, total16, media, fat16 = struct.unpack_from("<HBHBHHBH", raw, 11)
    (total32,) = struct.unpack_from("<I", raw, 32)
    (fat32,) = struct.unpack_from("<I", raw, 36)
    if bps not in (512, 1024, 2048, 4096):
        raise FilesystemError(f"FAT bytes per sector is {bps}; expected 512, 1024, 2048 or 4096")
    if spc == 0 or spc & (spc - 1):
        raise FilesystemError(f"FAT sectors per cluster is {spc}; expected a power of two from 1 to 128")
    if reserved == 0 or fats not in (1, 2, 3, 4):
        raise FilesystemError(
            f"FAT has {reserved} reserved sectors and {fats} FATs; expected at least 1 and 1-4"
        )
    if media != 0xF0 and media < 0xF8:
        raise FilesystemError(f"FAT media descriptor is {media:#04x}; expected 0xf0 or 0xf8-0xff")
    total = total16 or total32
    fat_sectors = fat16 or fat32
    if total == 0 or fat_sectors == 0:
        raise FilesystemError(
            f"FAT has {total} sectors and {fat_sectors}-sector FATs; expected non-zero sizes"
        )
    bpb = Bpb(bps, spc, reserved, fats, root_entries, total, fat_sectors, fat32_bpb=fat16 == 0)
    if bpb.first_data_sector >= total:
        raise FilesystemError(
            f"FAT data area starts at sector {bpb.first_data_sector}, beyond the volume's {total}"
        )
    need = -(-(bpb.clusters + 2) * bpb.bits // 8)  # rounded up: a FAT12 ends in half a byte
    if fat_sectors * bps < need:
        raise FilesystemError(f"FAT is {fat_sectors * bps} bytes; {bpb.clusters} clusters need {need}")
    return bpb


_NONZERO = bytes([0] + [1] * 255)  # translate table: byte -> 0/1
_LOW_NIBBLE = bytes(b & 0x0F for b in range(256))
_USED_RUNS = re.compile(rb"\x01+")


def used_clusters(fat: bytes, bits: int, clusters: int) -> list[tuple[int, int]]:
    """Runs (first cluster index from 0 = cluster 2, count) of non-free FAT entries.

    FAT16/32 work on whole byte strings (no Python loop per entry): mask FAT32's top 4 bits, map every
    byte to 0/1, OR the 2 or 4 bytes of each entry together with big-integer operations, then find the
    runs of used entries with a regular expression."""
    if bits == 12:
        flags12 = bytearray()
        for c in range(2, clusters + 2):
            (pair,) = struct.unpack_from("<H", fat, c * 3 // 2)
            flags12.append(1 if (pair >> 4 if c & 1 else pair & 0xFFF) else 0)
        return [(m.start(), m.end() - m.start()) for m in _USED_RUNS.finditer(flags12)]
    width = bits // 8
    table = bytearray(fat[2 * width : (clusters + 2) * width])
    if len(table) < clusters * width:
        raise FilesystemError(f"FAT holds {len(table) // width} entries; expected {clusters}")
    if bits == 32:
        table[3::4] = table[3::4].translate(_LOW_NIBBLE)
    nonzero = table.translate(_NONZERO)
    used = 0
    for k in range(width):
        used |= int.from_bytes(nonzero[k::width], "little")
    flags = used.to_bytes(clusters, "little")
    return [(m.start(), m.end() - m.start()) for m in _USED_RUNS.finditer(flags)]


class Fat(Filesystem):
    fstype = FsType.FAT

    @property
    def grow_note(self) -> str:
        return "FAT cannot be grown here; the partition grew, its filesystem was left as is"

    priority = 30

    def probe(self, head: bytes) -> bool:
        if head[3:11] in (b"NTFS    ", b"EXFAT   ", b"-FVE-FS-"):
            return False
        try:
            parse_bpb(head[:512])
        except FilesystemError:
            return False
        return True

    def used_extents(self, f: BinaryIO, offset: int, size: int) -> list[Extent]:
        limit = offset + size
        bpb = parse_bpb(read_at(f, offset, 512, what="FAT boot sector", limit=limit))
        bps = bpb.bytes_per_sector
        if bpb.total_sectors * bps > size:
            raise FilesystemError(
                f"FAT volume is {bpb.total_sectors * bps} bytes but its partition is only {size} bytes",
                hint="the partition was shrunk under the filesystem; capture it with --force-raw",
            )
        fat = read_at(f, offset + bpb.reserved * bps, bpb.fat_sectors * bps, what="FAT", limit=limit)
        data = bpb.first_data_sector * bps
        cs = bpb.cluster_size
        extents: list[Extent] = [(0, data)]
        extents += (
            (data + first * cs, count * cs) for first, count in used_clusters(fat, bpb.bits, bpb.clusters)
        )
        return merge(extents, size)
