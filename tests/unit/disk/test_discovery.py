"""disk.discovery against a fake /sys tree and plain files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fleetcast.disk.discovery import DiskInventory, in_use, in_use_devnum, list_disks, natural_key
from fleetcast.errors import DiskError


def _disk(
    sys_root: Path,
    name: str,
    *,
    sectors: int,
    bus: str,
    removable: bool = False,
    rotational: bool = False,
    model: str = "",
    serial: str = "",
    dev: str = "8:0",
) -> None:
    devices = sys_root / "devices" / bus
    devices.mkdir(parents=True, exist_ok=True)
    if model:
        (devices / "model").write_text(model + "   \n")
    block = sys_root / "block" / name
    (block / "queue").mkdir(parents=True)
    (block / "size").write_text(f"{sectors}\n")
    (block / "dev").write_text(dev + "\n")
    (block / "removable").write_text("1\n" if removable else "0\n")
    (block / "queue" / "rotational").write_text("1\n" if rotational else "0\n")
    (block / "queue" / "logical_block_size").write_text("512\n")
    (block / "queue" / "physical_block_size").write_text("4096\n")
    if serial:
        (block / "serial").write_text(serial + "\n")
    os.symlink(devices, block / "device")


@pytest.fixture
def fake_sys(tmp_path: Path) -> tuple[Path, Path]:
    sys_root = tmp_path / "sys"
    udev = tmp_path / "udev"
    udev.mkdir()
    pci = "pci0000:00/0000:00:17.0"
    _disk(
        sys_root, "sdb", sectors=2000, bus=f"{pci}/ata10/host9/target9:0:0/9:0:0:0", model="BIG", dev="8:16"
    )
    _disk(
        sys_root, "sda", sectors=1000, bus=f"{pci}/ata2/host1/target1:0:0/1:0:0:0", model="SMALL", dev="8:0"
    )
    _disk(
        sys_root,
        "sdc",
        sectors=500,
        bus="pci0000:00/0000:00:14.0/usb1/1-1/1-1:1.0/host3/target3:0:0/3:0:0:0",
        dev="8:32",
    )
    _disk(sys_root, "mmcblk0", sectors=800, bus="platform/mmc0", removable=True, dev="179:0")
    _disk(
        sys_root, "nvme0n1", sectors=4000, bus="pci0000:00/0000:00:1d.0/nvme/nvme0", serial="NV1", dev="259:0"
    )
    _disk(sys_root, "sr0", sectors=100, bus="x/sr", dev="11:0")
    _disk(sys_root, "loop3", sectors=100, bus="virtual/loop3", dev="7:3")
    _disk(sys_root, "zram0", sectors=100, bus="virtual/zram0", dev="252:0")
    _disk(sys_root, "dm-0", sectors=100, bus="virtual/dm-0", dev="253:0")
    _disk(sys_root, "sdd", sectors=0, bus=f"{pci}/ata5/host5/target5:0:0/5:0:0:0", dev="8:48")
    (udev / "b8:0").write_text(
        "S:disk/by-id/x\nE:ID_SERIAL_SHORT=SER-A\nE:ID_WWN=0x5000c500a1b2c3d4\nE:ID_BUS=ata\n"
    )
    (udev / "b8:32").write_text("E:ID_SERIAL_SHORT=USB1\nE:ID_BUS=usb\nE:ID_MODEL=Flash_Drive\n")
    return sys_root, udev


def test_order_fixed_first_then_bus_path_natural(fake_sys: tuple[Path, Path]) -> None:
    sys_root, udev = fake_sys
    disks = list_disks(None, sys_root=sys_root, udev_root=udev)
    # ata2 before ata10 (natural), the 0000:00:17.0 controller before 0000:00:1d.0; USB and the
    # removable card last; loop/sr/zram/dm and the empty sdd are never reported.
    assert [d.path for d in disks] == ["/dev/sda", "/dev/sdb", "/dev/nvme0n1", "/dev/mmcblk0", "/dev/sdc"]
    assert [d.fixed for d in disks] == [True, True, True, False, False]


def test_fields_from_sysfs_and_udev(fake_sys: tuple[Path, Path]) -> None:
    sys_root, udev = fake_sys
    by_path = {d.path: d for d in list_disks(None, sys_root=sys_root, udev_root=udev)}
    sda = by_path["/dev/sda"]
    assert sda.to_dict() == {
        "path": "/dev/sda",
        "size": 512_000,
        "logical_sector_size": 512,
        "physical_sector_size": 4096,
        "model": "SMALL",
        "serial": "SER-A",
        "wwn": "0x5000c500a1b2c3d4",
        "removable": False,
        "rotational": False,
    }
    assert by_path["/dev/nvme0n1"].serial == "NV1"
    assert by_path["/dev/sdc"].model == "Flash Drive"
    assert by_path["/dev/sdc"].usb and not by_path["/dev/sdc"].removable
    assert by_path["/dev/mmcblk0"].removable


def test_order_is_stable_whatever_the_listing_order(fake_sys: tuple[Path, Path]) -> None:
    sys_root, udev = fake_sys
    first = list_disks(None, sys_root=sys_root, udev_root=udev)
    again = list_disks(None, sys_root=sys_root, udev_root=udev)
    assert first == again


def test_allow_reports_only_allowed_files(tmp_path: Path, fake_sys: tuple[Path, Path]) -> None:
    sys_root, udev = fake_sys
    a = tmp_path / "b.img"
    b = tmp_path / "a.img"
    a.write_bytes(b"\0" * 4096)
    b.write_bytes(b"\0" * 8192)
    disks = list_disks([a, b, a], sys_root=sys_root, udev_root=udev)
    assert [(d.path, d.size) for d in disks] == [(str(b), 8192), (str(a), 4096)]


def test_allow_missing_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DiskError) as info:
        list_disks([tmp_path / "nope"])
    assert str(info.value) == f"allowed disk {tmp_path / 'nope'} cannot be used: No such file or directory"


def test_allow_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DiskError) as info:
        list_disks([tmp_path])
    assert str(info.value) == f"allowed disk {tmp_path} is neither a block device nor a file"


def test_natural_key() -> None:
    names = ["sda10", "sda2", "sdb", "sda1"]
    assert sorted(names, key=natural_key) == ["sda1", "sda2", "sda10", "sdb"]


def test_describe() -> None:
    d = DiskInventory(path="/dev/sda", size=120_000_000_000, model="M", serial="S", removable=True)
    assert d.describe() == "/dev/sda (120.0 GB, model 'M', serial 'S', removable)"


def _fake_in_use_tree(tmp_path: Path) -> tuple[Path, Path]:
    sys_root, proc = tmp_path / "sys", tmp_path / "proc"
    disk = sys_root / "devices" / "sda"
    for d in (disk / "sda1" / "holders", disk / "sda2" / "holders" / "dm-0", disk / "holders"):
        d.mkdir(parents=True)
    (disk / "dev").write_text("8:0\n")
    for n, num in (("sda1", "8:1"), ("sda2", "8:2")):
        (disk / n / "partition").write_text("1\n")
        (disk / n / "dev").write_text(num + "\n")
    (sys_root / "dev" / "block").mkdir(parents=True)
    for num, target in (("8:0", disk), ("8:1", disk / "sda1"), ("8:2", disk / "sda2")):
        os.symlink(target, sys_root / "dev" / "block" / num)
    (proc / "self").mkdir(parents=True)
    (proc / "swaps").write_text("Filename Type Size Used Priority\n")
    return sys_root, proc


def test_in_use_mounted_partition_and_holder(tmp_path: Path) -> None:
    sys_root, proc = _fake_in_use_tree(tmp_path)
    (proc / "self" / "mountinfo").write_text(
        "22 27 0:21 / /proc rw - proc proc rw\n30 27 8:1 / /boot rw,relatime - ext4 /dev/sda1 rw\n"
    )
    assert in_use_devnum("8:0", sys_root=sys_root, proc_root=proc) == [
        "sda1 is mounted on /boot",
        "sda2 is held by dm-0",
    ]


def test_free_disk_is_not_in_use(tmp_path: Path) -> None:
    sys_root, proc = _fake_in_use_tree(tmp_path)
    (sys_root / "devices" / "sda" / "sda2" / "holders" / "dm-0").rmdir()
    (proc / "self" / "mountinfo").write_text("30 27 8:17 / /boot rw - ext4 /dev/sdb1 rw\n")
    assert in_use_devnum("8:0", sys_root=sys_root, proc_root=proc) == []
    img = tmp_path / "disk.img"
    img.write_bytes(b"\0" * 512)
    assert in_use(img) == []  # plain files are never in use


def test_fuse_mounted_partition_is_in_use(tmp_path: Path) -> None:
    sys_root, proc = _fake_in_use_tree(tmp_path)
    (sys_root / "devices" / "sda" / "sda2" / "holders" / "dm-0").rmdir()
    # ntfs-3g: an anonymous 0:N device number, the partition only in the mount source
    (proc / "self" / "mountinfo").write_text(
        "41 22 0:52 / /mnt/win rw,relatime shared:3 - fuseblk /dev/sda2 rw,user_id=0\n"
        "42 22 0:53 / /mnt/other rw,relatime - fuseblk /dev/sdb2 rw,user_id=0\n"
        "43 22 0:54 / /run/user rw - tmpfs tmpfs rw\n"
    )
    assert in_use_devnum("8:0", sys_root=sys_root, proc_root=proc) == ["sda2 is mounted on /mnt/win"]
