"""PartitionTable/Partition: dict round trip, validation texts, sfdisk script text."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from fleetcast.disk.partitions import Partition, PartitionTable, TableError, parse_sfdisk_json, sfdisk_script

GPT = PartitionTable(
    "gpt",
    "11111111-2222-3333-4444-555555555555",
    512,
    34,
    131038,
    128,
    (
        Partition(
            1,
            2048,
            8192,
            "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
            "AAAAAAAA-2222-3333-4444-555555555555",
            "EFI system",
            "RequiredPartition GUID:63",
        ),
        Partition(
            3,
            20480,
            8192,
            "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
            "BBBBBBBB-2222-3333-4444-555555555555",
            'we"ird',
        ),
    ),
)
DOS = PartitionTable(
    "dos",
    "0x12345678",
    512,
    partitions=(Partition(1, 2048, 8192, "83", bootable=True), Partition(5, 12288, 4096, "82")),
)


@pytest.mark.parametrize("table", [GPT, DOS, PartitionTable("none", "", 4096)])
def test_dict_round_trip(table: PartitionTable) -> None:
    d = table.to_dict()
    assert PartitionTable.from_dict(copy.deepcopy(d)) == table
    assert PartitionTable.from_dict(d).to_dict() == d


def _bad(mutate: Any) -> dict[str, Any]:
    d = GPT.to_dict()
    mutate(d)
    return d


BAD = [
    ([], "partition table must be an object; found list"),
    (_bad(lambda d: d.pop("label")), "partition table is missing 'label'"),
    (_bad(lambda d: d.update(extra=1)), "partition table has unknown fields 'extra'"),
    (
        _bad(lambda d: d.update(label="apm")),
        "partition table: 'label' must be one of gpt, dos, none; found 'apm'",
    ),
    (
        _bad(lambda d: d.update(sector_size=520)),
        "partition table: 'sector_size' must be a power of two from 512 to 65536; found 520",
    ),
    (
        _bad(lambda d: d.update(sector_size="512")),
        "partition table: 'sector_size' must be an integer; found '512'",
    ),
    (
        _bad(lambda d: d.update(id="abc")),
        "partition table: a GPT disk 'id' must be an upper-case GUID; found 'abc'",
    ),
    (
        _bad(lambda d: d.update(last_lba=1)),
        "partition table: a GPT needs first_lba <= last_lba; found first_lba=34, last_lba=1",
    ),
    (_bad(lambda d: d.update(partitions={})), "partition table: 'partitions' must be a list; found dict"),
    (
        _bad(lambda d: d["partitions"][0].update(start=-1)),
        "partition table: partitions[0].start must be at least 1; found -1",
    ),
    (
        _bad(lambda d: d["partitions"][1].update(number=1)),
        "partition table: partition numbers repeat: [1, 1]",
    ),
    (
        _bad(lambda d: d["partitions"][0].update(bootable=1)),
        "partition table: partitions[0].bootable must be true or false; found 1",
    ),
    (
        _bad(lambda d: d["partitions"][0].update(type="83")),
        "partition table: partitions[0].type must be an upper-case GUID on GPT; found '83'",
    ),
    (_bad(lambda d: d["partitions"][0].pop("uuid")), "partition table: partitions[0] is missing 'uuid'"),
    (
        _bad(lambda d: d["partitions"].reverse()),
        "partition table: partitions must be sorted by number; found [3, 1]",
    ),
]


@pytest.mark.parametrize(("data", "message"), BAD)
def test_from_dict_rejects(data: object, message: str) -> None:
    with pytest.raises(TableError) as err:
        PartitionTable.from_dict(data)
    assert str(err.value) == message


def test_dos_rejects_gpt_fields() -> None:
    d = DOS.to_dict()
    d["first_lba"] = 34
    with pytest.raises(
        TableError, match=r"^partition table: first_lba, last_lba and table_length must be null"
    ):
        PartitionTable.from_dict(d)
    d = DOS.to_dict()
    d["partitions"][0]["uuid"] = "X"
    with pytest.raises(TableError) as err:
        PartitionTable.from_dict(d)
    assert str(err.value) == "partition table: partitions[0]: uuid, name and attrs must be empty on MBR"


def test_script_pins_lbas_unless_fit_to_disk() -> None:
    script, late = sfdisk_script(GPT, Path("/tmp/disk1.img"))
    assert script.splitlines() == [
        "label: gpt",
        "label-id: 11111111-2222-3333-4444-555555555555",
        "unit: sectors",
        "sector-size: 512",
        "table-length: 128",
        "first-lba: 34",
        "last-lba: 131038",
        "",
        "/tmp/disk1.img1 : start=2048, size=8192, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, "
        'uuid=AAAAAAAA-2222-3333-4444-555555555555, name="EFI system", attrs="RequiredPartition GUID:63"',
        "/tmp/disk1.img3 : start=20480, size=8192, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, "
        "uuid=BBBBBBBB-2222-3333-4444-555555555555",
    ]
    assert [p.number for p in late] == [3]
    fitted, _ = sfdisk_script(GPT, Path("/dev/loop7"), fit_to_disk=True)
    assert "last-lba" not in fitted
    assert "/dev/loop7p1 : start=2048" in fitted


def test_script_dos_bootable() -> None:
    script, late = sfdisk_script(DOS, Path("d.img"))
    assert script.splitlines()[-2:] == [
        "d.img1 : start=2048, size=8192, type=83, bootable",
        "d.img5 : start=12288, size=4096, type=82",
    ]
    assert late == []


def test_parse_sfdisk_json_numbers_from_nodes() -> None:
    pt = {
        "label": "dos",
        "id": "0xABCDEF01",
        "device": "/x/disk2",
        "unit": "sectors",
        "sectorsize": 512,
        "partitions": [
            {"node": "/x/disk2p5", "start": 4096, "size": 10, "type": "83"},
            {"node": "/x/disk2p1", "start": 2048, "size": 100, "type": "5", "bootable": True},
        ],
    }
    table = parse_sfdisk_json(pt, Path("/x/disk2"))
    assert table.id == "0xabcdef01"
    assert [(p.number, p.type, p.bootable) for p in table.partitions] == [(1, "5", True), (5, "83", False)]


def test_min_disk_bytes_counts_gpt_backup() -> None:
    assert GPT.min_disk_bytes() == (131038 + 1 + 32 + 1) * 512
    assert DOS.min_disk_bytes() == (12288 + 4096) * 512


def test_parse_sfdisk_json_unexpected_output() -> None:
    from fleetcast.errors import DiskError

    part = {"node": "/x/d1", "start": 2048, "size": 100, "type": "83"}
    cases = [
        (
            {"label": "dos", "id": "0x1", "partitions": [{"node": "/x/d1", "size": 1, "type": "83"}]},
            "lacks the field 'start'",
        ),
        (
            {"label": "dos", "id": "0x1", "partitions": [part | {"start": "x"}]},
            "has an unexpected value: invalid literal for int() with base 10: 'x'",
        ),
        (
            {"label": "dos", "id": "0x1", "partitions": [7]},
            "has an unexpected value: 'int' object is not subscriptable",
        ),
    ]
    for pt, message in cases:
        with pytest.raises(DiskError) as err:
            parse_sfdisk_json(pt, Path("/x/d"))
        assert str(err.value) == f"sfdisk's description of /x/d {message}"


def test_a_bad_table_in_a_manifest_is_a_manifest_error() -> None:
    """disk/ raises its own TableError (a DiskError); the store translates it at its boundary."""
    import json
    from pathlib import Path

    from fleetcast.errors import DiskError, ManifestError
    from fleetcast.store.manifest import Manifest

    path = Path(__file__).parents[2] / "data/v1-image/store/images/v1-sample/manifest.json"
    raw = json.loads(path.read_text())
    raw["table"]["label"] = "sun"
    with pytest.raises(ManifestError) as err:
        Manifest.from_json(json.dumps(raw).encode())
    assert str(err.value) == "partition table: 'label' must be one of gpt, dos, none; found 'sun'"
    assert issubclass(TableError, DiskError) and not issubclass(TableError, ManifestError)
