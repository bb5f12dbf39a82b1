"""grown_table: where the last partition ends on a larger disk (pure)."""

from __future__ import annotations

import pytest

from fleetcast.disk.grow import grown_table, last_usable_sector
from fleetcast.disk.partitions import Partition, PartitionTable
from fleetcast.errors import DiskError

MiB = 1 << 20
G1 = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
GPT = PartitionTable(
    "gpt",
    "11111111-2222-3333-4444-555555555555",
    512,
    2048,
    131038,
    128,
    (
        Partition(1, 2048, 8192, G1, "AAAAAAAA-2222-3333-4444-555555555555", "a"),
        Partition(2, 10240, 120799, G1, "BBBBBBBB-2222-3333-4444-555555555555", "b", "GUID:63"),
    ),
)


def test_gpt_last_partition_reaches_aligned_end() -> None:
    new = grown_table(GPT, 100 * MiB)
    sectors = 100 * MiB // 512
    assert last_usable_sector(GPT, sectors) == sectors - 34
    assert new.last_lba == sectors - 34
    last = new.partitions[1]
    assert last.end == (sectors - 33) // 2048 * 2048
    assert last.end % 2048 == 0
    assert new.partitions[0] == GPT.partitions[0]
    assert (last.uuid, last.name, last.attrs, last.start) == (
        "BBBBBBBB-2222-3333-4444-555555555555",
        "b",
        "GUID:63",
        10240,
    )
    assert new.id == GPT.id


def test_same_size_disk_is_unchanged() -> None:
    assert grown_table(GPT, 64 * MiB) == GPT


def test_smaller_disk_refused() -> None:
    with pytest.raises(DiskError) as err:
        grown_table(GPT, 32 * MiB)
    assert str(err.value) == "target is 33554432 bytes but the partition table needs at least 67108864 bytes"


def test_4k_sector_gpt() -> None:
    table = PartitionTable(
        "gpt", GPT.id, 4096, 6, 16379, 128, (Partition(1, 256, 16000, G1, GPT.partitions[0].uuid),)
    )
    sectors = 128 * MiB // 4096
    new = grown_table(table, 128 * MiB)
    assert new.last_lba == sectors - 1 - 4 - 1
    assert new.partitions[0].end == (sectors - 5) // 256 * 256


def test_mbr_logical_last_grows_extended() -> None:
    table = PartitionTable(
        "dos",
        "0x12345678",
        512,
        partitions=(
            Partition(1, 2048, 8192, "83", bootable=True),
            Partition(2, 10240, 40000, "5"),
            Partition(5, 12288, 30000, "83"),
        ),
    )
    new = grown_table(table, 64 * MiB)
    end = 64 * MiB // 512
    assert [(p.number, p.start, p.end) for p in new.partitions] == [
        (1, 2048, 10240),
        (2, 10240, end),
        (5, 12288, end),
    ]
    assert new.partitions[0].bootable and new.last_lba is None


def test_mbr_capped_at_2tib() -> None:
    table = PartitionTable("dos", "0x12345678", 512, partitions=(Partition(1, 2048, 8192, "7"),))
    new = grown_table(table, 4 << 40)
    assert new.partitions[0].end <= (1 << 32) - 1
    assert new.partitions[0].end == ((1 << 32) - 1) // 2048 * 2048
