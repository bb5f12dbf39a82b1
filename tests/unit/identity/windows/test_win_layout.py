"""Paths taken from the volume (ProfileImagePath in SOFTWARE) never lead outside it."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetcast.errors import IdentityError
from fleetcast.identity.windows.layout import find, target
from fleetcast.identity.windows.profiles import profile_dir


def _volume(tmp_path: Path) -> Path:
    root = tmp_path / "vol"
    (root / "Users" / "bob").mkdir(parents=True)
    (tmp_path / "outside" / "victim").mkdir(parents=True)
    (tmp_path / "outside" / "victim" / "NTUSER.DAT").write_bytes(b"regf")
    return root


def test_find_matches_case_insensitively_inside(tmp_path: Path) -> None:
    root = _volume(tmp_path)
    assert find(root, "users/BOB") == root / "Users" / "bob"


def test_dot_dot_from_the_registry_does_not_leave_the_volume(tmp_path: Path) -> None:
    root = _volume(tmp_path)
    assert find(root, "../outside/victim") is None
    assert find(root, "Users/../../outside/victim/NTUSER.DAT") is None
    assert profile_dir(root, "C:\\..\\outside\\victim") is None


def test_symlink_out_of_the_volume_is_not_followed(tmp_path: Path) -> None:
    root = _volume(tmp_path)
    (root / "Users" / "eve").symlink_to(tmp_path / "outside" / "victim")
    assert find(root, "Users/eve/NTUSER.DAT") is None
    assert profile_dir(root, "C:\\Users\\eve") is None


def test_target_through_a_symlink_out_of_the_volume_is_refused(tmp_path: Path) -> None:
    root = _volume(tmp_path)
    (root / "Windows").mkdir()
    (root / "Windows" / "Panther").symlink_to(tmp_path / "outside")
    assert target(root, "windows/Users") == root / "Windows" / "Users"
    with pytest.raises(IdentityError) as exc:
        target(root, "Windows/Panther/unattend.xml")
    assert str(exc.value) == (
        f"cannot write Windows/Panther/unattend.xml on {root}: {root / 'Windows/Panther/unattend.xml'} "
        f"leads outside the volume (to {(tmp_path / 'outside/unattend.xml').resolve()})"
    )


def test_missing_hive_left_as_a_backup_by_an_interrupted_run(tmp_path: Path) -> None:
    from fleetcast.errors import HiveError
    from fleetcast.identity.windows.layout import hive_path

    cfg = tmp_path / "Windows" / "System32" / "config"
    cfg.mkdir(parents=True)
    (cfg / "SAM.fleetcast-orig").write_bytes(b"regf")
    with pytest.raises(HiveError) as exc:
        hive_path(tmp_path, "SAM")
    assert str(exc.value) == f"{tmp_path} has no SAM hive in Windows\\System32\\config"
    assert exc.value.hint == (
        "a fleetcast run was interrupted while replacing it: "
        "rename SAM.fleetcast-orig back to SAM, then retry"
    )
