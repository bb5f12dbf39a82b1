from __future__ import annotations

from pathlib import Path

import pytest
from tests.fixtures.windows_tree import TreeInfo, build_windows_tree, unpack

from fleetcast.errors import HiveError
from fleetcast.identity.windows import doctor

APPX_LINE = (
    "2025-09-12 10:01:02, Error                 SYSPRP Package "
    "Microsoft.BingWeather_4.53.51922.0_x64__8wekyb3d8bbwe "
    "was installed for a user, but not provisioned for all users. This package will not function properly in "
    "the sysprep image."
)
REARM_LINE = (
    "2025-09-12 10:01:03, Error      [0x0f0082] SYSPRP RunExternalDlls: slc.dll failed, SLSysprepGeneralize "
    "returned 0xc004d307"
)


def _codes(findings: list[doctor.Finding]) -> dict[str, bool]:
    return {f.code: f.blocker for f in findings}


def test_domain_member_and_skip_rearm(tree: TreeInfo) -> None:
    found = _codes(doctor.diagnose(tree.root))
    assert found == {"domain-member": True, "skip-rearm": False}


def test_log_findings(tmp_path: Path) -> None:
    info = build_windows_tree(tmp_path / "v", sam_pair="winreg-kb", with_acls=False)
    panther = info.root / "Windows/System32/Sysprep/Panther"
    panther.mkdir(parents=True)
    (panther / "setupact.log").write_bytes(
        ("\r\n".join(["Info start", APPX_LINE, REARM_LINE]) + "\r\n").encode()
    )
    (panther / "setuperr.log").write_bytes(("\ufeff" + APPX_LINE + "\r\n").encode("utf-16-le"))
    findings = doctor.diagnose(info.root)
    appx = [f for f in findings if f.code == "appx-not-provisioned"]
    assert len(appx) == 1
    assert appx[0].title == (
        "Appx package Microsoft.BingWeather_4.53.51922.0_x64__8wekyb3d8bbwe is installed for a user but not "
        "provisioned for all users"
    )
    assert "Remove-AppxPackage -AllUsers" in appx[0].fix
    rearm = next(f for f in findings if f.code == "rearm-limit")
    assert rearm.blocker and "0xc004d307" in rearm.evidence and "SkipRearm=1" in rearm.fix
    text = doctor.render_text(info.root, findings)
    assert text.splitlines()[0] == f"Sysprep doctor for {info.root}: 3 blocker(s), 0 note(s)"


def test_upgraded_pending_reboot_and_generalization_state(tmp_path: Path) -> None:
    from fleetcast.identity.windows.hive import REG_DWORD, REG_MULTI_SZ, Hive

    info = build_windows_tree(tmp_path / "u", system="win10", sam_pair="winreg-kb", with_acls=False)
    cfg = info.root / "Windows/System32/config"
    h = Hive(cfg / "SYSTEM", write=True)
    h.set_value(
        h.ensure_path("Setup\\Status\\SysprepStatus"),
        "GeneralizationState",
        REG_DWORD,
        (3).to_bytes(4, "little"),
    )
    sm = h.ensure_path("ControlSet001\\Control\\Session Manager")
    # two deletes (empty destinations) and a rename, as Windows writes them (issue 13 finding 4)
    ops = "\\??\\C:\\a.tmp\0\0\\??\\C:\\b.tmp\0\0\\??\\C:\\c.new\0!\\??\\C:\\c.dll\0\0"
    h.set_value(sm, "PendingFileRenameOperations", REG_MULTI_SZ, ops.encode("utf-16-le"))
    h.commit(cfg / "SYSTEM.tmp")
    (cfg / "SYSTEM.tmp").replace(cfg / "SYSTEM")
    findings = doctor.diagnose(info.root)
    found = _codes(findings)
    assert found["upgraded"] and found["generalization-state"] and found["pending-reboot"]
    pending = next(f for f in findings if f.code == "pending-reboot")
    assert pending.evidence.startswith(
        "PendingFileRenameOperations (3 file(s): delete \\??\\C:\\a.tmp; delete \\??\\C:\\b.tmp; "
        "rename \\??\\C:\\c.new to !\\??\\C:\\c.dll)"
    )


@pytest.mark.parametrize(("name", "as_dir"), [("SYSTEM", False), ("SOFTWARE", False), ("SOFTWARE", True)])
def test_missing_system_or_software_is_refused(tmp_path: Path, name: str, as_dir: bool) -> None:
    """Issue 13 finding 5: doctor refuses like inspect instead of skipping its checks."""
    info = build_windows_tree(tmp_path / "m", sam_pair="winreg-kb", with_acls=False)
    hive = info.root / "Windows/System32/config" / name
    hive.unlink()
    if as_dir:
        hive.mkdir()
    with pytest.raises(HiveError) as exc:
        doctor.diagnose(info.root)
    assert str(exc.value) == f"{info.root}: {name} hive missing from Windows\\System32\\config"


def test_clean_volume_has_no_blocker(tmp_path: Path) -> None:
    info = build_windows_tree(tmp_path / "c", sam_pair="winreg-kb", with_acls=False)
    unpack("regipy/SECURITY.xz", info.root / "Windows/System32/config/SECURITY")  # a workgroup machine
    assert not any(f.blocker for f in doctor.diagnose(info.root))


def test_unreadable_sysprep_log_is_a_clear_error(tmp_path: Path) -> None:
    import pytest

    from fleetcast.errors import IdentityError

    log = tmp_path / "setupact.log"
    log.mkdir()  # reading a directory fails with EISDIR, as an unreadable file on a broken mount would
    with pytest.raises(IdentityError) as err:
        doctor.read_log(log)
    assert str(err.value) == f"cannot read the Sysprep log {log}: Is a directory"
