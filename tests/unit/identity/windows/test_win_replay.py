"""fleetcast's own transaction-log replay (replay.py, issue 13 finding 2) on real dirty hives in both
log formats, against what Windows itself recovered from the same files (yarp's test hives: Windows 10
for the new format, Windows 7 for the old), against regipy on a real Windows 10 SYSTEM, and on logs
damaged on purpose (torn entries, gaps, stale and foreign logs, bounds)."""

from __future__ import annotations

import lzma
import struct
from pathlib import Path

import pytest
from Registry import Registry
from tests.fixtures.windows_tree import HIVES_DIR
from tests.unit.identity.windows.test_win_fsck import dissect_keys

from fleetcast.errors import HiveError
from fleetcast.identity.windows import logs
from fleetcast.identity.windows.fsck import fsck
from fleetcast.identity.windows.replay import checksum, marvin32, replay


def _raw(rel: str) -> bytes:
    return lzma.decompress((HIVES_DIR / rel).read_bytes())


def _yarp(case: str, *names: str) -> list[tuple[str, bytes]]:
    return [(n, _raw(f"yarp/{case}-{n}.xz")) for n in names]


def _open(tmp_path: Path, data: bytes, name: str = "hive") -> Registry.Registry:
    path = tmp_path / name
    path.write_bytes(data)
    return Registry.Registry(str(path))


def test_new_format_equals_what_windows_10_recovered() -> None:
    hive = _raw("yarp/NewDirtyHive1-NewDirtyHive.xz")
    r = replay(hive, _yarp("NewDirtyHive1", "NewDirtyHive.LOG1", "NewDirtyHive.LOG2"))
    assert r.applied == ("NewDirtyHive.LOG1", "NewDirtyHive.LOG2")
    assert (r.entries, r.pages, r.seq) == (4, 4, 5)
    assert r.notes == (
        "NewDirtyHive.LOG1: entries 2-2 applied (end of file at offset 24576)",
        "NewDirtyHive.LOG2: entries 3-5 applied (no entry at offset 40960)",
    )
    windows = _raw("yarp/NewDirtyHive1-RecoveredHive_Windows10.xz")
    assert r.data[4096:] == windows[4096:]  # every byte of the hive bins data, and the file's length
    assert struct.unpack_from("<II", r.data, 4) == (5, 5)
    assert struct.unpack_from("<I", r.data, 508)[0] == checksum(r.data[:512])


def test_new_format_stale_first_log_is_left_out(tmp_path: Path) -> None:
    hive = _raw("yarp/NewDirtyHive2-NewDirtyHive.xz")  # sequence 4/3: LOG1 (2) is older than the hive
    r = replay(hive, _yarp("NewDirtyHive2", "NewDirtyHive.LOG1", "NewDirtyHive.LOG2"))
    assert r.applied == ("NewDirtyHive.LOG2",) and r.seq == 5
    assert r.notes == (
        "NewDirtyHive.LOG1: stale (sequence 2, the hive was written up to 3); not applied",
        "NewDirtyHive.LOG2: entries 3-5 applied (no entry at offset 40960)",
    )
    reg = _open(tmp_path, r.data)
    assert reg.open("Key3\\Key3_2") is not None and len(reg.open("Key3").value("").value()) == 1440


def test_old_format_matches_windows_7(tmp_path: Path) -> None:
    hive = _raw("yarp/OldDirtyHive-OldDirtyHive.xz")
    before = _open(tmp_path, hive, "before")
    with pytest.raises(Registry.RegistryKeyNotFoundException):
        before.open("key_with_many_subkeys\\5000\\find_me_in_log")
    r = replay(hive, _yarp("OldDirtyHive", "OldDirtyHive.LOG1"))
    assert (r.applied, r.entries, r.pages) == (("OldDirtyHive.LOG1",), 0, 64)
    assert r.notes == ("OldDirtyHive.LOG1: 64 dirty page(s) applied (old format)",)
    ours = _open(tmp_path, r.data, "ours")
    windows = _open(tmp_path, _raw("yarp/OldDirtyHive-RecoveredHive_Windows7.xz"), "windows")
    key = "key_with_many_subkeys\\5000\\find_me_in_log"
    assert ours.open(key).timestamp() == windows.open(key).timestamp()
    v = "key_with_many_subkeys\\4500"
    assert ours.open(v).value("V").value() == windows.open(v).value("v").value() == ["a", "bb", "ccc", "", ""]
    with pytest.raises(Registry.RegistryKeyNotFoundException):
        ours.open("key_with_many_subkeys\\1")  # deleted in the log, as in Windows' recovery
    assert fsck(tmp_path / "ours").errors == []


@pytest.mark.parametrize(
    ("case", "names", "message"),
    [
        ("BadLogHive1", ("BadLogHive.LOG1",),
         "no transaction log can be applied: BadLogHive.LOG1: its base block checksum is wrong; not applied"),
        ("BadLogHive2", ("BadLogHive.LOG1",), "BadLogHive.LOG1: no 'DIRT' dirty vector at offset 512"),
        ("BadLogHive3", ("BadLogHive.LOG1", "BadLogHive.LOG2"),
         "no transaction log can be applied: BadLogHive.LOG1: its base block checksum is wrong; not applied; "
         "BadLogHive.LOG2: its base block checksum is wrong; not applied"),
    ],
)  # fmt: skip
def test_bad_logs_are_refused(case: str, names: tuple[str, ...], message: str) -> None:
    with pytest.raises(HiveError) as exc:
        replay(_raw(f"yarp/{case}-BadLogHive.xz"), _yarp(case, *names))
    assert str(exc.value) == message


def _system_b() -> tuple[bytes, bytes, bytes]:
    return _raw("regipy/SYSTEM_B.xz"), _raw("regipy/SYSTEM_B.LOG1.xz"), _raw("regipy/SYSTEM_B.LOG2.xz")


def test_windows_10_system_like_regipy(tmp_path: Path) -> None:
    """A real Windows 10 SYSTEM (1622/1621) whose logs continue each other (2107-2110, 2111-2130): all
    24 entries apply, and the result is regipy's, page for page (regipy applies every entry it sees)."""
    import importlib
    import warnings
    from typing import Any

    recovery: Any = importlib.import_module("regipy.recovery")

    hive, log1, log2 = _system_b()
    r = replay(hive, [("SYSTEM.LOG1", log1), ("SYSTEM.LOG2", log2)])
    assert (r.entries, r.pages, r.seq) == (24, 315, 2130)
    for name, data in (("SYSTEM", hive), ("SYSTEM.LOG1", log1), ("SYSTEM.LOG2", log2)):
        (tmp_path / name).write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        recovery.apply_transaction_logs(
            str(tmp_path / "SYSTEM"), str(tmp_path / "SYSTEM.LOG2"),
            secondary_log_path=str(tmp_path / "SYSTEM.LOG1"), restored_hive_path=str(tmp_path / "regipy"),
        )  # fmt: skip
    theirs = (tmp_path / "regipy").read_bytes()
    assert r.data[4096:] == theirs[4096:]


def _rehash(log: bytearray, off: int) -> None:
    size = struct.unpack_from("<I", log, off + 4)[0]
    struct.pack_into("<Q", log, off + 24, marvin32(bytes(log[off + 40 : off + size])))
    struct.pack_into("<Q", log, off + 32, marvin32(bytes(log[off : off + 32])))


def _entry_offsets(log: bytes) -> list[int]:
    out, off = [], 512
    while log[off : off + 4] == b"HvLE":
        out.append(off)
        off += struct.unpack_from("<I", log, off + 4)[0]
    return out


def test_a_torn_entry_ends_the_replay_there() -> None:
    hive, log1, log2 = _system_b()
    torn = bytearray(log2)
    fifth = _entry_offsets(log2)[4]
    torn[fifth + 600] ^= 0xFF  # one byte of a page: hash-1 no longer matches
    r = replay(hive, [("SYSTEM.LOG1", log1), ("SYSTEM.LOG2", bytes(torn))])
    assert r.seq == 2114 and r.entries == 8
    assert r.notes[-1] == (
        f"SYSTEM.LOG2: entries 2111-2114 applied (entry at offset {fifth} (sequence 2115): its hashes do not "
        "match (torn or overwritten))"
    )


def test_a_log_that_does_not_continue_is_left_out() -> None:
    hive, log1, log2 = _system_b()
    gap = bytearray(log2)
    struct.pack_into("<II", gap, 4, 2112, 2112)  # LOG2 now starts one after where LOG1 ends (2110 + 1)
    struct.pack_into("<I", gap, 508, checksum(bytes(gap[:512])))
    r = replay(hive, [("SYSTEM.LOG1", log1), ("SYSTEM.LOG2", bytes(gap))])
    assert r.applied == ("SYSTEM.LOG1",) and r.seq == 2110
    assert r.notes == (
        "SYSTEM.LOG2: no valid log entry (entry at offset 512: sequence 2111 where 2112 was next); "
        "not applied",
        "SYSTEM.LOG1: entries 2107-2110 applied (no entry at offset 57344)",
    )


def test_entry_fields_are_bounds_checked() -> None:
    hive, log1, _ = _system_b()
    first = _entry_offsets(log1)[0]
    cases = {
        "page": (first + 40, struct.pack("<I", 12398592), "page 0 (12398592+4096) is out of bounds"),
        "hbins": (first + 16, struct.pack("<I", 12398593), "hive bins data size 12398593 is not a multiple"),
        "count": (first + 20, struct.pack("<I", 10_000), "10000 pages do not fit its 15872 bytes"),
    }
    for what, (at, value, text) in cases.items():
        bad = bytearray(log1)
        bad[at : at + len(value)] = value
        _rehash(bad, first)  # valid hashes: the field check itself must refuse it
        with pytest.raises(HiveError) as exc:
            replay(hive, [("SYSTEM.LOG1", bytes(bad))])
        assert text in str(exc.value), what
    cut = log1[: first + 100]
    with pytest.raises(HiveError) as exc:
        replay(hive, [("SYSTEM.LOG1", cut)])
    assert str(exc.value) == (
        "no transaction log can be applied: SYSTEM.LOG1: no valid log entry (entry at offset 512: size 15872 "
        "is not a multiple of 512 inside the file); not applied"
    )


def test_logs_replay_uses_it_and_reports_it(tmp_path: Path) -> None:
    """logs.replay (what inspect and personalize call) goes through replay.py: the copy passes fsck and
    hivex, and its notes say what was applied."""
    for name in ("NewDirtyHive", "NewDirtyHive.LOG1", "NewDirtyHive.LOG2"):
        (tmp_path / name).write_bytes(_raw(f"yarp/NewDirtyHive2-{name}.xz"))
    work = tmp_path / "work"
    work.mkdir()
    st = logs.state(tmp_path / "NewDirtyHive")
    usable, warned = logs.usable_logs(st)
    assert [p.name for p in usable] == ["NewDirtyHive.LOG2"]  # LOG1 is stale: kept away already
    assert warned == ["warning: NewDirtyHive.LOG1 ignored: stale (sequence 2, the hive was written up to 3)"]
    copy = logs.replay(st, work)
    assert logs.replay_notes(copy) == ("NewDirtyHive.LOG2: entries 3-5 applied (no entry at offset 40960)",)
    reg = Registry.Registry(str(copy))
    assert [k.name() for k in reg.open("Key3").subkeys()] == ["Key3_1", "Key3_2", "Key3_3"]
    assert fsck(copy).errors == []


def _user_hive(tmp_path: Path, name: str, files: tuple[str, str, str]) -> logs.HiveState:
    hive, log1, log2 = files
    for dest, src in ((name, hive), (f"{name}.LOG1", log1), (f"{name}.LOG2", log2)):
        (tmp_path / dest).write_bytes(_raw(f"regipy/{src}.xz"))
    return logs.state(tmp_path / name)


def test_finding_2_dirty_user_hive_with_a_stale_second_log(tmp_path: Path) -> None:
    """Issue 13 finding 2 on the real hive: NTUSER.DAT at 567/566 (format 1.5), LOG1 holding entries
    566-588, LOG2 one stale entry (562). Replaying LOG2 too gave 44 bad cell references; by the rules
    only LOG1 applies, and the result is sound: 3,105 keys by fsck, python-registry and dissect.regf."""
    st = _user_hive(tmp_path, "NTUSER.DAT", (
        "transactions_NTUSER.DAT", "transactions_ntuser.dat.log1", "transactions_ntuser.dat.log2",
    ))  # fmt: skip
    assert (st.base.seq1, st.base.seq2, st.base.minor) == (567, 566, 5)
    work = tmp_path / "work"
    work.mkdir()
    copy = logs.replay(st, work)
    assert logs.replay_notes(copy) == (
        "NTUSER.DAT.LOG1: entries 566-588 applied (end of file at offset 1126400)",
    )
    result = fsck(copy)
    assert (result.keys, result.unreachable, result.errors) == (3105, [], [])
    reg = Registry.Registry(str(copy))

    def count(key: Registry.RegistryKey) -> int:
        return 1 + sum(count(k) for k in key.subkeys())

    assert count(reg.root()) == 3105
    assert dissect_keys(copy) == 3105
    # the stale log alone, given to replay.py directly, is refused by the same rule
    with pytest.raises(HiveError) as exc:
        replay(
            (tmp_path / "NTUSER.DAT").read_bytes(),
            [("NTUSER.DAT.LOG2", (tmp_path / "NTUSER.DAT.LOG2").read_bytes())],
        )
    assert str(exc.value) == (
        "no transaction log can be applied: NTUSER.DAT.LOG2: stale (sequence 562, the hive was written up to "
        "566); not applied"
    )


def test_dirty_usrclass_whose_logs_continue_each_other(tmp_path: Path) -> None:
    """UsrClass.dat at 256/255: LOG1 holds 287-290, LOG2 291-300; both apply, in that order."""
    st = _user_hive(tmp_path, "UsrClass.dat", ("UsrClass.dat", "UsrClass.dat.LOG1", "UsrClass.dat.LOG2"))
    work = tmp_path / "work"
    work.mkdir()
    copy = logs.replay(st, work)
    assert logs.replay_notes(copy) == (
        "UsrClass.dat.LOG1: entries 287-290 applied (no entry at offset 319488)",
        "UsrClass.dat.LOG2: entries 291-300 applied (no entry at offset 552960)",
    )
    result = fsck(copy)
    assert (result.keys, result.unreachable, result.errors) == (6238, [], [])
    assert dissect_keys(copy) == 6238


def test_a_damaged_base_block_is_taken_from_the_log(tmp_path: Path) -> None:
    """yarp's BadBaseBlockHive: the hive's base block has a wrong checksum (and a bogus version), so
    the hive is dirty whatever its sequence numbers say; its old-format log brings the base block
    back (as Windows does), and the hive reads whole."""
    for name in ("BadBaseBlockHive", "BadBaseBlockHive.LOG1"):
        (tmp_path / name).write_bytes(_raw(f"yarp/BadBaseBlockHive-{name}.xz"))
    st = logs.state(tmp_path / "BadBaseBlockHive")
    assert st.dirty and not st.base.checksum_ok
    assert st.describe() == (
        "BadBaseBlockHive: dirty, base block checksum wrong (sequence 5/4; BadBaseBlockHive.LOG1)"
    )
    work = tmp_path / "work"
    work.mkdir()
    copy = logs.replay(st, work)
    assert logs.replay_notes(copy) == (
        "BadBaseBlockHive.LOG1: 64 dirty page(s) applied (old format)",
        "the hive's base block checksum is wrong: its base block is taken from BadBaseBlockHive.LOG1",
    )
    data = copy.read_bytes()
    assert struct.unpack_from("<II", data, 20) == (1, 3)  # the version the log's base block holds
    result = fsck(copy)
    assert (result.keys, result.errors, result.unreachable) == (5003, [], [])
    assert Registry.Registry(str(copy)).open("key_with_many_subkeys") is not None


def test_a_damaged_base_block_without_logs_is_refused(tmp_path: Path) -> None:
    hive = tmp_path / "SOFTWARE"
    hive.write_bytes(_raw("yarp/BadBaseBlockHive-BadBaseBlockHive.xz"))
    with pytest.raises(HiveError) as exc:
        logs.working_copy(logs.state(hive), tmp_path)
    assert str(exc.value) == (
        f"hive {hive} is dirty (its base block checksum is wrong) and its transaction logs (.LOG1/.LOG2) "
        "are missing"
    )
