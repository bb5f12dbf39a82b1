"""Format-2 manifests: the consistency checks, each refused with its exact text."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

from fleetcast.errors import ManifestError
from fleetcast.store.manifest import Manifest, image_id

H = "ab" * 32


def valid2() -> dict[str, Any]:
    return {
        "format": "fleetcast-image",
        "version": 2,
        "name": "bare",
        "created": "2026-12-02T21:00:00+00:00",
        "tool_version": "0.1.0",
        "disk": {"size": 1 << 20, "logical_sector_size": 512, "physical_sector_size": 512},
        "table": {
            "label": "none",
            "id": "",
            "sector_size": 512,
            "first_lba": None,
            "last_lba": None,
            "table_length": None,
            "partitions": [],
        },
        "chunking": {
            "hash": "blake3",
            "compression": "zstd",
            "chunk_size": 65536,
            "zero_block": 4096,
            "pack_size": 65536,
        },
        "os_hint": None,
        "packs": [{"id": H, "stored": 100, "hash": "cd" * 32}],
        "areas": [
            {
                "kind": "disk",
                "number": None,
                "start": 0,
                "size": 1 << 20,
                "fstype": "raw",
                "os_hint": None,
                "used": 16384,
                "data": 8192,
                "skipped": 4096,
                "entries": 2,
                "zeros": [[0, 4096]],
            }
        ],
        "index": {"hash": "ef" * 32, "size": 200, "entries": 2},
        "totals": {"used": 16384, "data": 8192, "stored": 100, "entries": 2, "packs": 1},
    }


def _set(path: str, value: object) -> Callable[[dict[str, Any]], None]:
    def edit(d: dict[str, Any]) -> None:
        *head, last = path.split(".")
        for k in head:
            d = d[int(k)] if isinstance(d, list) else d[k]
        d[last] = value

    return edit


CASES = [
    (
        "used",
        _set("areas.0.used", 16385),
        "areas[0].used (16385) is not data (8192) + zeros (4096) + skipped (4096)",
    ),
    ("entries", _set("areas.0.entries", 3), "the areas hold 3 entries but index.entries is 2"),
    ("totals", _set("totals.data", 1), "totals.data is 1 but the areas and packs add up to 8192"),
    (
        "pack hash",
        _set("packs.0.hash", "x"),
        "packs[0].hash must be 64 lower-case hex digits (blake3); found 'x'",
    ),
    ("no entries", _set("areas.0.entries", 0), "areas[0] has 0 entries for 8192 bytes of data"),
    ("index keys", _set("index", {"hash": H}), "manifest 'index' is missing 'size', 'entries'"),
]


@pytest.mark.parametrize(("edit", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_inconsistent_v2_manifest(edit: Callable[[dict[str, Any]], None], message: str) -> None:
    d = copy.deepcopy(valid2())
    edit(d)
    with pytest.raises(ManifestError) as err:
        Manifest.from_json(json.dumps(d))
    assert err.value.message == message


def test_v2_round_trip_is_byte_exact() -> None:
    data = json.dumps(valid2(), separators=(",", ":")).encode() + b"\n"
    m = Manifest.from_json(data)
    assert m.version == 2 and m.entry_count == 2 and m.pack_ids() == [H]
    assert m.to_json() == data
    assert image_id(data) == image_id(m.to_json())


def test_os_info_is_optional_and_round_trips() -> None:
    d = valid2()
    info = {"product": "Windows 11 Pro", "build": 22631, "generalized": True, "machine_sid": "S-1-5-21-1-2-3"}
    d["areas"][0]["os_info"] = info
    data = json.dumps(d, separators=(",", ":")).encode() + b"\n"
    m = Manifest.from_json(data)
    assert m.areas[0].os_info == info and m.to_json() == data
    d["areas"][0]["os_info"] = "windows"
    with pytest.raises(ManifestError) as err:
        Manifest.from_json(json.dumps(d))
    assert err.value.message == "areas[0].os_info must be an object; found str"
    d["areas"][0]["os_info"] = {"x": "y" * 9000}
    with pytest.raises(ManifestError) as err:
        Manifest.from_json(json.dumps(d))
    assert err.value.message == "areas[0].os_info is 9008 bytes of JSON, more than 8192"
