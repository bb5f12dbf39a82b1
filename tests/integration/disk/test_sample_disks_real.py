"""Sample disks: real filesystems, clean fsck, deterministic contents, the Linux disk per network stack."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from fleetcast.disk import loop
from fleetcast.disk.filesystems import FsType, detect
from fleetcast.disk.partitions import read_table
from fleetcast.errors import DiskError
from fleetcast.lab.sample_disk import build_linux_disk, build_sample_disk, mount_partition
from fleetcast.lab.treecompare import NTFS_ACL, compare_trees, snapshot

pytestmark = pytest.mark.integration

MiB = 1 << 20


def _detect(path: Path, offset: int, size: int) -> FsType:
    with open(path, "rb") as f:
        return detect(f, offset, size)


def test_gpt_sample_disk(tmp_path: Path) -> None:
    disk = build_sample_disk(tmp_path / "a.img", size=64 * MiB, seed=3)
    table = read_table(disk.path)
    assert table == disk.table
    assert [(p.number, p.name) for p in table.partitions] == [
        (1, "EFI system partition"),
        (2, "Windows"),
        (3, "linux"),
    ]
    kinds = [_detect(disk.path, p.start * 512, p.size * 512) for p in table.partitions]
    assert kinds == [FsType.FAT, FsType.NTFS, FsType.EXT]
    esp = table.partitions[0]
    with loop.attach(disk.path, offset=esp.start * 512, sizelimit=esp.size * 512, read_only=True) as dev:
        subprocess.run(["fsck.vfat", "-n", dev], check=True, capture_output=True)
    for number in (2, 3):
        part = table.partition(number)
        with loop.attach(
            disk.path, offset=part.start * 512, sizelimit=part.size * 512, read_only=True
        ) as dev:
            tool = ["ntfsfix", "-n"] if number == 2 else ["e2fsck", "-fn"]
            subprocess.run([*tool, dev], check=True, capture_output=True)
    listing = subprocess.run(
        ["mdir", "-/", "-b", "-i", f"{disk.path}@@{esp.start * 512}", "::/"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "::/EFI/BOOT/BOOTX64.EFI" in listing
    for content in disk.contents:
        part = table.partition(content.number)
        assert content.bytes > 0.4 * part.size * 512, f"partition {content.number} is not filled"
    with mount_partition(disk.path, 3, read_only=True) as mnt:
        snap = snapshot(mnt)
        owners = {(e.uid, e.gid) for e in snap.values()}
        modes = {e.mode for e in snap.values() if e.kind == "file"}
        assert len(owners) >= 3 and len(modes) >= 4
        assert any(e.kind == "link" for e in snap.values())
        sizes = {spec.path: spec.size for spec in disk.content(3).files}
        assert {p: (mnt / p).stat().st_size for p in sizes} == sizes
        kinds = {spec.kind for spec in disk.content(3).files}
        assert kinds == {"text", "elf", "gzip", "random", "zeros", "small"}
    with mount_partition(disk.path, 2, read_only=True) as mnt:
        acls = [e.xattrs[0][1] for e in snapshot(mnt, xattrs=[NTFS_ACL]).values() if e.kind == "file"]
        assert all(acls)
        assert len({a for a in acls if a is not None}) >= 2, "some files carry their own ACL"
    with pytest.raises(DiskError) as err, mount_partition(disk.path, 1):
        pass
    assert "is not mountable on this machine" in str(err.value)


def test_sample_disk_is_deterministic(tmp_path: Path) -> None:
    a = build_sample_disk(tmp_path / "a.img", size=48 * MiB, seed=9, layout="mbr-ntfs-ext4")
    b = build_sample_disk(tmp_path / "b.img", size=48 * MiB, seed=9, layout="mbr-ntfs-ext4")
    assert a.table.label == "dos" and a.table.partitions[0].bootable
    assert [c.files for c in a.contents] == [c.files for c in b.contents]
    for number in (1, 2):
        with (
            mount_partition(a.path, number, read_only=True) as x,
            mount_partition(b.path, number, read_only=True) as y,
        ):
            assert compare_trees(x, y, xattrs=[NTFS_ACL] if number == 1 else []) == []


@pytest.mark.parametrize("layout", ["bare-ext4", "bare-ntfs", "bare-fat"])
def test_bare_layouts(tmp_path: Path, layout: str) -> None:
    disk = build_sample_disk(tmp_path / "bare.img", size=40 * MiB, layout=layout, fill=0.3)
    assert read_table(disk.path).label == "none"
    want = {"bare-ext4": FsType.EXT, "bare-ntfs": FsType.NTFS, "bare-fat": FsType.FAT}[layout]
    assert _detect(disk.path, 0, 40 * MiB) is want
    if want is not FsType.FAT:
        with mount_partition(disk.path, 0, read_only=True) as mnt:
            sizes = {spec.path: spec.size for spec in disk.contents[0].files}
            assert sizes and {p: (mnt / p).stat().st_size for p in sizes} == sizes
    else:
        with pytest.raises(DiskError):
            mount_partition(disk.path, 0).__enter__()
    if want is FsType.EXT:
        subprocess.run(["e2fsck", "-fn", disk.path], check=True, capture_output=True)
    elif want is FsType.NTFS:
        subprocess.run(["ntfsfix", "-n", disk.path], check=True, capture_output=True)
    else:
        subprocess.run(["fsck.vfat", "-n", disk.path], check=True, capture_output=True)


@pytest.mark.parametrize("netstack", ["netplan", "networkmanager", "ifupdown", "networkd"])
def test_linux_disk(tmp_path: Path, netstack: str) -> None:
    disk = build_linux_disk(tmp_path / "linux.img", size=96 * MiB, hostname="golden-7", netstack=netstack)
    root = disk.table.partition(2)
    assert root.name == "root"
    blkid = subprocess.run(
        ["blkid", "-p", "-O", str(root.start * 512), "-s", "LABEL", "-o", "value", disk.path],
        check=True,
        capture_output=True,
        text=True,
    )
    assert blkid.stdout.strip() == "root"
    with mount_partition(disk.path, 2, read_only=True) as mnt:
        assert (mnt / "etc/hostname").read_text() == "golden-7\n"
        assert "127.0.1.1\tgolden-7" in (mnt / "etc/hosts").read_text()
        mid = (mnt / "etc/machine-id").read_text().strip()
        assert len(mid) == 32 and int(mid, 16) >= 0
        assert (mnt / "var/lib/dbus/machine-id").readlink() == Path("/etc/machine-id")
        assert "ID=debian" in (mnt / "etc/os-release").read_text()
        for kind in ("rsa", "ed25519"):
            assert (mnt / f"etc/ssh/ssh_host_{kind}_key").stat().st_mode & 0o077 == 0
            assert (mnt / f"etc/ssh/ssh_host_{kind}_key.pub").read_text().endswith("root@golden-7\n")
        assert (mnt / "home/user/notes.txt").stat().st_uid == 1000
        net = {
            "netplan": "etc/netplan/01-netcfg.yaml",
            "networkmanager": "etc/NetworkManager/system-connections/Wired.nmconnection",
            "ifupdown": "etc/network/interfaces",
            "networkd": "etc/systemd/network/20-wired.network",
        }
        assert (mnt / net[netstack]).is_file()
        assert [n for n in net.values() if (mnt / n).exists()] == [net[netstack]]
    with loop.attach(disk.path, offset=root.start * 512, sizelimit=root.size * 512, read_only=True) as dev:
        subprocess.run(["e2fsck", "-fn", dev], check=True, capture_output=True)
