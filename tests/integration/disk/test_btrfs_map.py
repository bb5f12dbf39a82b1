"""The btrfs allocation map (chunk tree + extent tree) on real single-device btrfs: checked by round
trip (only our extents copied onto zeros: btrfs check --check-data-csum is clean and every file is
identical) and against partclone.btrfs's map (-D). partclone 0.3.23's btrfs map also holds extents of
deleted files (about 25 MB of 55 here) that the extent tree no longer references, and leaves out the
second copy of DUP metadata: ours is a subset of it apart from those copies and the first MiB, which
btrfs reserves."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from disk_maps import FILL, HASHES, MiB, blank, blocks, copy_extents, in_mount_ns, make_tree, partclone_map

from fleetcast.disk.filesystems import FsType, btrfs, detect, total, used_extents

pytestmark = pytest.mark.integration

BTRFS_VARIANTS = {
    "default": [],
    "single-metadata-16k-nodes": ["-m", "single", "-n", "16384"],
    "mixed-bg": ["--mixed"],
}


@pytest.mark.parametrize("args", list(BTRFS_VARIANTS.values()), ids=list(BTRFS_VARIANTS))
def test_btrfs_round_trips_and_stays_within_partclone(tmp_path: Path, args: list[str]) -> None:
    img = blank(tmp_path / "btrfs.img", 320 * MiB)
    subprocess.run(["mkfs.btrfs", "-q", "-f", *args, img], check=True, capture_output=True)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    in_mount_ns(FILL, img, mnt, make_tree(tmp_path / "tree"))
    size = img.stat().st_size
    with open(img, "rb") as f:
        assert detect(f, 0, size) is FsType.BTRFS
        ours = used_extents(FsType.BTRFS, f, 0, size)
    assert total(ours) < 60 * MiB, "the deleted file's 60 MB must not be in the map"
    theirs = partclone_map("partclone.btrfs", img, tmp_path)
    with open(img, "rb") as f:
        mirrors = [(p, c.length) for c in btrfs.Volume(f, 0, size).chunks for p in c.physical[1:]]
    assert blocks(ours) - blocks(theirs) <= blocks([(0, MiB), *mirrors])
    copy = copy_extents(img, tmp_path / "copy.img", ours)
    check = ["btrfs", "check", "--readonly", "--check-data-csum", copy]
    subprocess.run(check, check=True, capture_output=True)
    assert in_mount_ns(HASHES, copy, mnt) == in_mount_ns(HASHES, img, mnt)
    assert "./big.bin" in in_mount_ns(HASHES, copy, mnt)


def test_damaged_btrfs_falls_back_to_the_whole_partition(tmp_path: Path) -> None:
    img = blank(tmp_path / "btrfs.img", 320 * MiB)
    subprocess.run(["mkfs.btrfs", "-q", "-f", img], check=True, capture_output=True)
    with open(img, "r+b") as f:
        f.seek(0x10000 + 0x58)  # the chunk root's address in the superblock
        f.write(b"\x01" * 8)
    size = img.stat().st_size
    with open(img, "rb") as f:
        assert used_extents(FsType.BTRFS, f, 0, size) == [(0, size)]
