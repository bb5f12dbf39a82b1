from __future__ import annotations

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


def test_dirty_hive_without_logs_is_refused(hive_file: Unpack, tmp_path: Path) -> None:
    sec = hive_file("regipy/SECURITY.xz", "SECURITY")
    st = logs.state(sec)
    with pytest.raises(HiveError) as exc:
        logs.working_copy(st, tmp_path)
    assert str(exc.value) == (
        f"hive {sec} is dirty (sequence numbers 107 and 106 differ) and its transaction logs "
        "(.LOG1/.LOG2) are missing"
    )
    assert exc.value.hint is not None and "shutdown /s /t 0" in exc.value.hint


def test_clean_hive_is_edited_from_itself(hive_file: Unpack, tmp_path: Path) -> None:
    sam = hive_file("winreg-kb/SAM.xz", "SAM")
    work = tmp_path / "w"
    work.mkdir()
    path, replayed = logs.working_copy(logs.state(sam), work)
    assert not replayed and path == sam and list(work.iterdir()) == []
