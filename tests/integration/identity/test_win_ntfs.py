"""Windows personalization on a real NTFS volume (mkntfs on a loop device, mounted with ntfs-3g): file
owners and ACLs through system.ntfs_acl, the CLI as the technician runs it, rollback, dead mounts."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from Registry import Registry
from tests.fixtures.windows_tree import ADMINISTRATORS, LOCAL_SYSTEM, build_windows_tree

from fleetcast.disk.loop import attach
from fleetcast.errors import IdentityError
from fleetcast.identity.windows import acl, personalize
from fleetcast.identity.windows.personalizer import Options
from fleetcast.identity.windows.sid import Sid, seeded_machine_sid
from fleetcast.run import run, spawn

pytestmark = pytest.mark.integration
MiB = 1 << 20
CONFIG = "Windows/System32/config"


@contextlib.contextmanager
def _volume(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    img = tmp_path / "ntfs.img"
    with open(img, "wb") as f:
        f.truncate(96 * MiB)
    with attach(img) as dev:
        run(["mkntfs", "-Q", "-q", "-F", "-L", "Windows", dev])
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        run(["ntfs-3g", dev, mnt])
        try:
            yield dev, mnt
        finally:
            if run(["umount", mnt], check=False).returncode != 0:
                run(["fusermount", "-u", "-z", mnt], check=False)


@pytest.fixture
def ntfs(tmp_path: Path) -> Iterator[Path]:
    with _volume(tmp_path) as (_dev, mnt):
        yield mnt


def _sids(sd: bytes) -> list[Sid]:
    """Every SID in a descriptor (owner, group, DACL ACEs) -- parsed here, not with the product's code."""
    import struct

    out = []
    owner, group, _sacl, dacl = struct.unpack_from("<IIII", sd, 4)
    for off in (owner, group):
        if off:
            out.append(Sid.from_bytes(sd, off))
    if dacl:
        count = struct.unpack_from("<H", sd, dacl + 4)[0]
        pos = dacl + 8
        for _ in range(count):
            size = struct.unpack_from("<H", sd, pos + 2)[0]
            out.append(Sid.from_bytes(sd, pos + 8))
            pos += size
    return out


def test_file_acls_carry_the_new_sid(ntfs: Path) -> None:
    info = build_windows_tree(ntfs)
    assert info.acls_set
    old, new = info.machine_sid, seeded_machine_sid("ntfs-1")
    before = {p: acl.get_sd(p) for p in info.owned_files}
    changes = personalize(ntfs, Options(name="NTFS-01", sid_seed="ntfs-1", reset_ids=True))
    line = next(c for c in changes if c.startswith("file ACLs:"))
    assert line.startswith(f"file ACLs: 21 local-account SID(s) in {len(info.owned_files)} of ")
    assert line.endswith(f" files rewritten to {new}")
    for path in info.owned_files:
        sd = acl.get_sd(path)
        assert sd is not None and len(sd) == len(before[path] or b"")
        sids = _sids(sd)
        assert not any(s == old or s.is_in_domain(old) for s in sids), path
        assert any(s.is_in_domain(new) for s in sids), path
        assert LOCAL_SYSTEM in sids and ADMINISTRATORS in sids  # well-known SIDs untouched
        owner_rid = sids[0].rid
        assert sids[0] == new.child(owner_rid)
    # the hives, read by python-registry on the volume
    sam = Registry.Registry(str(ntfs / CONFIG / "SAM"))
    assert sam.open("SAM\\Domains\\Account").value("V").raw_data()[-24:] == new.to_bytes()
    sec = Registry.Registry(str(ntfs / CONFIG / "SECURITY"))
    assert sec.open("Policy\\PolAcDmS").value("(default)").raw_data() == new.to_bytes()
    for hive in ("SAM", "SECURITY"):
        raw = (ntfs / CONFIG / hive).read_bytes()
        assert old.to_bytes()[8:] not in raw


def test_sid_folders_are_renamed_on_ntfs_with_their_acl(ntfs: Path) -> None:
    """$Recycle.Bin\\<SID> and ProgramData\\...\\SystemData\\<SID> on a real NTFS volume: renamed
    through ntfs-3g, and the owner in their security descriptor follows (issue 13 finding 3)."""
    info = build_windows_tree(ntfs)
    old, new = info.machine_sid, seeded_machine_sid("ntfs-folders")
    user = old.child(1001)
    folders = [
        ntfs / "$Recycle.Bin" / str(user),
        ntfs / "ProgramData/Microsoft/Windows/SystemData" / str(user),
    ]
    for folder in folders:
        folder.mkdir(parents=True)
        (folder / "desktop.ini").write_text("[.ShellClassInfo]\n")
        # owned by the local user, as Windows makes them
        acl.set_sd(folder, acl.build_sd(user, old.child(513), [(0, 0x13, 0x001F01FF, user)]))
    changes = personalize(ntfs, Options(sid_seed="ntfs-folders"))
    for folder in folders:
        moved = folder.with_name(str(new.child(1001)))
        assert f"folder {folder.relative_to(ntfs)}: renamed to {moved.name}" in changes
        assert not folder.exists() and (moved / "desktop.ini").is_file()
        sd = acl.get_sd(moved)
        assert sd is not None and _sids(sd)[0] == new.child(1001)


def test_cli_personalize_and_inspect(ntfs: Path, fleetcast_bin: Path) -> None:
    build_windows_tree(ntfs)
    proc = subprocess.run(
        [fleetcast_bin, "windows", "personalize", ntfs, "--name", "CLI-02", "--sid-seed", "cli-2",
         "--reset-ids", "--ip", "10.20.0.2/24", "--gateway", "10.20.0.1", "--dns", "10.20.0.1",
         "--mac", "52:54:00:20:00:02"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "SECURITY Policy\\PolAcDmN: STUDENT-PC8 -> CLI-02" in proc.stdout
    out = subprocess.run(
        [fleetcast_bin, "windows", "inspect", ntfs, "--json"], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    assert {n["computer_name"] for n in rep["names"]} == {"CLI-02"}
    assert rep["machine_sid_sam"] == rep["machine_sid_security"] == str(seeded_machine_sid("cli-2"))
    assert not rep["sid_mismatch"]
    assert rep["setup"]["setup_type"] == 2
    assert (ntfs / "Windows/Setup/Scripts/fleetcast-firstboot.cmd").is_file()


def test_acl_failure_rolls_back_hives_and_acls(ntfs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    info = build_windows_tree(ntfs)
    cfg = ntfs / CONFIG
    hives = {p.name: p.read_bytes() for p in cfg.iterdir()}
    sds = {p: acl.get_sd(p) for p in info.owned_files}
    real = acl.set_sd
    calls = {"n": 0}

    def flaky(path: Path, sd: bytes) -> None:
        calls["n"] += 1
        if calls["n"] == 4:
            raise OSError(5, "Input/output error", str(path))
        real(path, sd)

    monkeypatch.setattr(acl, "set_sd", flaky)
    with pytest.raises(IdentityError) as exc:
        personalize(ntfs, Options(name="ROLL-02", sid_seed="roll"))
    assert str(exc.value).startswith("cannot write the security descriptor of ")
    assert str(exc.value).endswith(": Input/output error")
    monkeypatch.setattr(acl, "set_sd", real)
    assert {p.name: p.read_bytes() for p in cfg.iterdir()} == hives
    assert {p: acl.get_sd(p) for p in info.owned_files} == sds


def test_dead_ntfs3g_mount_is_an_unreadable_volume(tmp_path: Path) -> None:
    """The ntfs-3g process behind the mount dies (as when the disk goes away): a clear error."""
    img = tmp_path / "ntfs.img"
    with open(img, "wb") as f:
        f.truncate(64 * MiB)
    with attach(img) as dev:
        run(["mkntfs", "-Q", "-q", "-F", dev])
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        proc = spawn(
            ["ntfs-3g", "-o", "no_detach", dev, mnt], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + 20
            while not os.path.ismount(mnt) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert os.path.ismount(mnt)
            build_windows_tree(mnt, with_acls=False)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=20)
            with pytest.raises(IdentityError) as exc:
                personalize(mnt, Options(name="DEAD-1"))
            assert str(exc.value) == f"volume {mnt} cannot be read: Transport endpoint is not connected"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            run(["fusermount", "-u", "-z", mnt], check=False)
