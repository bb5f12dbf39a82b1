"""The XFS allocation map (free-space B+trees per AG) on real XFS filesystems: checked against
partclone.xfs's map (-D) and by round trip (only our extents copied onto zeros: xfs_repair -n is clean
and every file is identical). Mounts happen inside a private mount namespace. V4 (crc=0) XFS is left
out: this kernel does not mount it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from disk_maps import FILL, HASHES, MiB, blank, blocks, copy_extents, in_mount_ns, make_tree, partclone_map

from fleetcast.disk.filesystems import FsType, detect, total, used_extents

pytestmark = pytest.mark.integration

XFS_VARIANTS = {
    "v5": [],
    "v5-4ag-no-reflink": ["-m", "reflink=0,finobt=0", "-d", "agcount=4"],
    "v5-1k-2ag": ["-b", "size=1024", "-d", "agcount=2"],
}


@pytest.mark.parametrize("args", list(XFS_VARIANTS.values()), ids=list(XFS_VARIANTS))
def test_xfs_matches_partclone_and_round_trips(tmp_path: Path, args: list[str]) -> None:
    img = blank(tmp_path / "xfs.img", 320 * MiB)
    subprocess.run(["mkfs.xfs", "-q", "-f", *args, img], check=True, capture_output=True)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    in_mount_ns(FILL, img, mnt, make_tree(tmp_path / "tree"))
    size = img.stat().st_size
    with open(img, "rb") as f:
        assert detect(f, 0, size) is FsType.XFS
        ours = used_extents(FsType.XFS, f, 0, size)
    theirs = partclone_map("partclone.xfs", img, tmp_path)
    assert blocks(theirs) <= blocks(ours)
    # partclone leaves out the AG free lists' blocks; nothing else may differ (4 blocks per AG)
    assert total(ours) - total(theirs) <= 64 * 4096
    # 23 MB of files + the internal log (64 MiB here): the deleted file's 60 MB are not in the map
    assert total(ours) < 110 * MiB
    copy = copy_extents(img, tmp_path / "copy.img", ours)
    subprocess.run(["xfs_repair", "-n", "-f", copy], check=True, capture_output=True)
    assert in_mount_ns(HASHES, copy, mnt) == in_mount_ns(HASHES, img, mnt)
    assert "./big.bin" in in_mount_ns(HASHES, copy, mnt)


def test_damaged_xfs_falls_back_to_the_whole_partition(tmp_path: Path) -> None:
    img = blank(tmp_path / "xfs.img", 320 * MiB)
    subprocess.run(["mkfs.xfs", "-q", "-f", img], check=True, capture_output=True)
    with open(img, "r+b") as f:
        f.seek(512)  # AG 0's AGF
        f.write(b"JUNK")
    size = img.stat().st_size
    with open(img, "rb") as f:
        assert used_extents(FsType.XFS, f, 0, size) == [(0, size)]


def test_xfs_and_btrfs_disks_capture_by_their_maps_and_restore(tmp_path: Path) -> None:
    from fleetcast.store.capture import capture
    from fleetcast.store.images import ImageStore
    from fleetcast.store.restore import restore

    store = ImageStore(tmp_path / "store")
    tree = make_tree(tmp_path / "tree")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    for kind in ("xfs", "btrfs"):
        img = blank(tmp_path / f"{kind}.img", 320 * MiB)
        subprocess.run([f"mkfs.{kind}", "-q", "-f", img], check=True, capture_output=True)
        in_mount_ns(FILL, img, mnt, tree)
        manifest = capture(img, kind, store)
        assert [a.fstype for a in manifest.areas] == [kind]
        assert manifest.used_bytes < 110 * MiB
        target = tmp_path / f"{kind}-restored.img"
        restore(store.open(kind), store.source(), target)
        assert in_mount_ns(HASHES, target, mnt) == in_mount_ns(HASHES, img, mnt)
