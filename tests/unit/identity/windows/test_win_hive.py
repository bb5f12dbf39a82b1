from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from Registry import Registry
from tests.fixtures.windows_tree import empty_hive

from fleetcast.errors import HiveError
from fleetcast.identity.windows.hive import (
    REG_BINARY,
    REG_SZ,
    Hive,
    base_block_checksum,
    encode_sz,
    read_base_block,
    scrub,
)

Unpack = Callable[..., Path]


def test_truncated_hive(hive_file: Unpack, tmp_path: Path) -> None:
    full = hive_file("winreg-kb/SAM.xz")
    cut = tmp_path / "SAM.cut"
    cut.write_bytes(full.read_bytes()[:20_000])
    with pytest.raises(HiveError) as exc:
        Hive(cut)
    assert str(exc.value) == f"hive {cut} is truncated: its header declares 32768 bytes, the file has 20000"
    tiny = tmp_path / "tiny"
    tiny.write_bytes(full.read_bytes()[:5000])
    with pytest.raises(HiveError) as exc:
        Hive(tiny)
    assert str(exc.value) == f"hive {tiny} is truncated: 5000 bytes, a hive needs at least 8192"
    assert exc.value.hint is not None and "RegBack" in exc.value.hint


def test_truncated_user_hive_hint_names_no_regback(hive_file: Unpack, tmp_path: Path) -> None:
    """Issue 13 finding 7: RegBack holds no user hives."""
    cut = tmp_path / "NTUSER.DAT"
    cut.write_bytes(hive_file("winreg-kb/NTUSER.DAT.xz").read_bytes()[:20_000])
    with pytest.raises(HiveError) as exc:
        Hive(cut)
    assert exc.value.hint == (
        "copy the hive again from its source, or restore the user's profile folder from a backup"
    )


def test_wrong_magic(tmp_path: Path) -> None:
    bad = tmp_path / "SYSTEM"
    bad.write_bytes(b"MZ\x90\x00" + bytes(9000))
    with pytest.raises(HiveError) as exc:
        Hive(bad)
    assert (
        str(exc.value) == f"{bad} is not a registry hive: expected magic 'regf' at offset 0, found 4d5a9000"
    )
    empty = tmp_path / "EMPTY"
    empty.write_bytes(b"")
    with pytest.raises(HiveError) as exc:
        Hive(empty)
    assert (
        str(exc.value)
        == f"{empty} is not a registry hive: expected magic 'regf' at offset 0, found an empty file"
    )


def test_corrupted_hive_gets_a_clear_error(hive_file: Unpack) -> None:
    bad = hive_file("regipy/corrupted_system_hive.xz")
    with pytest.raises(HiveError) as exc:
        Hive(bad)
    assert str(exc.value) == f"hive {bad} is damaged: hivex cannot parse it (Operation not supported)"
    assert exc.value.hint is not None and "RegBack" in exc.value.hint


def test_missing_hive(tmp_path: Path) -> None:
    with pytest.raises(HiveError) as exc:
        Hive(tmp_path / "nope")
    assert str(exc.value) == f"hive {tmp_path / 'nope'} does not exist"


def test_checksum_matches_real_hive(hive_file: Unpack) -> None:
    sam = hive_file("winreg-kb/SAM.xz")
    block = sam.read_bytes()[:4096]
    assert base_block_checksum(block) == struct.unpack_from("<I", block, 508)[0]
    assert read_base_block(sam).checksum_ok


def test_empty_hive_is_read_by_independent_parsers(tmp_path: Path) -> None:
    path = tmp_path / "SOFTWARE"
    empty_hive(path)
    h = Hive(path, write=True)
    node = h.ensure_path("A\\B")
    h.set_value(node, "s", REG_SZ, encode_sz("hello"))
    h.set_value(node, "t", 0x3EA, b"")
    out = tmp_path / "OUT"
    h.commit(out)
    reg = Registry.Registry(str(out))
    key = reg.open("A\\B")
    assert key.value("s").value() == "hello"
    assert key.value("t").value_type() == 0x3EA  # any type survives


def test_case_insensitive_lookup_and_rename_keeps_values(tmp_path: Path) -> None:
    path = tmp_path / "H"
    empty_hive(path)
    h = Hive(path, write=True)
    node = h.ensure_path("Keys\\Old")
    h.set_value(node, "bin", REG_BINARY, b"\x01\x02")
    h.set_value(h.ensure_path("Keys\\Old\\Child"), "", 0x1F4, b"")
    assert h.node("keys\\OLD") == node
    h.rename_key(node, "New")
    assert h.node("Keys\\Old") is None
    new = h.node("Keys\\New\\Child")
    assert new is not None and h.values(new)[0].type == 0x1F4
    assert h.get("Keys\\New", "BIN") is not None


def test_scrub_zeroes_freed_cells(tmp_path: Path) -> None:
    path = tmp_path / "H"
    empty_hive(path)
    h = Hive(path, write=True)
    node = h.ensure_path("K")
    marker = "SECRET-MARKER-VALUE"
    h.set_value(node, "v", REG_SZ, encode_sz(marker))
    h.set_value(node, "v", REG_SZ, encode_sz("replaced"))
    out = tmp_path / "OUT"
    h.commit(out)
    assert marker.encode("utf-16-le") in out.read_bytes()  # hivex leaves the old data in a free cell
    res = scrub(out, old=None, new=None, all_cells=False)
    assert res.free_cells_zeroed > 0
    assert marker.encode("utf-16-le") not in out.read_bytes()
    assert Hive(out).get_string("K", "v") == "replaced"


def test_damage_found_after_opening_is_a_hive_error(tmp_path: Path) -> None:
    """hivex opens a hive whose subkey list points outside it; walking it then fails in hivex."""
    empty_hive(tmp_path / "H")
    h = Hive(tmp_path / "H", write=True)
    a = h.add_key(h.root(), "A")
    h.add_key(a, "B")
    h.commit(tmp_path / "H2")
    raw = bytearray((tmp_path / "H2").read_bytes())
    lh = raw.rfind(b"lh")  # A's subkey list, written after the root's
    struct.pack_into("<I", raw, lh + 4, 0x7FFFF0)
    (tmp_path / "H3").write_bytes(raw)
    damaged = Hive(tmp_path / "H3")
    with pytest.raises(HiveError) as exc:
        damaged.dump()
    assert str(exc.value) == f"hive {tmp_path / 'H3'} is damaged: hivex node_children failed (Bad address)"


def test_regipy_parse_error_is_a_hive_error(tmp_path: Path) -> None:
    """regipy (construct) fails on a subkey list pointing outside the hive with a StreamError."""
    from fleetcast.identity.windows.txn import RegipyView

    empty_hive(tmp_path / "H")
    h = Hive(tmp_path / "H", write=True)
    h.add_key(h.add_key(h.root(), "A"), "B")
    h.commit(tmp_path / "H2")
    raw = bytearray((tmp_path / "H2").read_bytes())
    struct.pack_into("<I", raw, raw.rfind(b"lh") + 4, 0x7FFFF0)
    (tmp_path / "H3").write_bytes(raw)
    with pytest.raises(HiveError) as exc:
        RegipyView(tmp_path / "H3")
    assert str(exc.value) == (
        f"hive {tmp_path / 'H3'}: independent check with regipy failed: Error in path (parsing) "
        "stream read less than specified amount, expected 4, found 0"
    )


def test_scrub_replaces_headerless_sid_fragments_in_live_cells_of_sam_and_security(tmp_path: Path) -> None:
    """Slack of a live cell can hold the tail of an older SID (its domain words without the
    revision/count header); in SAM and SECURITY those words go too, elsewhere only whole SIDs."""
    from fleetcast.identity.windows.sid import Sid

    old, new = Sid.parse("S-1-5-21-1111111111-2222222222-3333333333"), Sid.parse("S-1-5-21-7-8-9")
    fragment = old.child(1001).to_bytes()[12:]  # a, b, c, RID: no header, no 21
    path = tmp_path / "H"
    empty_hive(path)
    h = Hive(path, write=True)
    h.set_value(h.ensure_path("K"), "tail", REG_BINARY, b"\xaa" * 7 + fragment)
    h.commit(tmp_path / "A")
    (tmp_path / "B").write_bytes((tmp_path / "A").read_bytes())
    words = struct.pack("<3I", 1111111111, 2222222222, 3333333333)
    assert scrub(tmp_path / "A", old=old, new=new, all_cells=False).fragments_replaced == 0
    assert words in (tmp_path / "A").read_bytes()
    res = scrub(tmp_path / "B", old=old, new=new, all_cells=True)
    assert res.fragments_replaced == 1 and res.other_sids_replaced == 0
    assert words not in (tmp_path / "B").read_bytes()
    got = Hive(tmp_path / "B").get("K", "tail")
    assert got is not None and got.data == b"\xaa" * 7 + struct.pack("<4I", 7, 8, 9, 1001)
