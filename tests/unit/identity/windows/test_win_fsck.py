"""The structural hive check (fsck) on every real test hive, on what hivex writes, and dissect.regf
(a third reader, beside regipy and python-registry) on personalized hives (issue 13)."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from dissect.regf import RegistryHive  # type: ignore[import-untyped]
from tests.fixtures.windows_tree import TreeInfo

from fleetcast.errors import HiveError
from fleetcast.identity.windows.fsck import fsck, require_sound
from fleetcast.identity.windows.hive import REG_BINARY, Hive, fix_checksum
from fleetcast.identity.windows.personalizer import Options, personalize

Unpack = Callable[..., Path]
CONFIG = Path("Windows/System32/config")


@pytest.mark.parametrize(
    ("rel", "expected"),
    [
        ("regipy/SAM.xz", (65, 70, 0, [])),
        ("regipy/SYSTEM.xz", (30756, 73456, 8, [])),
        ("winreg-kb/SAM.xz", (76, 84, 0, [])),
        ("winreg-kb/SECURITY.xz", (101, 110, 0, [])),
        ("winreg-kb/NTUSER.DAT.xz", (1597, 2310, 0, [])),
        ("turbinia/SAM.xz", (94, 106, 0, [])),
        ("frnsc-hive/SAM.xz", (94, 106, 0, [])),
        ("frnsc-hive/SECURITY.xz", (85, 93, 0, ["base block: sequence numbers 140 and 139 differ (dirty)"])),
        (
            "frnsc-hive/NTUSER.DAT.xz",
            (2020, 3069, 0, ["base block: sequence numbers 517 and 516 differ (dirty)"]),
        ),
        ("regipy/SECURITY.xz", (100, 109, 0, ["base block: sequence numbers 107 and 106 differ (dirty)"])),
        (
            "regipy/SYSTEM_WIN_10_1709.xz",
            (43211, 90307, 4, ["base block: sequence numbers 4317 and 4316 differ (dirty)"]),
        ),
    ],
)
def test_real_hives(hive_file: Unpack, rel: str, expected: tuple[int, int, int, list[str]]) -> None:
    """(keys, values, big-data values, errors) of each real hive; none has an unreachable cell."""
    res = fsck(hive_file(rel))
    assert (res.keys, res.values, res.big_values, res.errors) == expected
    assert res.unreachable == []


def test_damaged_hive_is_found(hive_file: Unpack) -> None:
    path = hive_file("regipy/corrupted_system_hive.xz")
    with pytest.raises(HiveError) as exc:
        require_sound(path)
    assert str(exc.value).startswith(
        f"hive {path} fails the structural check: expected 'hbin' at file offset 0x1a000, found "
    )


def test_a_big_value_in_one_plain_cell_of_a_format_1_5_hive_is_found(
    hive_file: Unpack, tmp_path: Path
) -> None:
    """What hivex writes for a 32 KB value (a UserTile): one plain cell. Windows and dissect.regf read
    values over 16,344 bytes of a format 1.4+ hive only as big-data records."""
    src = hive_file("winreg-kb/SAM.xz")
    with src.open("r+b") as fh:  # the same hive, declared format 1.5 (as Windows 8+ writes it)
        fh.seek(24)
        fh.write(struct.pack("<I", 5))
    fix_checksum(src)
    assert fsck(src).errors == []
    h = Hive(src, write=True)
    node = h.node("SAM\\Domains\\Account\\Users\\000001F4")
    assert node is not None
    h.set_value(node, "UserTile", REG_BINARY, bytes(range(256)) * 128)
    out = tmp_path / "out"
    h.commit(out)
    errors = fsck(out).errors
    assert errors == [
        "value SAM\\Domains\\Account\\Users\\000001F4\\UserTile: 32768 bytes in one plain cell; a format 1.5 "
        "hive keeps values over 16344 bytes as big-data (db) records"
    ]


def dissect_keys(path: Path) -> int:
    """Every key and value of the hive read by dissect.regf (a third reader); the number of keys."""
    with path.open("rb") as fh:
        hive = RegistryHive(fh)

        def walk(key: object) -> int:
            n = 1
            for v in key.values():  # type: ignore[attr-defined]
                _ = v.value
            for sub in key.subkeys():  # type: ignore[attr-defined]
                n += walk(sub)
            return n

        return walk(hive.root())


def test_personalized_hives_are_sound_and_read_by_dissect(tree: TreeInfo) -> None:
    root = tree.root
    counts = {n: fsck(root / CONFIG / n).keys for n in ("SAM", "SECURITY", "SOFTWARE", "SYSTEM")}
    personalize(root, Options(name="PC-FSCK", new_sid=True, sid_seed="fsck"))
    for name, keys in counts.items():
        res = require_sound(root / CONFIG / name, max_unreachable=0)
        assert res.keys == keys, name
        assert dissect_keys(root / CONFIG / name) == keys, name
