"""Loop devices, device inspection and partition tables on real image files and loop devices."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from fleetcast.disk import device, loop
from fleetcast.disk.partitions import PartitionTable, read_table, write_table
from fleetcast.errors import DiskError

pytestmark = pytest.mark.integration

GPT_SCRIPT = """label: gpt
label-id: 11111111-2222-3333-4444-555555555555
unit: sectors
first-lba: 34

start=2048, size=8192, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=AAAAAAAA-2222-3333-4444-555555555555, \
name="EFI system", attrs="RequiredPartition LegacyBIOSBootable GUID:60,63"
start=10240, size=4096, type=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F
start=20480, size=16384, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, \
uuid=BBBBBBBB-2222-3333-4444-555555555555, name="root"
"""
DOS_SCRIPT = """label: dos
label-id: 0x12345678
unit: sectors

start=2048, size=8192, type=83, bootable
start=10240, size=40000, type=5
start=12288, size=4096, type=82
start=18432, size=8192, type=7
"""


def _make(tmp_path: Path, name: str, script: str, size: int = 64 << 20) -> Path:
    img = tmp_path / name
    with open(img, "wb") as f:
        f.truncate(size)
    subprocess.run(["sfdisk", "-q", img], input=script.encode(), check=True)
    return img


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _dump(path: Path) -> list[str]:
    out = subprocess.run(["sfdisk", "--dump", path], check=True, capture_output=True, text=True).stdout
    return [line.replace(str(path), "DEV") for line in out.splitlines() if not line.startswith("device:")]


@pytest.mark.parametrize("script", [GPT_SCRIPT, DOS_SCRIPT], ids=["gpt", "dos"])
def test_read_write_identical(tmp_path: Path, script: str) -> None:
    src = _make(tmp_path, "src.img", script)
    before = _sha(src)
    table = read_table(src)
    assert _sha(src) == before, "reading a table must not write the source"
    assert PartitionTable.from_dict(table.to_dict()) == table
    dst = tmp_path / "dst.img"
    with open(dst, "wb") as f:
        f.truncate(64 << 20)
    write_table(dst, table)
    assert read_table(dst) == table
    assert _dump(dst) == _dump(src)
    if table.label == "gpt":
        # primary header + array identical byte for byte
        assert dst.read_bytes()[512 : 34 * 512] == src.read_bytes()[512 : 34 * 512]
    else:
        assert [p.number for p in table.partitions] == [1, 2, 5, 6]
        assert table.partitions[0].bootable


def test_write_on_larger_target_moves_backup_header(tmp_path: Path) -> None:
    table = read_table(_make(tmp_path, "src.img", GPT_SCRIPT))
    big = tmp_path / "big.img"
    with open(big, "wb") as f:
        f.truncate(128 << 20)
    write_table(big, table)
    data = big.read_bytes()
    assert data[-512:][:8] == b"EFI PART"
    assert read_table(big) == table
    write_table(big, table, fit_to_disk=True)
    grown = read_table(big)
    assert grown.last_lba == (128 << 20) // 512 - 34
    assert grown.partitions == table.partitions and grown.id == table.id


def test_write_refuses_small_target(tmp_path: Path) -> None:
    table = read_table(_make(tmp_path, "src.img", GPT_SCRIPT))
    small = tmp_path / "small.img"
    with open(small, "wb") as f:
        f.truncate(32 << 20)
    with pytest.raises(DiskError) as err:
        write_table(small, table)
    assert (
        str(err.value)
        == f"disk {small} is 33554432 bytes but the partition table needs at least 67108864 bytes"
    )


def test_bare_filesystems_read_as_none(tmp_path: Path) -> None:
    img = tmp_path / "bare.img"
    with open(img, "wb") as f:
        f.truncate(40 << 20)
    subprocess.run(["mkfs.vfat", "-F", "32", img], check=True, capture_output=True)
    assert read_table(img) == PartitionTable("none", "", 512)
    subprocess.run(["mkntfs", "-Q", "-F", img], check=True, capture_output=True)
    assert read_table(img).label == "none"
    subprocess.run(["mkfs.ext4", "-q", "-F", img], check=True, capture_output=True)
    assert read_table(img).label == "none"


def test_loop_attach_partitions_and_detach(tmp_path: Path) -> None:
    img = _make(tmp_path, "disk.img", GPT_SCRIPT)
    with loop.attach(img) as dev:
        assert dev.is_block_device()
        info = device.inspect(dev)
        assert (info.size, info.logical_sector_size, info.is_block) == (64 << 20, 512, True)
        parts = loop.partitions(dev, expected=3)
        assert [p.name for p in parts] == [f"{dev.name}p1", f"{dev.name}p2", f"{dev.name}p3"]
        assert device.inspect(parts[2]).size == 16384 * 512
        assert read_table(dev).partitions == read_table(img).partitions
    assert not Path(f"/sys/class/block/{dev.name}/loop").exists() or _backing(dev) != str(img)


def _backing(dev: Path) -> str:
    try:
        return Path(f"/sys/class/block/{dev.name}/loop/backing_file").read_text().strip()
    except OSError:
        return ""


def test_loop_offset_sizelimit_read_only(tmp_path: Path) -> None:
    img = tmp_path / "f.img"
    img.write_bytes(b"a" * 4096 + b"b" * 4096 + b"c" * 4096)
    with loop.attach(img, offset=4096, sizelimit=4096, read_only=True) as dev:
        assert device.inspect(dev).size == 4096
        with open(dev, "rb") as f:
            assert f.read() == b"b" * 4096
        assert Path(f"/sys/class/block/{dev.name}/ro").read_text().strip() == "1"
        fd = os.open(dev, os.O_WRONLY)
        try:
            with pytest.raises(OSError):
                os.pwrite(fd, b"x" * 512, 0)
        finally:
            os.close(fd)
    assert img.read_bytes()[4096:8192] == b"b" * 4096


def test_loop_attach_missing(tmp_path: Path) -> None:
    with pytest.raises(DiskError) as err, loop.attach(tmp_path / "nope.img"):
        pass
    assert str(err.value) == f"cannot attach {tmp_path / 'nope.img'} to a loop device: it does not exist"


def test_inspect_errors(tmp_path: Path) -> None:
    with pytest.raises(DiskError) as err:
        device.inspect(tmp_path / "missing")
    assert str(err.value) == f"disk {tmp_path / 'missing'} does not exist"
    with pytest.raises(DiskError) as err:
        device.inspect(tmp_path)
    assert str(err.value) == (
        f"{tmp_path} is not a disk: expected a block device or a disk-image file, found a directory"
    )
    with pytest.raises(DiskError) as err:
        device.inspect(Path("/dev/null"))
    assert (
        str(err.value)
        == "/dev/null is not a disk: expected a block device or a disk-image file, found a character device"
    )
    f = tmp_path / "x.img"
    f.write_bytes(bytes(1000))
    assert device.inspect(f) == device.DiskInfo(f, 1000, 512, 512, False)


def test_4k_sector_disk(tmp_path: Path) -> None:
    img = tmp_path / "4k.img"
    with open(img, "wb") as f:
        f.truncate(64 << 20)
    other = tmp_path / "512.img"
    with open(other, "wb") as f:
        f.truncate(64 << 20)
    with loop.attach(img, sector_size=4096) as dev:
        info = device.inspect(dev)
        assert (info.logical_sector_size, info.size) == (4096, 64 << 20)
        subprocess.run(["sfdisk", "-q", dev], input=b"label: gpt\n,16M\n,\n", check=True)
        table = read_table(dev)
        assert table.sector_size == 4096 and table.partitions[0].size == 4096
        assert table.min_disk_bytes() <= 64 << 20
        # a plain file takes the table's sector size (declared on it); a block device must have it
        write_table(other, table)
        assert device.inspect(other).logical_sector_size == 4096
        assert read_table(other) == table
        with loop.attach(tmp_path / "512.img") as dev512, pytest.raises(DiskError) as err:
            write_table(dev512, table)
        assert str(err.value) == (
            f"disk {dev512} has 512-byte logical sectors but the partition table uses 4096-byte sectors"
        )


def test_partition_name_with_quote_round_trips(tmp_path: Path) -> None:
    src = _make(tmp_path, "src.img", GPT_SCRIPT)
    subprocess.run(["sfdisk", "-q", "--part-label", src, "3", 'data "copy", v2'], check=True)
    table = read_table(src)
    assert table.partition(3).name == 'data "copy", v2'
    dst = tmp_path / "dst.img"
    with open(dst, "wb") as f:
        f.truncate(64 << 20)
    write_table(dst, table)
    assert read_table(dst) == table
    assert dst.read_bytes()[512 : 34 * 512] == src.read_bytes()[512 : 34 * 512]
