"""Tables sfdisk cannot write (parted's logical partitions), 4Kn disks as files, stale GPT headers.

Real files, real sfdisk/parted/wipefs and loop devices; capture and restore through the store.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from fleetcast.disk import device, loop
from fleetcast.disk.partitions import read_table, write_table
from fleetcast.errors import DiskError
from fleetcast.store.capture import capture
from fleetcast.store.images import ImageStore
from fleetcast.store.restore import restore

# exactly the command of the issue ("An MBR disk made by parted captures and can never be restored")
PARTED = (  # noqa: SIM905
    "mklabel msdos mkpart primary ext4 1MiB 100MiB mkpart extended 100MiB 100% "
    "mkpart logical ext4 101MiB 180MiB mkpart logical ntfs 368641s 250MiB "
    "mkpart logical fat16 512001s 612351s set 1 boot on"
).split()


def _blank(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def _parted_disk(tmp_path: Path) -> Path:
    img = _blank(tmp_path / "p.img", 300 << 20)
    subprocess.run(["parted", "-s", img, *PARTED], check=True, capture_output=True)
    # something recognisable in each partition and in the EBR sectors' neighbourhood
    with open(img, "r+b") as f:
        for sector in (2048, 206848, 368641, 512001, 612351):
            f.seek(sector * 512)
            f.write(hashlib.sha256(str(sector).encode()).digest() * 16)
    return img


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _wipefs(path: Path) -> list[str]:
    out = subprocess.run(
        ["wipefs", "--no-act", "--noheadings", "--output", "TYPE", path],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return sorted(set(out.split()))


def test_parted_logical_partitions_read_with_their_ebrs(tmp_path: Path) -> None:
    table = read_table(_parted_disk(tmp_path))
    assert [(p.number, p.start, p.type) for p in table.partitions] == [
        (1, 2048, "83"),
        (2, 204800, "f"),
        (5, 206848, "83"),
        (6, 368641, "7"),
        (7, 512001, "e"),
    ]
    assert table.ebrs == (204800, 368640, 512000)
    assert type(table).from_dict(table.to_dict()) == table


def test_parted_table_written_exactly_where_sfdisk_refuses(tmp_path: Path) -> None:
    src = _parted_disk(tmp_path)
    table = read_table(src)
    dst = _blank(tmp_path / "dst.img", 300 << 20)
    write_table(dst, table)
    assert read_table(dst) == table
    # the entries (type, start, size) of the MBR and of every EBR are the source's
    s, d = src.read_bytes(), dst.read_bytes()
    for lba in (0, *table.ebrs):
        for i in range(4):
            at = lba * 512 + 446 + 16 * i
            assert (d[at], d[at + 4], d[at + 8 : at + 16]) == (s[at], s[at + 4], s[at + 8 : at + 16])
        assert d[lba * 512 + 510 : lba * 512 + 512] == b"\x55\xaa"
    assert subprocess.run(["sfdisk", "-V", dst], check=False, capture_output=True).returncode == 0


def test_parted_table_without_recorded_ebrs_still_writes(tmp_path: Path) -> None:
    """A table from a manifest made before EBR sectors were recorded: sfdisk refuses, we write it."""
    import dataclasses

    table = dataclasses.replace(read_table(_parted_disk(tmp_path)), ebrs=())
    dst = _blank(tmp_path / "dst.img", 300 << 20)
    write_table(dst, table)
    assert read_table(dst).partitions == table.partitions


def test_parted_disk_captures_and_restores_byte_identical(tmp_path: Path) -> None:
    src = _parted_disk(tmp_path)
    store = ImageStore(tmp_path / "store")
    manifest = capture(src, "parted", store)
    target = tmp_path / "restored.img"
    restore(store.open("parted"), store.source(), target)
    assert manifest.table.ebrs == (204800, 368640, 512000)
    assert _sha(target) == _sha(src)


def test_mbr_onto_a_gpt_disk_leaves_no_gpt_signature(tmp_path: Path) -> None:
    table = read_table(_parted_disk(tmp_path))
    dst = _blank(tmp_path / "was-gpt.img", 300 << 20)
    subprocess.run(["sfdisk", "-q", dst], input=b"label: gpt\n,100M\n,\n", check=True)
    assert "gpt" in _wipefs(dst)
    write_table(dst, table)
    assert _wipefs(dst) == ["dos"]
    assert dst.read_bytes()[-512:-504] != b"EFI PART"


def _gpt_4k_file(tmp_path: Path) -> Path:
    img = _blank(tmp_path / "4kn.img", 64 << 20)
    with loop.attach(img, sector_size=4096) as dev:
        subprocess.run(["sfdisk", "-q", dev], input=b"label: gpt\n,16M\n,8M\n", check=True)
    with open(img, "r+b") as f:
        f.seek(4096 * 256 + 100)
        f.write(b"4Kn partition one")
    return img


def test_4k_gpt_file_is_read_as_the_4k_disk_it_is(tmp_path: Path) -> None:
    img = _gpt_4k_file(tmp_path)
    assert device.inspect(img).logical_sector_size == 4096
    table = read_table(img)
    assert (table.label, table.sector_size) == ("gpt", 4096)
    assert [(p.start, p.size) for p in table.partitions] == [(256, 4096), (4352, 2048)]
    with loop.attach(img, sector_size=4096, read_only=True) as dev:
        assert read_table(dev) == table


def test_4k_gpt_file_declared_512_is_refused_with_a_hint(tmp_path: Path) -> None:
    img = _gpt_4k_file(tmp_path)
    device.declare_sector_size(img, 512)
    with pytest.raises(DiskError) as err:
        read_table(img)
    assert str(err.value) == f"disk {img} has a GPT for 4096-byte sectors but is read with 512-byte sectors"
    assert err.value.hint == f"attach it as a 4096-byte-sector disk: losetup --sector-size 4096 -f {img}"


def test_4k_gpt_file_captures_and_restores_to_a_new_file(tmp_path: Path) -> None:
    img = _gpt_4k_file(tmp_path)
    store = ImageStore(tmp_path / "store")
    manifest = capture(img, "4kn", store)
    assert (manifest.logical_sector_size, manifest.table.label) == (4096, "gpt")
    target = tmp_path / "new.img"
    restore(store.open("4kn"), store.source(), target)
    assert _sha(target) == _sha(img)
    assert device.inspect(target).logical_sector_size == 4096


def test_protective_mbr_without_a_gpt_is_refused_with_a_hint(tmp_path: Path) -> None:
    img = _gpt_4k_file(tmp_path)
    with open(img, "r+b") as f:  # wipe the GPT headers, keep the protective MBR
        f.seek(4096)
        f.write(bytes(4096))
        f.seek(-4096, 2)
        f.write(bytes(4096))
    device.declare_sector_size(img, 512)
    with pytest.raises(DiskError) as err:
        read_table(img)
    assert str(err.value) == (
        f"disk {img} has a protective MBR (one type-ee partition) but no GPT fleetcast can read"
    )
    assert err.value.hint == f"check the disk with: sfdisk --verify {img}"
