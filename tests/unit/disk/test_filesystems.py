"""Pure parts of the allocation-map parsers: bitmaps, merging, run lists, fixups, boot-sector checks."""

from __future__ import annotations

import io
import random
import struct

import pytest

from fleetcast.disk.filesystems import FsType, detect, used_extents
from fleetcast.disk.filesystems.base import bitmap_runs, merge, read_at
from fleetcast.disk.filesystems.fat import parse_bpb, used_clusters
from fleetcast.disk.filesystems.ntfs import decode_runs, fixup, parse_boot
from fleetcast.errors import FilesystemError


def _naive_runs(bitmap: bytes, nbits: int) -> list[tuple[int, int]]:
    bits = [bitmap[i // 8] >> (i % 8) & 1 for i in range(nbits)]
    runs: list[tuple[int, int]] = []
    for i, b in enumerate(bits):
        if b:
            if runs and runs[-1][0] + runs[-1][1] == i:
                runs[-1] = (runs[-1][0], runs[-1][1] + 1)
            else:
                runs.append((i, 1))
    return runs


@pytest.mark.parametrize("seed", range(20))
def test_bitmap_runs_match_naive(seed: int) -> None:
    rng = random.Random(seed)
    chunks = [
        rng.choice([b"\xff" * rng.randrange(1, 9), b"\x00" * rng.randrange(1, 9), rng.randbytes(3)])
        for _ in range(30)
    ]
    bitmap = b"".join(chunks)
    nbits = rng.randrange(1, len(bitmap) * 8 + 1)
    assert list(bitmap_runs(bitmap, nbits)) == _naive_runs(bitmap, nbits)


def test_bitmap_runs_clip_at_nbits() -> None:
    assert list(bitmap_runs(bytes([0b10100011]), 3)) == [(0, 2)]
    assert list(bitmap_runs(b"\xff\xff", 12)) == [(0, 12)]


def test_merge() -> None:
    assert merge([(10, 5), (0, 4), (4, 2), (12, 10), (100, 0), (95, 10)], 100) == [(0, 6), (10, 12), (95, 5)]


def test_read_at_outside_partition() -> None:
    with pytest.raises(FilesystemError) as err:
        read_at(io.BytesIO(bytes(100)), 90, 20, what="ext superblock", limit=100)
    assert (
        str(err.value) == "ext superblock at byte 90 (+20) lies outside the partition, which ends at byte 100"
    )
    with pytest.raises(FilesystemError) as err:
        read_at(io.BytesIO(bytes(100)), 90, 20, what="FAT", limit=200)
    assert str(err.value) == "cannot read FAT at byte 90: expected 20 bytes, got 10"


def test_fat12_entries() -> None:
    # clusters 2..5: 0xFFF (end), 0x000 (free), 0x005, 0x000
    entries = [0xFF8, 0xFFF, 0xFFF, 0x000, 0x005, 0x000]
    fat = bytearray()
    for i in range(0, len(entries), 2):
        v = entries[i] | entries[i + 1] << 12
        fat += v.to_bytes(3, "little")
    assert used_clusters(bytes(fat) + bytes(4), 12, 4) == [(0, 1), (2, 1)]


def test_fat32_masks_high_bits() -> None:
    fat = struct.pack("<6I", 0x0FFFFFF8, 0x0FFFFFFF, 0xF0000000, 3, 0x0FFFFFFF, 0)
    assert used_clusters(fat, 32, 4) == [(1, 2)]


def _bpb(**over: int) -> bytes:
    fields = {
        "bps": 512,
        "spc": 4,
        "reserved": 4,
        "fats": 2,
        "root": 512,
        "total16": 40960,
        "media": 0xF8,
        "fat16": 40,
    }
    fields.update(over)
    raw = bytearray(512)
    raw[0:3] = b"\xeb\x3c\x90"
    raw[3:11] = b"mkfs.fat"
    struct.pack_into(
        "<HBHBHHBH",
        raw,
        11,
        fields["bps"],
        fields["spc"],
        fields["reserved"],
        fields["fats"],
        fields["root"],
        fields["total16"],
        fields["media"],
        fields["fat16"],
    )
    raw[510:512] = b"\x55\xaa"
    return bytes(raw)


def test_parse_bpb_ok_and_errors() -> None:
    bpb = parse_bpb(_bpb())
    assert (bpb.bits, bpb.first_data_sector, bpb.clusters) == (16, 4 + 80 + 32, (40960 - 116) // 4)
    cases = [
        (_bpb(bps=500), "FAT bytes per sector is 500; expected 512, 1024, 2048 or 4096"),
        (_bpb(spc=3), "FAT sectors per cluster is 3; expected a power of two from 1 to 128"),
        (_bpb(fats=0), "FAT has 4 reserved sectors and 0 FATs; expected at least 1 and 1-4"),
        (_bpb(media=0x12), "FAT media descriptor is 0x12; expected 0xf0 or 0xf8-0xff"),
        (_bpb(fat16=1), "FAT is 512 bytes; 10230 clusters need 20464"),
        (_bpb()[:510] + b"\0\0", "FAT boot sector lacks the 55 AA signature"),
    ]
    for raw, message in cases:
        with pytest.raises(FilesystemError) as err:
            parse_bpb(raw)
        assert str(err.value) == message


def test_fat32_layout_decides_bits() -> None:
    raw = bytearray(_bpb(root=0, fat16=0, total16=0))
    struct.pack_into("<II", raw, 32, 40960, 80)  # total32, FATSz32
    bpb = parse_bpb(bytes(raw))
    assert bpb.clusters < 65525 and bpb.bits == 32


def test_detect_heads() -> None:
    def probe(head: bytes) -> FsType:
        return detect(io.BytesIO(head), 0, len(head))

    assert probe(_bpb() + bytes(4096)) is FsType.FAT
    ntfs = bytearray(_bpb())
    ntfs[3:11] = b"NTFS    "
    assert probe(bytes(ntfs)) is FsType.NTFS
    ntfs[3:11] = b"-FVE-FS-"
    assert probe(bytes(ntfs)) is FsType.BITLOCKER
    ext = bytearray(4096)
    struct.pack_into("<H", ext, 1080, 0xEF53)
    assert probe(bytes(ext)) is FsType.EXT
    swap = bytearray(4096)
    swap[4086:4096] = b"SWAPSPACE2"
    assert probe(bytes(swap)) is FsType.SWAP
    assert probe(bytes(4096)) is FsType.RAW
    assert probe(b"") is FsType.RAW


def test_unknown_type_is_raw() -> None:
    assert used_extents("zfs", io.BytesIO(bytes(10)), 0, 10) == [(0, 10)]


def test_decode_runs() -> None:
    # 0x21: 1-byte length, 2-byte offset; second run relative (-0x10); 0x01: sparse run
    data = bytes([0x21, 0x08, 0x00, 0x01, 0x11, 0x04, 0xF0, 0x01, 0x03, 0x00])
    assert list(decode_runs(data, "t")) == [(0x100, 8), (0xF0, 4), (None, 3)]
    with pytest.raises(FilesystemError) as err:
        list(decode_runs(bytes([0x29, 1]), "MFT record 6"))
    assert str(err.value) == "NTFS MFT record 6 has a malformed run list (header 0x29)"


def test_fixup() -> None:
    rec = bytearray(1024)
    rec[0:4] = b"FILE"
    struct.pack_into("<HH", rec, 4, 0x30, 3)
    rec[0x30:0x36] = b"\x07\x00AABB"
    rec[510:512] = b"\x07\x00"
    rec[1022:1024] = b"\x07\x00"
    fixup(rec, b"FILE", "MFT record 0")
    assert rec[510:512] == b"AA" and rec[1022:1024] == b"BB"
    rec[510:512] = b"\x00\x00"
    rec[1022:1024] = b"\x08\x00"
    with pytest.raises(FilesystemError) as err:
        fixup(rec, b"FILE", "MFT record 0")
    assert str(err.value) == "NTFS MFT record 0 fails its update-sequence check in sector 1"


def test_parse_boot_errors() -> None:
    raw = bytearray(512)
    raw[3:11] = b"NTFS    "
    struct.pack_into("<HB", raw, 0x0B, 512, 3)
    with pytest.raises(FilesystemError) as err:
        parse_boot(bytes(raw))
    assert str(err.value) == "NTFS sectors per cluster is 3; expected a power of two"
    struct.pack_into("<HB", raw, 0x0B, 512, 8)
    raw[0x40] = 0xF6  # 2^10 = 1024-byte records
    assert parse_boot(bytes(raw)).record_size == 1024


def _nonres_data(lowest: int, highest: int, runs: bytes, data_size: int) -> bytes:
    runs = runs + b"\0" * (-len(runs) % 8 or 8)
    length = 0x40 + len(runs)
    head = struct.pack("<IIBBHHH", 0x80, length, 1, 0, 0x40, 0, 1) + struct.pack(
        "<qqH", lowest, highest, 0x40
    )
    head = head.ljust(0x30, b"\0") + struct.pack("<qq", data_size, data_size)
    return head + runs


def _attr_list(entries: list[tuple[int, int, int]]) -> bytes:
    value = b"".join(
        struct.pack("<IHBBqQH", t, 32, 0, 26, vcn, ref, 0).ljust(32, b"\0") for t, vcn, ref in entries
    )
    length = 0x18 + len(value)
    return (
        struct.pack("<IIBBHHHIH", 0x20, length, 0, 0, 0x18, 0, 0, len(value), 0x18).ljust(0x18, b"\0") + value
    )


def _record(*attrs: bytes) -> bytearray:
    body = b"".join(attrs) + struct.pack("<I", 0xFFFFFFFF)
    head = bytearray(0x38)
    head[0:4] = b"FILE"
    struct.pack_into("<H", head, 0x14, 0x38)
    struct.pack_into("<I", head, 0x18, 0x38 + len(body))
    return bytearray(head + body)


def test_ntfs_data_joined_through_attribute_list() -> None:
    from fleetcast.disk.filesystems.ntfs import Volume

    records = {
        6: _record(
            _attr_list([(0x80, 0, 6), (0x80, 8, 30)]), _nonres_data(0, 7, bytes([0x21, 8, 100, 0]), 16 * 4096)
        ),
        30: _record(_nonres_data(8, 15, bytes([0x21, 8, 0xC8, 0]), 0)),
    }

    class Fake(Volume):
        def __init__(self) -> None:
            pass

        def record(self, number: int) -> bytearray:
            return records[number]

    attr = Fake().data(6)
    assert attr.runs == ((100, 8), (200, 8))
    assert attr.data_size == 16 * 4096
    records[30] = _record(_nonres_data(9, 15, bytes([0x21, 8, 0xC8, 0]), 0))
    with pytest.raises(FilesystemError) as err:
        Fake().data(6)
    assert str(err.value) == "NTFS MFT record 6: $DATA pieces are not contiguous (VCN 9, expected 8)"


@pytest.mark.parametrize("bits", [16, 32])
def test_used_clusters_matches_naive(bits: int) -> None:
    rng = random.Random(bits)
    clusters = 5000
    values = [rng.choice([0, 0, 0, 1, 0xFFFF, 0x10000000, 0x0FFFFFF7]) for _ in range(clusters + 2)]
    fmt = "<H" if bits == 16 else "<I"
    mask = 0xFFFF if bits == 16 else 0x0FFFFFFF
    fat = b"".join(struct.pack(fmt, v & (0xFFFF if bits == 16 else 0xFFFFFFFF)) for v in values)
    naive = bytes(1 if values[c] & mask else 0 for c in range(2, clusters + 2))
    expected = _naive_runs(
        bytes(int("".join(str(b) for b in reversed(naive[i : i + 8])), 2) for i in range(0, clusters, 8)),
        clusters,
    )
    assert used_clusters(fat, bits, clusters) == expected


def _restart_page(lsn: int, in_use: int, flags: int, page_size: int = 4096) -> bytes:
    page = bytearray(page_size)
    count = page_size // 512 + 1
    page[0:4] = b"RSTR"
    struct.pack_into("<HHQIIHhh", page, 4, 0x1E, count, 0, page_size, page_size, 0x30, 1, 1)
    struct.pack_into("<QHHHH", page, 0x30, lsn, 1, 0xFFFF, in_use, flags)
    usn = b"\x01\x00"
    page[0x1E:0x20] = usn
    for i in range(1, count):  # protect every sector end with the update sequence number
        end = i * 512
        page[0x1E + 2 * i : 0x20 + 2 * i] = page[end - 2 : end]
        page[end - 2 : end] = usn
    return bytes(page)


@pytest.mark.parametrize(
    ("pages", "clean"),
    [
        (b"\xff" * 16384, True),
        (_restart_page(10, 0xFFFF, 0) + _restart_page(9, 0, 0), True),  # newest: no client in use
        (_restart_page(10, 0, 2) + _restart_page(9, 0, 0), True),  # newest: flagged clean
        (_restart_page(10, 0, 0) + _restart_page(11, 0xFFFF, 0), True),  # the second page is newer
        (_restart_page(12, 0, 0) + _restart_page(11, 0xFFFF, 0), False),
        (b"\x00" * 16384, True),  # unreadable: not judged (warning)
    ],
)
def test_logfile_clean(pages: bytes, clean: bool) -> None:
    from fleetcast.disk.filesystems.ntfs import Volume

    class Fake(Volume):
        def __init__(self) -> None:
            pass

        def file_head(self, record_number: int, n: int) -> bytes:
            assert record_number == 2
            return pages[:n]

    assert Fake().logfile_clean() is clean


def test_fat12_whose_table_is_half_a_byte_short_is_refused() -> None:
    # 681 clusters + 2 reserved entries need 1024.5 bytes of FAT12; 2 sectors hold 1024
    raw = _bpb(spc=1, reserved=1, root=16, total16=687, fat16=2)
    with pytest.raises(FilesystemError) as err:
        parse_bpb(raw)
    assert str(err.value) == "FAT is 1024 bytes; 681 clusters need 1025"
    disk = io.BytesIO(raw + bytes(687 * 512 - 512))
    assert detect(disk, 0, 687 * 512) == FsType.RAW


def test_ext_superblock_ignores_a_wild_cluster_size() -> None:
    from fleetcast.disk.filesystems.ext import Superblock

    raw = bytearray(1024)
    # inodes, blocks, r, free, free inodes, first data block, log block, log cluster, per group (3)
    struct.pack_into("<11I", raw, 0, 2048, 8192, 0, 0, 0, 0, 2, 0xFFFFFFFF, 32768, 32768, 2048)
    struct.pack_into("<H", raw, 56, 0xEF53)
    sb = Superblock(bytes(raw))
    assert (sb.block_size, sb.blocks_count, sb.groups) == (4096, 8192, 1)


def test_ntfs_truncated_resident_attribute() -> None:
    from fleetcast.disk.filesystems.ntfs import attributes

    record = _record(struct.pack("<IIBBHHH", 0x80, 16, 0, 0, 0x18, 0, 0))
    with pytest.raises(FilesystemError) as err:
        list(attributes(record, "MFT record 6"))
    assert str(err.value) == "NTFS MFT record 6 has a truncated resident attribute"
