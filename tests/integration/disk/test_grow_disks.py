"""Grow on real disks: a sample disk restored (table + bytes) onto a larger file, then grown."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from fleetcast.disk import loop
from fleetcast.disk.filesystems import FsType
from fleetcast.disk.grow import grow_last_partition
from fleetcast.disk.partitions import read_table, write_table
from fleetcast.lab.sample_disk import build_sample_disk, mount_partition
from fleetcast.lab.treecompare import NTFS_ACL, compare_trees

pytestmark = pytest.mark.integration

MiB = 1 << 20


def _restore_bigger(src: Path, dst: Path, size: int) -> None:
    """What restore does: pinned table on the larger target, then every partition's bytes."""
    table = read_table(src)
    with open(dst, "wb") as f:
        f.truncate(size)
    write_table(dst, table)
    with open(src, "rb") as i, open(dst, "r+b") as o:
        for p in table.partitions:
            i.seek(p.start * 512)
            o.seek(p.start * 512)
            o.write(i.read(p.size * 512))


def _fs_bytes_ext(disk: Path, offset: int) -> int:
    out = subprocess.run(
        ["dumpe2fs", "-h", f"{disk}?offset={offset}"], check=True, capture_output=True, text=True
    ).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return int(fields["Block count"]) * int(fields["Block size"])


@pytest.mark.parametrize("layout", ["gpt-esp-ntfs-ext4", "gpt-esp-ext4-ntfs", "mbr-ntfs-ext4"])
def test_grow_last_partition(tmp_path: Path, layout: str) -> None:
    src = build_sample_disk(tmp_path / "src.img", size=64 * MiB, seed=4, layout=layout, fill=0.5)
    dst = tmp_path / "dst.img"
    _restore_bigger(src.path, dst, 112 * MiB)
    old = read_table(dst)
    last = old.partitions[-1]
    fstype = FsType.NTFS if layout == "gpt-esp-ext4-ntfs" else FsType.EXT
    new = grow_last_partition(dst, old, fstype)
    assert new == read_table(dst)
    grown = new.partitions[-1]
    assert grown.start == last.start and grown.end % 2048 == 0
    assert grown.end * 512 >= 112 * MiB - 2 * MiB
    assert new.partitions[:-1] == old.partitions[:-1]
    assert (grown.uuid, grown.name, grown.type) == (last.uuid, last.name, last.type)
    assert new.id == old.id
    if new.label == "gpt":
        assert dst.read_bytes()[-512:][:8] == b"EFI PART"
        verify = subprocess.run(["sfdisk", "--verify", dst], check=True, capture_output=True, text=True)
        assert "No errors detected" in verify.stdout
    offset, size = grown.start * 512, grown.size * 512
    if fstype is FsType.EXT:
        assert _fs_bytes_ext(dst, offset) > _fs_bytes_ext(src.path, last.start * 512)
        assert _fs_bytes_ext(dst, offset) >= size - 4096 * 8
        with loop.attach(dst, offset=offset, sizelimit=size, read_only=True) as dev:
            subprocess.run(["e2fsck", "-fn", dev], check=True, capture_output=True)
    else:
        with loop.attach(dst, offset=offset, sizelimit=size, read_only=True) as dev:
            info = subprocess.run(["ntfsresize", "-i", "-f", dev], check=True, capture_output=True, text=True)
            vol = next(line for line in info.stdout.splitlines() if "Current volume size" in line)
            assert int(vol.split(":")[1].split()[0]) >= size - 4096
    with (
        mount_partition(src.path, last.number, read_only=True) as a,
        mount_partition(dst, grown.number, read_only=True) as b,
    ):
        assert compare_trees(a, b, xattrs=[NTFS_ACL] if fstype is FsType.NTFS else []) == []


def test_grow_fat_last_leaves_filesystem(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = tmp_path / "src.img"
    with open(src, "wb") as f:
        f.truncate(48 * MiB)
    subprocess.run(["sfdisk", "-q", src], input=b"label: gpt\n,16M\n,\n", check=True)
    table = read_table(src)
    p2 = table.partitions[1]
    subprocess.run(
        ["mkfs.vfat", "-F", "16", "--offset", str(p2.start), src, str(p2.size // 2)],
        check=True,
        capture_output=True,
    )
    before = src.read_bytes()[p2.start * 512 : p2.end * 512]
    dst = tmp_path / "dst.img"
    _restore_bigger(src, dst, 80 * MiB)
    with caplog.at_level("WARNING"):
        new = grow_last_partition(dst, table, FsType.FAT)
    assert new.partitions[1].end > p2.end
    assert dst.read_bytes()[p2.start * 512 : p2.end * 512] == before
    assert "FAT cannot be grown here" in caplog.text
    with loop.attach(dst, offset=p2.start * 512, sizelimit=p2.size * 512, read_only=True) as dev:
        subprocess.run(["fsck.vfat", "-n", dev], check=True, capture_output=True)


def test_grow_bare_ext4(tmp_path: Path) -> None:
    src = build_sample_disk(tmp_path / "bare.img", size=40 * MiB, layout="bare-ext4", fill=0.3)
    dst = tmp_path / "big.img"
    dst.write_bytes(src.path.read_bytes())
    with open(dst, "r+b") as f:
        f.truncate(72 * MiB)
    assert grow_last_partition(dst, read_table(src.path), FsType.EXT) == read_table(src.path)
    assert _fs_bytes_ext(dst, 0) == 72 * MiB
    subprocess.run(["e2fsck", "-fn", dst], check=True, capture_output=True)
