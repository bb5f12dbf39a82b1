"""Allocation-map parsers on real filesystems, checked against partclone's own map (--domain) and by
round trip: copying only our extents onto zeros must give a clean filesystem with identical files."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from disk_maps import blank, copy_extents, partclone_map

from fleetcast.disk.filesystems import FsType, check_capturable, detect, total, used_extents
from fleetcast.disk.filesystems.ntfs import AT_VOLUME_INFORMATION, Volume, attributes
from fleetcast.errors import FilesystemError

pytestmark = pytest.mark.integration

MiB = 1 << 20


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small tree: text, random data, zeros, many small files, a subdirectory."""
    root = tmp_path_factory.mktemp("tree")
    rng = random.Random(1)
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "text.txt").write_text("\n".join(f"line {i} {rng.random()}" for i in range(40000)))
    (root / "sub" / "random.bin").write_bytes(rng.randbytes(3 * MiB + 123))
    (root / "sub" / "zeros.bin").write_bytes(bytes(MiB))
    for i in range(120):
        (root / "sub" / "deeper" / f"small{i:03}.dat").write_bytes(rng.randbytes(rng.randrange(1, 9000)))
    return root


def _hashes(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root)).lower()
            if rel.startswith("$") or rel in ("lost+found",):
                continue
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _extents(img: Path) -> tuple[FsType, list[tuple[int, int]]]:
    size = img.stat().st_size
    with open(img, "rb") as f:
        fstype = detect(f, 0, size)
        return fstype, used_extents(fstype, f, 0, size)


def _sectors(extents: list[tuple[int, int]]) -> set[int]:
    out: set[int] = set()
    for start, length in extents:
        out.update(range(start // 512, (start + length) // 512))
    return out


@contextlib.contextmanager
def _ntfs_mount(img: Path, mnt: Path, *, ro: bool = False) -> Iterator[Path]:
    mnt.mkdir(exist_ok=True)
    subprocess.run(["ntfs-3g", *(["-o", "ro"] if ro else []), img, mnt], check=True, capture_output=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", mnt], check=True)


def _make_ext(tmp: Path, tree: Path, args: list[str], size: int = 64 * MiB) -> Path:
    img = blank(tmp / "ext.img", size)
    subprocess.run(["mkfs.ext4", "-q", "-F", *args, "-d", tree, img], check=True, capture_output=True)
    return img


EXT_VARIANTS = {
    "ext4-1k": [],
    "ext4-4k-64bit": ["-b", "4096", "-O", "64bit"],
    "ext4-no-flex": ["-O", "^flex_bg"],
    "ext4-meta-bg": ["-O", "meta_bg,^resize_inode"],
    "ext4-sparse2": ["-O", "sparse_super2", "-E", "num_backup_sb=1"],
    "ext3": ["-t", "ext3"],
    "ext2": ["-t", "ext2", "-b", "2048"],
}


@pytest.mark.parametrize("variant", list(EXT_VARIANTS))
def test_ext_matches_partclone_and_round_trips(tmp_path: Path, tree: Path, variant: str) -> None:
    img = _make_ext(tmp_path, tree, EXT_VARIANTS[variant])
    fstype, ours = _extents(img)
    assert fstype is FsType.EXT
    theirs = partclone_map("partclone.extfs", img, tmp_path)
    assert _sectors(theirs) <= _sectors(ours)
    assert total(ours) - total(theirs) <= 2048, "only the boot block may differ from partclone's map"
    copy = tmp_path / "copy.img"
    copy_extents(img, copy, ours)
    subprocess.run(["e2fsck", "-fn", copy], check=True, capture_output=True)
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["debugfs", "-R", f"rdump / {out}", copy], check=True, capture_output=True)
    assert _hashes(out) == _hashes(tree)


def test_ext_bigalloc_falls_back_to_whole_partition(tmp_path: Path, tree: Path) -> None:
    img = _make_ext(tmp_path, tree, ["-O", "bigalloc", "-C", "16384"])
    assert _extents(img) == (FsType.EXT, [(0, 64 * MiB)])


def test_fat32_with_few_clusters(tmp_path: Path, tree: Path) -> None:
    """mkfs.fat -F 32 with big clusters makes a FAT32 layout with < 65525 clusters (Linux reads it as
    FAT32 because BPB_FATSz16 is 0); the parser follows the layout, not the cluster count."""
    img = blank(tmp_path / "fat.img", 96 * MiB)
    subprocess.run(["mkfs.vfat", "-F", "32", "-s", "8", img], check=True, capture_output=True)
    fstype, empty = _extents(img)
    assert fstype is FsType.FAT
    theirs = partclone_map("partclone.fat", img, tmp_path)
    assert _sectors(theirs) <= _sectors(empty)
    assert total(empty) - total(theirs) <= 4096


@pytest.mark.parametrize("bits", [12, 16, 32])
def test_fat_round_trips(tmp_path: Path, tree: Path, bits: int) -> None:
    img = blank(tmp_path / "fat.img", 40 * MiB)
    subprocess.run(["mkfs.vfat", "-F", str(bits), img], check=True, capture_output=True)
    subprocess.run(["mcopy", "-s", "-i", img, *tree.iterdir(), "::/"], check=True)
    fstype, ours = _extents(img)
    assert fstype is FsType.FAT
    theirs = partclone_map("partclone.fat", img, tmp_path)
    if bits == 12:
        # partclone 0.3.23's FAT12 map misses clusters that hold file data (a copy of only its map
        # loses file contents); ours must be a superset
        assert _sectors(theirs) <= _sectors(ours)
    else:
        assert ours == theirs
    copy = tmp_path / "copy.img"
    copy_extents(img, copy, ours)
    subprocess.run(["fsck.vfat", "-n", copy], check=True, capture_output=True)
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["mcopy", "-s", "-i", copy, "::/*", out], check=True)
    assert _hashes(out) == _hashes(tree)


def _make_ntfs(tmp: Path, tree: Path, args: list[str] = [], size: int = 64 * MiB) -> Path:  # noqa: B006
    img = blank(tmp / "ntfs.img", size)
    subprocess.run(["mkntfs", "-Q", "-F", *args, img], check=True, capture_output=True)
    with _ntfs_mount(img, tmp / "mnt") as mnt:
        for item in tree.iterdir():
            if item.is_dir():
                shutil.copytree(item, mnt / item.name)
            else:
                shutil.copy2(item, mnt / item.name)
        for i in range(60):  # enough root entries that the root index spills into INDX blocks
            (mnt / f"root-file-{i:02}.txt").write_text(f"root file {i}\n")
    return img


@pytest.mark.parametrize(
    "args", [[], ["-c", "16384"], ["-s", "4096"]], ids=["default", "16k-clusters", "4k-sectors"]
)
def test_ntfs_matches_partclone_and_round_trips(tmp_path: Path, tree: Path, args: list[str]) -> None:
    img = _make_ntfs(tmp_path, tree, args)
    fstype, ours = _extents(img)
    assert fstype is FsType.NTFS
    theirs = partclone_map("partclone.ntfs", img, tmp_path)
    assert _sectors(theirs) <= _sectors(ours)
    # ours adds only the backup boot sector at the end of the volume
    assert total(ours) - total(theirs) <= 4096
    copy = tmp_path / "copy.img"
    copy_extents(img, copy, ours)
    subprocess.run(["ntfsfix", "-n", copy], check=True, capture_output=True)
    with _ntfs_mount(copy, tmp_path / "mnt", ro=True) as mnt:
        got = _hashes(mnt)
    want = _hashes(tree)
    assert {k: v for k, v in got.items() if not k.startswith("root-file-")} == want


def _set_dirty(img: Path) -> None:
    with open(img, "r+b") as f:
        vol = Volume(f, 0, img.stat().st_size)
        rec_pos = vol.record_position(3)
        record = vol.record(3)
        pos = struct.unpack_from("<H", record, 0x14)[0]
        for attr in attributes(record, "$Volume"):
            alen = struct.unpack_from("<I", record, pos + 4)[0]
            if attr.type == AT_VOLUME_INFORMATION:
                vofs = struct.unpack_from("<H", record, pos + 0x14)[0]
                flag_pos = pos + vofs + 10
                assert flag_pos % 512 < 510, "flag sits on an update-sequence slot"
                (flags,) = struct.unpack_from("<H", record, flag_pos)
                f.seek(rec_pos + flag_pos)
                f.write(struct.pack("<H", flags | 1))
                return
            pos += alen
    raise AssertionError("no VOLUME_INFORMATION")


def test_ntfs_dirty_refused_and_ntfsfix_clears(tmp_path: Path, tree: Path) -> None:
    img = _make_ntfs(tmp_path, tree)
    size = img.stat().st_size
    with open(img, "rb") as f:
        check_capturable(FsType.NTFS, f, 0, size, "partition 2")
    _set_dirty(img)
    with open(img, "rb") as f, pytest.raises(FilesystemError) as err:
        check_capturable(FsType.NTFS, f, 0, size, "partition 2")
    assert str(err.value) == (
        "partition 2 (64.0 MiB, NTFS) was not shut down cleanly (the volume is marked dirty)"
    )
    assert err.value.hint is not None and "powercfg /h off" in err.value.hint
    assert "--force-raw" in err.value.hint
    subprocess.run(["ntfsfix", "-d", img], check=True, capture_output=True)
    with open(img, "rb") as f:
        check_capturable(FsType.NTFS, f, 0, size, "partition 2")


def test_ntfs_hibernated_refused(tmp_path: Path, tree: Path) -> None:
    img = _make_ntfs(tmp_path, tree)
    size = img.stat().st_size
    with _ntfs_mount(img, tmp_path / "mnt") as mnt:
        (mnt / "hiberfil.sys").write_bytes(bytes(256 * 1024))
    with open(img, "rb") as f:
        check_capturable(FsType.NTFS, f, 0, size, "partition 3")  # present but not hibernated
    with _ntfs_mount(img, tmp_path / "mnt") as mnt, open(mnt / "hiberfil.sys", "r+b") as h:
        h.write(b"HIBR")
    with open(img, "rb") as f, pytest.raises(FilesystemError) as err:
        check_capturable(FsType.NTFS, f, 0, size, "partition 3")
    assert str(err.value) == (
        "partition 3 (64.0 MiB, NTFS) holds a hibernated Windows (hiberfil.sys is active); "
        "its files are not in a consistent state"
    )
    # ntfs-3g agrees: it refuses a read-write mount of this volume (and falls back to read-only)
    (tmp_path / "mnt2").mkdir()
    proc = subprocess.run(["ntfs-3g", img, tmp_path / "mnt2"], check=False, capture_output=True, text=True)
    if proc.returncode == 0:
        subprocess.run(["umount", tmp_path / "mnt2"], check=True)
    assert "Could not mount read-write" in proc.stderr
    # Windows shut down fully: hiberfil.sys gone -> capturable again
    subprocess.run(
        ["ntfs-3g", "-o", "remove_hiberfile", img, tmp_path / "mnt2"], check=True, capture_output=True
    )
    subprocess.run(["umount", tmp_path / "mnt2"], check=True)
    with open(img, "rb") as f:
        check_capturable(FsType.NTFS, f, 0, size, "partition 3")


def test_bitlocker_detected_and_refused(tmp_path: Path, tree: Path) -> None:
    img = blank(tmp_path / "bl.img", 16 * MiB)
    subprocess.run(["mkntfs", "-Q", "-F", img], check=True, capture_output=True)
    with open(img, "r+b") as f:
        f.seek(3)
        f.write(b"-FVE-FS-")
    size = img.stat().st_size
    with open(img, "rb") as f:
        assert detect(f, 0, size) is FsType.BITLOCKER
        assert used_extents(FsType.BITLOCKER, f, 0, size) == [(0, size)]
        with pytest.raises(FilesystemError) as err:
            check_capturable(FsType.BITLOCKER, f, 0, size, "partition 4")
    assert str(err.value) == (
        "partition 4 (16.0 MiB, BitLocker) is encrypted with BitLocker; fleetcast cannot read its used blocks"
    )
    assert err.value.hint == "unlock and decrypt it in Windows first, or capture it with --force-raw"


def test_swap_and_raw(tmp_path: Path) -> None:
    img = blank(tmp_path / "swap.img", 8 * MiB)
    subprocess.run(["mkswap", img], check=True, capture_output=True)
    with open(img, "rb") as f:
        assert detect(f, 0, 8 * MiB) is FsType.SWAP
        assert used_extents(FsType.SWAP, f, 0, 8 * MiB) == [(0, 8 * MiB)]
    junk = tmp_path / "junk.img"
    junk.write_bytes(random.Random(3).randbytes(MiB))
    with open(junk, "rb") as f:
        assert detect(f, 0, MiB) is FsType.RAW
        assert used_extents("raw", f, 0, MiB) == [(0, MiB)]


def test_partition_at_offset_in_disk(tmp_path: Path, tree: Path) -> None:
    """Parsers read at the partition's byte offset; extents stay relative to the partition."""
    part = _make_ext(tmp_path, tree, ["-b", "4096"], size=32 * MiB)
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as d:
        d.write(b"\xaa" * MiB)
        d.write(part.read_bytes())
        d.write(b"\xbb" * MiB)
    _, alone = _extents(part)
    with open(disk, "rb") as f:
        assert detect(f, MiB, 32 * MiB) is FsType.EXT
        assert used_extents(FsType.EXT, f, MiB, 32 * MiB) == alone


def test_truncated_partition_is_an_error(tmp_path: Path, tree: Path) -> None:
    img = _make_ext(tmp_path, tree, ["-b", "4096"], size=32 * MiB)
    with open(img, "rb") as f, pytest.raises(FilesystemError) as err:
        used_extents(FsType.EXT, f, 0, 16 * MiB)
    assert str(err.value) == "ext filesystem is 33554432 bytes but its partition is only 16777216 bytes"


def _restart_page(lsn: int, in_use: int, flags: int, page_size: int = 4096) -> bytes:
    """A $LogFile restart page (RSTR) with update-sequence fixups; restart area at 0x30."""
    page = bytearray(page_size)
    count = page_size // 512 + 1
    page[0:4] = b"RSTR"
    struct.pack_into("<HHQIIHhh", page, 4, 0x1E, count, 0, page_size, page_size, 0x30, 1, 1)
    struct.pack_into("<QHHHH", page, 0x30, lsn, 1, 0xFFFF, in_use, flags)
    page[0x1E:0x20] = b"\x01\x00"
    for i in range(1, count):
        end = i * 512
        page[0x1E + 2 * i : 0x20 + 2 * i] = page[end - 2 : end]
        page[end - 2 : end] = b"\x01\x00"
    return bytes(page)


def test_ntfs_unclean_logfile_refused(tmp_path: Path, tree: Path) -> None:
    img = _make_ntfs(tmp_path, tree)
    size = img.stat().st_size
    with open(img, "r+b") as f:
        vol = Volume(f, 0, size)
        lcn, _count = vol.data(2).runs[0]
        assert lcn is not None
        f.seek(lcn * vol.boot.cluster_size)
        f.write(_restart_page(7, 0, 0) + _restart_page(6, 0xFFFF, 0))
    with open(img, "rb") as f, pytest.raises(FilesystemError) as err:
        check_capturable(FsType.NTFS, f, 0, size, "partition 2")
    assert str(err.value) == (
        "partition 2 (64.0 MiB, NTFS) was not shut down cleanly ($LogFile holds changes not yet written "
        "to the volume)"
    )
