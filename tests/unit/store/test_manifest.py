"""Manifest schema v1: round trip, and a corpus of malformed manifests with their exact error texts."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

from fleetcast.errors import ManifestError
from fleetcast.store.manifest import Manifest

MiB = 1 << 20
ID_A = "a" * 64
ID_B = "b" * 64
H_1 = "1" * 64
H_2 = "2" * 64
GUID_DISK = "57A5D31C-9013-0848-871A-86C5717F6DAE"
GUID_ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
GUID_P1 = "7F334B92-BFC8-7942-B135-5B30D4076371"


def valid() -> dict[str, Any]:
    return {
        "format": "fleetcast-image",
        "version": 1,
        "name": "lab-1",
        "created": "2026-11-24T21:30:26+00:00",
        "tool_version": "0.1.0",
        "disk": {"size": 8 * MiB, "logical_sector_size": 512, "physical_sector_size": 4096},
        "table": {
            "label": "gpt",
            "id": GUID_DISK,
            "sector_size": 512,
            "first_lba": 2048,
            "last_lba": 16350,
            "table_length": 128,
            "partitions": [
                {
                    "number": 1,
                    "start": 2048,
                    "size": 8192,
                    "type": GUID_ESP,
                    "uuid": GUID_P1,
                    "name": "EFI",
                    "attrs": "",
                    "bootable": False,
                }
            ],
        },
        "chunking": {
            "hash": "blake3",
            "compression": "zstd",
            "chunk_size": MiB,
            "zero_block": 4096,
            "pack_size": 4 * MiB,
        },
        "os_hint": None,
        "packs": [{"id": ID_A, "stored": 100}, {"id": ID_B, "stored": 50}],
        "areas": [
            {
                "kind": "gap",
                "number": None,
                "start": 0,
                "size": MiB,
                "fstype": "raw",
                "os_hint": None,
                "used": MiB,
                "chunks": [{"pack": 0, "hash": H_1, "offset": 0, "window": 0, "extents": [[0, 4096]]}],
                "zeros": [[4096, MiB - 4096]],
            },
            {
                "kind": "partition",
                "number": 1,
                "start": MiB,
                "size": 4 * MiB,
                "fstype": "fat",
                "os_hint": None,
                "used": 2 * MiB,
                "chunks": [
                    {
                        "pack": 1,
                        "hash": H_2,
                        "offset": 0,
                        "window": 0,
                        "extents": [[0, 8192], [65536, 4096]],
                    },
                    {
                        "pack": 0,
                        "hash": H_1,
                        "offset": 4096,
                        "window": MiB,
                        "extents": [[MiB, 4096]],
                    },
                ],
                "zeros": [],
            },
        ],
    }


def test_valid_manifest_round_trips() -> None:
    m = Manifest.from_json(json.dumps(valid()))
    assert m.name == "lab-1"
    assert m.disk_size == 8 * MiB
    assert m.table.label == "gpt"
    assert m.table.partitions[0].uuid == GUID_P1
    assert m.entry_count == 3
    assert m.chunk_ids() == [ID_A, ID_B]
    assert m.stored_bytes == 150
    assert m.data_bytes == 4096 + 12288 + 4096
    assert m.areas[1].chunks[0].length == 12288
    again = Manifest.from_json(m.to_json())
    assert again == m
    assert json.loads(m.to_json()) == valid()


def _set(path: str, value: object) -> Callable[[dict[str, Any]], None]:
    def apply(d: dict[str, Any]) -> None:
        keys: list[Any] = [int(k) if k.isdigit() else k for k in path.split(".")]
        target: Any = d
        for k in keys[:-1]:
            target = target[k]
        if value is _DELETE:
            del target[keys[-1]]
        else:
            target[keys[-1]] = value

    return apply


_DELETE = object()


def _replace_all(new: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    def edit(d: dict[str, Any]) -> None:
        d.clear()
        d.update(new)

    return edit


CORPUS: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    (
        "top not object",
        _replace_all({"x": 1}),
        "manifest is missing 'format', 'version', ",
    ),
    ("format", _set("format", "qcow2"), "manifest 'format' must be 'fleetcast-image'; found 'qcow2'"),
    ("version 3", _set("version", 3), "manifest 'version' must be 1 or 2; found 3"),
    ("version bool", _set("version", True), "manifest 'version' must be 1 or 2; found True"),
    ("version 2 shape", _set("version", 2), "manifest is missing 'index', 'totals'"),
    ("missing disk", _set("disk", _DELETE), "manifest is missing 'disk'"),
    ("unknown field", _set("extra", 1), "manifest has unknown fields 'extra'"),
    (
        "bad name",
        _set("name", "../etc"),
        "manifest 'name' must be 1-128 letters, digits, '.', '_' or '-'; found '../etc'",
    ),
    ("name type", _set("name", 5), "manifest 'name' must be a string; found 5"),
    ("disk size str", _set("disk.size", "8M"), "disk.size must be an integer; found '8M'"),
    ("disk size 0", _set("disk.size", 0), "disk.size must be at least 1; found 0"),
    (
        "sector size",
        _set("disk.logical_sector_size", 1000),
        "disk.logical_sector_size must be a power of two from 512 to 65536; found 1000",
    ),
    (
        "table sector size",
        _set("disk.logical_sector_size", 4096),
        "partition table sector size 512 differs from disk.logical_sector_size 4096",
    ),
    (
        "table label",
        _set("table.label", "apm"),
        "partition table: 'label' must be one of gpt, dos, none; found 'apm'",
    ),
    ("hash", _set("chunking.hash", "md5"), "chunking.hash must be 'blake3'; found 'md5'"),
    ("compression", _set("chunking.compression", "xz"), "chunking.compression must be 'zstd'; found 'xz'"),
    (
        "chunk size",
        _set("chunking.chunk_size", 3 * MiB),
        "chunking.chunk_size must be a power of two from 4096 to 67108864; found 3145728",
    ),
    ("os hint", _set("os_hint", "mac"), "manifest 'os_hint' must be null, 'windows' or 'linux'; found 'mac'"),
    ("areas type", _set("areas", {}), "manifest 'areas' must be a list; found dict"),
    (
        "area kind",
        _set("areas.0.kind", "lvm"),
        "areas[0].kind must be one of partition, disk, gap; found 'lvm'",
    ),
    ("gap number", _set("areas.0.number", 3), "areas[0].number must be null for a gap; found 3"),
    (
        "area beyond disk",
        _set("areas.1.size", 8 * MiB),
        "areas[1] ends at byte 9437184, beyond the end of the disk (8388608 bytes)",
    ),
    (
        "fstype",
        _set("areas.1.fstype", "zfs"),
        "areas[1].fstype must be one of ntfs, ext, fat, swap, xfs, btrfs, bitlocker, raw; found 'zfs'",
    ),
    (
        "used > size",
        _set("areas.1.used", 5 * MiB),
        "areas[1].used (5242880) is larger than the area (4194304 bytes)",
    ),
    (
        "pack id",
        _set("packs.1.id", "A" * 64),
        "packs[1].id must be 64 lower-case hex digits (blake3); found '" + "A" * 64 + "'",
    ),
    (
        "pack id path",
        _set("packs.0.id", "../../etc/passwd"),
        "packs[0].id must be 64 lower-case hex digits (blake3); found '../../etc/passwd'",
    ),
    ("pack twice", _set("packs.1.id", ID_A), f"packs[1].id {ID_A} appears twice"),
    ("pack stored 0", _set("packs.1.stored", 0), "packs[1].stored must be at least 1; found 0"),
    ("packs type", _set("packs", {}), "manifest 'packs' must be a list; found dict"),
    (
        "pack unused",
        lambda d: d["packs"].append({"id": "c" * 64, "stored": 1}),
        f"packs[2] ({'c' * 64}) is not used by any chunk",
    ),
    (
        "pack index",
        _set("areas.1.chunks.0.pack", 5),
        "areas[1].chunks[0].pack 5 is not in 'packs' (2 entries)",
    ),
    (
        "slice hash",
        _set("areas.1.chunks.0.hash", "x"),
        "areas[1].chunks[0].hash must be 64 lower-case hex digits (blake3); found 'x'",
    ),
    (
        "slice offset",
        _set("areas.1.chunks.0.offset", -1),
        "areas[1].chunks[0].offset must be at least 0; found -1",
    ),
    (
        "pack size",
        _set("chunking.pack_size", 4096),
        "chunking.pack_size must be at least 1048576; found 4096",
    ),
    (
        "window unaligned",
        _set("areas.1.chunks.1.window", 4096),
        "areas[1].chunks[1].window must be a multiple of the chunk size 1048576; found 4096",
    ),
    (
        "window order",
        _set("areas.1.chunks.1.window", 0),
        "areas[1].chunks[1].window must be larger than the previous chunk's (0); found 0",
    ),
    (
        "window outside",
        _set("areas.0.chunks.0.window", MiB),
        "areas[0].chunks[0].window 1048576 is outside the area (1048576 bytes)",
    ),
    (
        "no extents",
        _set("areas.1.chunks.0.extents", []),
        "areas[1].chunks[0].extents must be a non-empty list; found []",
    ),
    (
        "extent shape",
        _set("areas.1.chunks.0.extents.0", [0]),
        "areas[1].chunks[0].extents[0] must be [offset, length] integers; found [0]",
    ),
    (
        "extent zero length",
        _set("areas.1.chunks.0.extents.0", [0, 0]),
        "areas[1].chunks[0].extents[0] must have offset >= 0 and length > 0; found [0, 0]",
    ),
    (
        "extent overlap",
        _set("areas.1.chunks.0.extents.1", [4096, 4096]),
        "areas[1].chunks[0].extents[1] starts at 4096, before the end of the previous extent (8192)",
    ),
    (
        "extent outside window",
        _set("areas.1.chunks.0.extents.1", [MiB - 4096, 8192]),
        "areas[1].chunks[0].extents[1] [1044480, 1052672) is outside its window [0, 1048576)",
    ),
    (
        "zeros outside",
        _set("areas.0.zeros.0", [4096, MiB]),
        "areas[0].zeros[0] [4096, 1052672) is outside the area (1048576 bytes)",
    ),
    (
        "areas overlap",
        _set("areas.0.size", 2 * MiB),
        "areas[1] (partition 1) starts at byte 1048576, inside the previous area (ends at 2097152)",
    ),
    (
        "partition not in table",
        _set("areas.1.number", 2),
        "areas[1]: partition 2 is not in the partition table",
    ),
    (
        "partition moved",
        _set("areas.1.start", 2 * MiB),
        "areas[1]: partition 1 is at bytes [2097152, 6291456) but the table puts it at [1048576, 5242880)",
    ),
    (
        "disk area with table",
        _set("areas.1.kind", "disk"),
        "areas[1].number must be null for a disk; found 1",
    ),
]


@pytest.mark.parametrize(("case", "mutate", "message"), CORPUS, ids=[c[0] for c in CORPUS])
def test_malformed_manifest(case: str, mutate: Callable[[dict[str, Any]], None], message: str) -> None:
    d = copy.deepcopy(valid())
    mutate(d)
    with pytest.raises(ManifestError) as err:
        Manifest.from_json(json.dumps(d))
    assert str(err.value).startswith(message), str(err.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "manifest is not valid JSON: Expecting value: line 1 column 1 (char 0)"),
        (b"{", "manifest is not valid JSON: Expecting property name enclosed in double quotes"),
        (b"[]", "manifest must be an object; found list"),
        (b"\xff\xfe", "manifest is not valid JSON: "),
        (b"[" * 100_000, "manifest is not valid JSON: it is nested too deeply"),
    ],
)
def test_not_a_manifest(data: bytes, message: str) -> None:
    with pytest.raises(ManifestError) as err:
        Manifest.from_json(data)
    assert str(err.value).startswith(message)


def test_disk_area_only_without_table() -> None:
    d = valid()
    d["areas"][0]["kind"] = "disk"
    with pytest.raises(ManifestError) as err:
        Manifest.from_json(json.dumps(d))
    assert str(err.value) == "areas[0]: a 'disk' area must cover the whole disk of an unpartitioned image"
