"""Sample-disk content planning and NTFS ACL bytes (pure), tree comparison on small temp trees."""

from __future__ import annotations

import os
import random
import struct
from pathlib import Path

import pytest

from fleetcast.errors import DiskError
from fleetcast.lab.sample_disk import ntfs_acl, plan_files
from fleetcast.lab.treecompare import compare_trees, read_xattr

MiB = 1 << 20


def test_plan_files_deterministic_and_near_budget() -> None:
    a = plan_files(random.Random(5), 40 * MiB)
    b = plan_files(random.Random(5), 40 * MiB)
    assert a == b
    assert a != plan_files(random.Random(6), 40 * MiB)
    total = sum(f.size for f in a)
    assert 0.95 * 40 * MiB <= total <= 40 * MiB
    kinds = {f.kind for f in a}
    assert kinds == {"text", "elf", "gzip", "random", "zeros", "small"}
    assert sum(1 for f in a if f.kind == "small") > 100
    assert max(f.size for f in a) >= 2 * MiB
    assert len({f.path for f in a}) == len(a)


def test_plan_files_empty_budget() -> None:
    assert plan_files(random.Random(0), 0) == []


def test_ntfs_acl_is_self_relative_descriptor() -> None:
    sd = ntfs_acl(random.Random(1))
    revision, _sbz, control, owner, group, sacl, dacl = struct.unpack_from("<BBHIIII", sd)
    assert (revision, control & 0x8004, sacl) == (1, 0x8004, 0)
    assert sd[owner : owner + 16] == bytes([1, 2, 0, 0, 0, 0, 0, 5]) + struct.pack("<II", 32, 544)
    assert sd[group : group + 12] == bytes([1, 1, 0, 0, 0, 0, 0, 5]) + struct.pack("<I", 18)
    acl_rev, _, acl_size, ace_count, _ = struct.unpack_from("<BBHHH", sd, dacl)
    assert (acl_rev, ace_count, dacl + acl_size) == (2, 3, len(sd))


def _tree(root: Path) -> None:
    (root / "d").mkdir(parents=True)
    (root / "d" / "f.txt").write_text("hello")
    (root / "x.bin").write_bytes(b"\0" * 10)
    (root / "link").symlink_to("d/f.txt")


def test_compare_trees_finds_each_kind_of_difference(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    _tree(a)
    _tree(b)
    assert compare_trees(a, b) == []
    (b / "d" / "f.txt").write_text("hellO")
    os.chmod(b / "x.bin", 0o600)
    os.chown(a / "x.bin", 1000, 1000)
    (b / "link").unlink()
    (b / "link").symlink_to("x.bin")
    (b / "extra").write_text("")
    assert compare_trees(a, b) == [
        f"only in {b}: extra",
        "d/f.txt: contents differ",
        "link: link target differ",
        "x.bin: mode 644 vs 600",
        "x.bin: owner 1000:1000 vs 0:0",
    ]
    assert compare_trees(a, b, owners=False, modes=False, ignore=("extra",)) == [
        "d/f.txt: contents differ",
        "link: link target differ",
    ]


def test_read_xattr(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_text("")
    assert read_xattr(f, "user.fleetcast") is None
    try:
        os.setxattr(f, "user.fleetcast", b"v" * 300)
    except OSError:
        pytest.skip("tmp filesystem has no user xattrs")
    assert read_xattr(f, "user.fleetcast") == b"v" * 300
    with pytest.raises(OSError):
        read_xattr(tmp_path / "missing", "user.fleetcast")


def test_unknown_layout_and_fill(tmp_path: Path) -> None:
    from fleetcast.lab.sample_disk import build_sample_disk

    with pytest.raises(DiskError) as err:
        build_sample_disk(tmp_path / "d.img", layout="zfs")
    assert str(err.value) == (
        "unknown sample-disk layout 'zfs'; expected one of gpt-esp-ntfs-ext4, gpt-esp-ext4-ntfs, "
        "mbr-ntfs-ext4, bare-ext4, bare-ntfs, bare-fat"
    )
    with pytest.raises(DiskError) as err:
        build_sample_disk(tmp_path / "d.img", fill=1.5)
    assert str(err.value) == "sample-disk fill must be between 0 and 0.9; got 1.5"
    assert not (tmp_path / "d.img").exists()
