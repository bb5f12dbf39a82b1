"""A re-capture with the previous image does not read the ext4 data of files that provably did not change
(store/ext_unchanged.py) and makes exactly the image a capture that reads everything makes: the same index
bytes and areas. Files changed in place (same size, even with the old mtime put back), appended to,
replaced, deleted and added are all read; so are small files (a boot loader's in-place write) and a swap
file (the kernel's)."""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import pytest
from tests.fixtures.ext4_files import in_private_mount, make_ext4, random_files

from fleetcast.store.capture import CaptureStats, capture
from fleetcast.store.images import ImageStore
from fleetcast.store.manifest import INDEX_FILE
from fleetcast.store.previous import StorePrevious

pytestmark = pytest.mark.integration

MiB = 1 << 20


def _fs(tmp: Path) -> Path:
    tree = tmp / "tree"
    random_files(tree, 60, [3_000, 70_000, 200_000, 900_000])
    swap = bytearray(random.Random(6).randbytes(256 << 10))
    swap[4086:4096] = b"SWAPSPACE2"
    (tree / "swapfile").write_bytes(bytes(swap))
    (tree / "grubenv").write_bytes(b"# GRUB Environment Block\n" + b"#" * 998)
    return make_ext4(tmp / "disk.img", tree)


def _raw_write(img: Path, path: str, block: int, data: bytes) -> None:
    """Write ``data`` into file ``path``'s ``block``-th block directly in the image, not through the
    filesystem (as the kernel's swap code or a boot loader does): its inode does not change."""
    out = subprocess.run(
        ["debugfs", "-R", f"bmap {path} {block}", str(img)], capture_output=True, text=True, check=True
    ).stdout
    physical = int(out.split()[-1])
    with open(img, "r+b") as f:
        f.seek(physical * 4096 + 16)
        f.write(data)


def test_unchanged_files_are_not_read_and_the_image_is_the_same(tmp_path: Path) -> None:
    img = _fs(tmp_path)
    store = ImageStore(tmp_path / "store")
    store.ensure()
    capture(img, "v1", store)
    in_private_mount(
        img,
        "printf 'changed in place' | dd of=d3/f3 bs=1 seek=100 conv=notrunc status=none; "  # 900 kB
        "touch -r d3/f7 d3/f3; "  # the old mtime back: ctime still moves
        "printf 'changed too' | dd of=d2/f6 bs=1 seek=70000 conv=notrunc status=none; "
        "head -c 5000 /dev/urandom >> d3/f11; rm d3/f15; cp d2/f10 d2/f10.copy; mv d2/f10.copy d2/f10; "
        "head -c 300000 /dev/urandom > d1/new; "
        "cat d3/f19 > /dev/null",  # a read (atime) is no change
    )
    _raw_write(img, "/swapfile", 40, b"swapped-out page")  # the kernel swapping: no inode change
    _raw_write(img, "/grubenv", 0, b"saved_entry=1")  # GRUB's save_env at boot: likewise
    reference = capture(img, "v2-full", store)  # every used byte read
    stats = CaptureStats()
    again = capture(img, "v2", store, previous=StorePrevious(store, "v1"), stats=stats)
    assert stats.unread_bytes > 8 * MiB  # most file data was not read ...
    assert stats.unread_bytes < reference.used_bytes - 2 * MiB  # ... metadata and changed files were
    index = (store.images_dir / "v2-full" / INDEX_FILE).read_bytes()
    assert (store.images_dir / "v2" / INDEX_FILE).read_bytes() == index
    assert [a.to_dict_v2() for a in again.areas] == [a.to_dict_v2() for a in reference.areas]
    assert store.verify("v2").ok


def test_a_filesystem_not_cleanly_unmounted_is_read_whole(tmp_path: Path) -> None:
    img = _fs(tmp_path)
    store = ImageStore(tmp_path / "store")
    store.ensure()
    capture(img, "v1", store)
    with open(img, "r+b") as f:  # s_state: clear VALID (as a crash leaves it)
        f.seek(1024 + 58)
        state = int.from_bytes(f.read(2), "little")
        f.seek(1024 + 58)
        f.write((state & ~1).to_bytes(2, "little"))
        os.fsync(f.fileno())
    stats = CaptureStats()
    capture(img, "v2", store, previous=StorePrevious(store, "v1"), stats=stats)
    assert stats.unread_bytes == 0


def test_a_small_file_written_in_place_by_a_boot_loader_is_read(tmp_path: Path) -> None:
    """GRUB's save_env writes its 1 KiB grubenv in place, not through the filesystem: a file that small is
    never trusted, even when its window holds nothing but data of unchanged files (debugfs places it
    between two large files)."""
    img = tmp_path / "disk.img"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "4096", str(img), "32M"], check=True)
    rng = random.Random(7)
    for name, data in (
        ("big1", rng.randbytes(200_000)),
        ("grubenv", b"# GRUB Environment Block\n" + b"#" * 999),
        ("big2", rng.randbytes(300_000)),
    ):
        (tmp_path / name).write_bytes(data)
        subprocess.run(
            ["debugfs", "-w", "-R", f"write {tmp_path / name} {name}", str(img)],
            check=True,
            capture_output=True,
        )
    store = ImageStore(tmp_path / "store")
    store.ensure()
    capture(img, "v1", store)
    _raw_write(img, "/grubenv", 0, b"saved_entry=2")
    capture(img, "v2-full", store)
    stats = CaptureStats()
    capture(img, "v2", store, previous=StorePrevious(store, "v1"), stats=stats)
    assert stats.unread_bytes > 0  # the large files were not read
    index = (store.images_dir / "v2-full" / INDEX_FILE).read_bytes()
    assert (store.images_dir / "v2" / INDEX_FILE).read_bytes() == index
    assert index != (store.images_dir / "v1" / INDEX_FILE).read_bytes()  # the raw write is in the image
