from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from fleetcast.errors import HiveError
from fleetcast.identity.windows import logs
from fleetcast.identity.windows.hive import Hive, read_base_block

Unpack = Callable[..., Path]


def test_dirty_hive_with_logs_is_replayed(hive_file: Unpack, tmp_path: Path) -> None:
    system = hive_file("regipy/SYSTEM_B.xz", "SYSTEM")
    hive_file("regipy/SYSTEM_B.LOG1.xz", "SYSTEM.LOG1")
    hive_file("regipy/SYSTEM_B.LOG2.xz", "SYSTEM.LOG2")
    st = logs.state(system)
    assert st.dirty
    assert [p.name for p in st.logs] == ["SYSTEM.LOG1", "SYSTEM.LOG2"]
    assert st.describe() == "SYSTEM: dirty (sequence 1622/1621; SYSTEM.LOG1, SYSTEM.LOG2)"
    work = tmp_path / "work"
    work.mkdir()
    before = system.read_bytes()
    out = logs.replay(st, work)
    assert system.read_bytes() == before  # the original is never written
    bb = read_base_block(out)
    assert not bb.dirty and bb.checksum_ok
    assert out.read_bytes() != before
    assert Hive(out).get_string("ControlSet001\\Control\\ComputerName\\ComputerName", "ComputerName")


@pytest.mark.parametrize(
    ("foreign_log", "why"),
    [
        (None, "are missing"),
        # issue 13 finding 6: another hive's log is ignored, not reported as damage
        (
            "regipy/SYSTEM_B.LOG1.xz",
            "do not belong to it or are stale (SECURITY.LOG1 ignored: it is the log of hive 'SYSTEM', "
            "not of 'SECURITY')",
        ),
    ],
)
def test_dirty_hive_without_usable_logs_is_refused(
    hive_file: Unpack, tmp_path: Path, foreign_log: str | None, why: str
) -> None:
    sec = hive_file("regipy/SECURITY.xz", "SECURITY")
    if foreign_log is not None:
        hive_file(foreign_log, "SECURITY.LOG1")
    st = logs.state(sec)
    with pytest.raises(HiveError) as exc:
        logs.working_copy(st, tmp_path)
    assert str(exc.value) == (
        f"hive {sec} is dirty (sequence numbers 107 and 106 differ) and its transaction logs "
        f"(.LOG1/.LOG2) {why}"
    )
    assert exc.value.hint is not None and "shutdown /s /t 0" in exc.value.hint


def test_clean_hive_is_edited_from_itself(hive_file: Unpack, tmp_path: Path) -> None:
    sam = hive_file("winreg-kb/SAM.xz", "SAM")
    work = tmp_path / "w"
    work.mkdir()
    path, replayed = logs.working_copy(logs.state(sam), work)
    assert not replayed and path == sam and list(work.iterdir()) == []


def _set_seq(log: Path, seq: int) -> None:
    import struct

    from fleetcast.identity.windows.hive import fix_checksum

    with log.open("r+b") as fh:
        fh.seek(4)
        fh.write(struct.pack("<II", seq, seq))
    fix_checksum(log)


def test_stale_second_log_is_ignored_with_a_warning(hive_file: Unpack, tmp_path: Path) -> None:
    """Issue 13 finding 2: a log whose sequence precedes the hive's last write is not replayed."""
    system = hive_file("regipy/SYSTEM_B.xz", "SYSTEM")
    hive_file("regipy/SYSTEM_B.LOG1.xz", "SYSTEM.LOG1")
    log2 = hive_file("regipy/SYSTEM_B.LOG2.xz", "SYSTEM.LOG2")
    _set_seq(log2, 1600)  # the hive is 1622/1621: LOG2 is stale
    st = logs.state(system)
    usable, warned = logs.usable_logs(st)
    assert [p.name for p in usable] == ["SYSTEM.LOG1"]
    assert warned == ["warning: SYSTEM.LOG2 ignored: stale (sequence 1600, the hive was written up to 1621)"]
    work = tmp_path / "work"
    work.mkdir()
    out = logs.replay(st, work)
    assert not read_base_block(out).dirty


def test_a_replay_that_only_lenient_readers_accept_is_refused(
    hive_file: Unpack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 13 finding 2's last line: the replayed hive must pass the strict check (fsck) before
    anything is built on it, not only hivex and regipy. Here the real SYSTEM_B replay comes back with a
    32 KB value in one plain cell (what hivex writes; Windows and dissect.regf cannot read it in a
    format-1.5 hive): hivex and regipy read it, the run refuses it."""
    from fleetcast.identity.windows import replay as replay_mod
    from fleetcast.identity.windows.hive import REG_BINARY

    system = hive_file("regipy/SYSTEM_B.xz", "SYSTEM")
    hive_file("regipy/SYSTEM_B.LOG1.xz", "SYSTEM.LOG1")
    hive_file("regipy/SYSTEM_B.LOG2.xz", "SYSTEM.LOG2")
    assert read_base_block(system).minor == 5
    real = replay_mod.replay

    def lenient(hive: bytes, logs_: list[tuple[str, bytes]]) -> replay_mod.Replayed:
        res = real(hive, logs_)
        good = tmp_path / "good"
        good.write_bytes(res.data)
        h = Hive(good, write=True)
        h.set_value(h.root(), "Tile", REG_BINARY, bytes(32768))
        h.commit(tmp_path / "bad")
        return dataclasses.replace(res, data=(tmp_path / "bad").read_bytes())

    monkeypatch.setattr(replay_mod, "replay", lenient)
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(HiveError) as exc:
        logs.replay(logs.state(system), work)
    assert str(exc.value).startswith(f"hive {system} is dirty and its logs replay into a damaged hive (")
    assert "Tile: 32768 bytes in one plain cell" in str(exc.value)
