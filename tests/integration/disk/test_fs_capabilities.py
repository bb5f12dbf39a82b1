"""Capabilities asked of the filesystem registry instead of branching on the type: OS probe (no loop
device: NTFS read with our own parser), grow and mount."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from fleetcast.disk import filesystems, loop
from fleetcast.disk.filesystems import FsType, probe_os
from fleetcast.disk.grow import grow_filesystem
from fleetcast.disk.mount import mounted
from fleetcast.errors import FilesystemError

pytestmark = pytest.mark.integration

MiB = 1 << 20

WINDOWS_TREE = """
ntfs-3g "$1" "$2"
mkdir -p "$2/Windows/System32/config" "$2/Users"
i=0
while [ $i -lt 400 ]; do : > "$2/Windows/System32/file-with-a-long-name-$i.dll"; i=$((i + 1)); done
: > "$2/Windows/System32/config/SYSTEM"
umount "$2"
"""


def _ntfs(tmp_path: Path, name: str, *, windows: bool) -> Path:
    img = tmp_path / name
    with open(img, "wb") as f:
        f.truncate(64 * MiB)
    subprocess.run(["mkntfs", "-q", "-F", "-Q", img], check=True, capture_output=True)
    mnt = tmp_path / "mnt"
    mnt.mkdir(exist_ok=True)
    script = WINDOWS_TREE if windows else 'ntfs-3g "$1" "$2"; mkdir -p "$2/Windows/System32"; umount "$2"'
    subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-euc", script, "sh", img, mnt],
        check=True,
        capture_output=True,
    )
    return img


def _no_loop(*args: object, **kwargs: object) -> None:
    raise AssertionError("the OS probe must not attach a loop device")


def test_ntfs_os_probe_reads_the_volume_without_a_loop_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    win, other = _ntfs(tmp_path, "win.img", windows=True), _ntfs(tmp_path, "other.img", windows=False)
    monkeypatch.setattr(loop, "attach", _no_loop)
    for img, expected in ((win, "windows"), (other, None)):
        with open(img, "rb") as f:
            assert probe_os(FsType.NTFS, img, f, 0, img.stat().st_size) == expected
    with open(win, "rb") as f:
        vol = filesystems.ntfs.Volume(f, 0, win.stat().st_size)
        system32 = vol.path_lookup("windows/system32")
        assert system32 is not None
        assert vol.lookup(system32, "FILE-WITH-A-LONG-NAME-399.DLL") is not None
        assert vol.lookup(system32, "file-with-a-long-name-400.dll") is None


def test_os_probe_of_a_damaged_volume_is_none(tmp_path: Path) -> None:
    img = tmp_path / "junk.img"
    img.write_bytes(b"NTFS" + bytes(MiB))
    with open(img, "rb") as f:
        assert probe_os(FsType.NTFS, img, f, 0, MiB) is None


def test_grow_and_mount_come_from_the_registry(tmp_path: Path) -> None:
    assert [t for t in FsType if filesystems.get(t).growable] == [FsType.NTFS, FsType.EXT]
    assert grow_filesystem(tmp_path / "unused", 0, MiB, FsType.XFS) == (
        "XFS grows only while mounted: run xfs_growfs on its mount point at first boot"
    )
    assert filesystems.get("zfs") is filesystems.get(FsType.RAW)
    with pytest.raises(FilesystemError) as err:
        filesystems.get(FsType.FAT).mount_argv(Path("/dev/loop9"), Path("/mnt"), read_only=True)
    assert str(err.value) == "cannot mount /dev/loop9: fat is not mountable on this machine"
    assert filesystems.get(FsType.XFS).mount_argv(Path("/dev/x"), Path("/m"), read_only=True) == [
        "mount", "-t", "xfs", "-o", "ro,norecovery", "/dev/x", "/m"
    ]  # fmt: skip


MOUNT_SCRIPT = """
import sys
from pathlib import Path
from fleetcast.disk import loop
from fleetcast.disk.mount import mounted
with loop.attach(Path(sys.argv[1]), read_only=True) as dev, mounted(dev, "ntfs", read_only=True) as mnt:
    print(sorted(p.name for p in (mnt / "Windows" / "System32" / "config").iterdir()))
"""


def test_mounted_mounts_by_the_registry(tmp_path: Path) -> None:
    import sys

    assert mounted  # the module is importable outside a namespace; the mount itself runs in one
    win = _ntfs(tmp_path, "win.img", windows=True)
    out = subprocess.run(
        ["unshare", "-m", "--propagation", "private", sys.executable, "-c", MOUNT_SCRIPT, win],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert out.strip() == "['SYSTEM']"


def test_capture_probes_windows_without_a_loop_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 14: a capture killed during its NTFS OS check leaked the probe's loop device."""
    from fleetcast.store.capture import capture
    from fleetcast.store.images import ImageStore

    win = _ntfs(tmp_path, "win.img", windows=True)
    monkeypatch.setattr(loop, "attach", _no_loop)
    manifest = capture(win, "win", ImageStore(tmp_path / "store"))
    assert manifest.os_hint == "windows"
