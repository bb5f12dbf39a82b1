"""Transaction.stage_file: a failed write is an IdentityError, leaves the old file in place, and
rollback() removes the folders the run created."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fleetcast.errors import IdentityError
from fleetcast.identity.windows import txn
from fleetcast.identity.windows.txn import Transaction


def test_write_under_a_file_is_an_identity_error(tmp_path: Path) -> None:
    (tmp_path / "Panther").write_bytes(b"not a folder")
    tx = Transaction()
    with pytest.raises(IdentityError) as exc:
        tx.stage_file(tmp_path / "Panther" / "unattend.xml", b"<unattend/>")
    assert str(exc.value) == f"writing {tmp_path / 'Panther' / 'unattend.xml'} failed: File exists"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Panther"]


def test_failed_rename_puts_the_old_file_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "unattend.xml"
    target.write_bytes(b"old")
    real = os.replace

    def replace(src: Path, dst: Path) -> None:
        if str(src).endswith(txn.NEW_SUFFIX):
            raise OSError(28, "No space left on device", str(src))
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)  # the os module txn uses
    tx = Transaction()
    with pytest.raises(IdentityError) as exc:
        tx.stage_file(target, b"new")
    assert str(exc.value) == f"writing {target} failed: No space left on device"
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unattend.xml"]


def test_rollback_removes_created_folders(tmp_path: Path) -> None:
    (tmp_path / "Windows").mkdir()
    tx = Transaction()
    tx.stage_file(tmp_path / "Windows" / "Setup" / "Scripts" / "a.cmd", b"echo")
    tx.stage_file(tmp_path / "Windows" / "Setup" / "Scripts" / "b.cmd", b"echo")
    assert (tmp_path / "Windows" / "Setup" / "Scripts" / "b.cmd").read_bytes() == b"echo"
    tx.rollback()
    assert list((tmp_path / "Windows").iterdir()) == []


def test_interrupt_between_two_renames_leaves_every_hive_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.fixtures.windows_tree import build_windows_tree

    from fleetcast.identity.windows.personalizer import Options, personalize

    info = build_windows_tree(tmp_path / "t", with_acls=False)
    cfg = info.root / "Windows" / "System32" / "config"
    before = {p.name: p.read_bytes() for p in cfg.iterdir()}
    real = os.replace
    calls = []

    def replace(src: Path, dst: Path) -> None:
        calls.append(src)
        if len(calls) == 2:  # SYSTEM moved to its backup, the new copy not yet in place
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)  # the os module txn uses
    with pytest.raises(KeyboardInterrupt):
        personalize(info.root, Options(name="INT-1"))
    assert {p.name: p.read_bytes() for p in cfg.iterdir()} == before


def test_backup_that_cannot_be_deleted_is_a_warning_not_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.fixtures.windows_tree import build_windows_tree

    from fleetcast.identity.windows.personalizer import Options, personalize

    info = build_windows_tree(tmp_path / "t", with_acls=False)
    cfg = info.root / "Windows" / "System32" / "config"
    real = Path.unlink

    def unlink(self: Path, missing_ok: bool = False) -> None:
        if self.name == "SYSTEM" + txn.ORIG_SUFFIX:
            raise OSError(16, "Device or resource busy", str(self))
        real(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    changes = personalize(info.root, Options(name="KEEP-1"))
    assert changes[-1] == (
        f"warning: the backup {cfg / 'SYSTEM.fleetcast-orig'} could not be deleted "
        "(Device or resource busy): delete it"
    )
    assert (cfg / "SYSTEM.fleetcast-orig").exists() and not (cfg / "SECURITY.fleetcast-orig").exists()
