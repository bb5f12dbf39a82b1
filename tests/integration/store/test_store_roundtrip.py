"""Capture -> store -> restore on real filesystems: the partition table and every file come back identical."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
from pathlib import Path

import pytest
from store_disks import MiB, fat_listing, mounted, sha256, tree

from fleetcast.disk.loop import attach
from fleetcast.disk.partitions import read_table
from fleetcast.store.capture import CaptureStats, capture
from fleetcast.store.exchange import export_image, import_image
from fleetcast.store.images import ImageStore
from fleetcast.store.restore import restore

pytestmark = pytest.mark.integration


def assert_same_disk_contents(a: Path, b: Path) -> None:
    assert read_table(a).to_dict() == read_table(b).to_dict()
    assert fat_listing(a) == fat_listing(b)
    with mounted(a, 3, "ext4") as ma, mounted(b, 3, "ext4") as mb:
        ta, tb = tree(ma), tree(mb)
        assert len(ta) > 40
        assert ta == tb
    with mounted(a, 2, "ntfs") as ma, mounted(b, 2, "ntfs") as mb:
        ta, tb = tree(ma, acl=True), tree(mb, acl=True)
        assert any(v[-1] for v in ta.values()), "no NTFS ACLs read"
        assert ta == tb


def test_cli_round_trip_file_target(golden: Path, tmp_path: Path, fleetcast_bin: Path) -> None:
    store = tmp_path / "store"
    before = sha256(golden)
    proc = subprocess.run(
        [fleetcast_bin, "image", "capture", golden, "g1", "--store", store, "--json"],
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    out = json.loads(proc.stdout)
    assert out["name"] == "g1"
    assert out["disk_size"] == golden.stat().st_size
    assert [p["fstype"] for p in out["partitions"]] == ["fat", "ntfs", "ext"]
    assert out["os_hint"] == "windows"
    assert out["stored_bytes"] < out["used_bytes"]
    assert sha256(golden) == before, "capture changed the source"

    target = tmp_path / "restored.img"
    proc = subprocess.run(
        [fleetcast_bin, "image", "restore", "g1", target, "--store", store, "--json"],
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert json.loads(proc.stdout)["chunks_written"] == json.loads(proc.stdout)["chunks_total"]
    assert target.stat().st_size == golden.stat().st_size
    # the golden disk was built on a zeroed sparse file, so even the unused blocks match
    assert sha256(target) == before
    assert_same_disk_contents(golden, target)

    listing = subprocess.run(
        [fleetcast_bin, "image", "list", "--store", store, "--json"], capture_output=True, check=True
    )
    assert [i["name"] for i in json.loads(listing.stdout)] == ["g1"]
    info = subprocess.run(
        [fleetcast_bin, "image", "info", "g1", "--store", store, "--json"], capture_output=True, check=True
    )
    assert json.loads(info.stdout)["table"]["label"] == "gpt"
    verify = subprocess.run(
        [fleetcast_bin, "image", "verify", "g1", "--store", store, "--json"], capture_output=True, check=False
    )
    assert verify.returncode == 0
    assert json.loads(verify.stdout)["ok"] is True


def test_restore_onto_dirty_block_device(golden: Path, tmp_path: Path) -> None:
    """A loop device full of old random data: used blocks (zeros included) must come out right."""
    store = ImageStore(tmp_path / "store")
    m = capture(golden, "g", store)
    assert any(a.zeros for a in m.areas)
    backing = tmp_path / "dirty.img"
    with open(backing, "wb") as f:
        block = os.urandom(MiB)
        for _ in range(golden.stat().st_size // MiB):
            f.write(block)
    with attach(backing) as dev:
        result = restore(m, store.source(), dev)
    assert result.zeroed_bytes > 0
    assert result.chunks_written == m.entry_count
    assert_same_disk_contents(golden, backing)


def test_resume_from_checkpoint(golden: Path, tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    m = capture(golden, "g", store, pack_size=2 * MiB)
    checkpoints: list[frozenset[str]] = []
    target = tmp_path / "t.img"
    restore(m, store.source(), target, on_checkpoint=checkpoints.append, checkpoint_bytes=4 * MiB)
    assert checkpoints[-1] == set(m.pack_ids())
    assert len(checkpoints) > 2
    assert all(a <= b for a, b in itertools.pairwise(checkpoints))
    # resume a fresh copy from a middle checkpoint over a target that holds only the first part
    partial = tmp_path / "p.img"
    seen: list[frozenset[str]] = []

    class Stop(Exception):
        pass

    def stop_at(done: frozenset[str]) -> None:
        seen.append(done)
        if len(seen) == 2:
            raise Stop

    with pytest.raises(Stop):
        restore(m, store.source(), partial, on_checkpoint=stop_at, checkpoint_bytes=4 * MiB)
    result = restore(m, store.source(), partial, done=seen[-1])
    assert len(seen[-1]) > 0 and result.packs_written == len(m.pack_ids()) - len(seen[-1])
    assert sha256(partial) == sha256(golden)


def test_unpartitioned_disk_round_trip(tmp_path: Path) -> None:
    bare = tmp_path / "bare.img"
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    (root / "d" / "f.txt").write_text("bare filesystem\n" * 1000)
    subprocess.run(["mkfs.ext4", "-q", "-d", root, bare, "32M"], check=True)
    store = ImageStore(tmp_path / "store")
    m = capture(bare, "bare", store)
    assert [(a.kind, a.fstype) for a in m.areas] == [("disk", "ext")]
    assert m.table.label == "none"
    out = tmp_path / "out.img"
    restore(m, store.source(), out)
    assert sha256(out) == sha256(bare)


def test_export_import_qcow2(golden: Path, tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    capture(golden, "g", store)
    qcow = tmp_path / "g.qcow2"
    assert export_image(store, "g", qcow) == "qcow2"
    proc = subprocess.run(["qemu-img", "info", "--output=json", qcow], capture_output=True, check=True)
    info = json.loads(proc.stdout)
    assert info["format"] == "qcow2"
    assert info["virtual-size"] == golden.stat().st_size
    stats = CaptureStats()
    m2 = import_image(store, qcow, "g-imported", stats=stats)
    assert stats.new_chunks == 0, "identical data must dedupe completely"
    raw = tmp_path / "g.raw"
    export_image(store, "g-imported", raw)
    assert sha256(raw) == sha256(golden)
    assert m2.table.to_dict() == read_table(golden).to_dict()
    vhdx = tmp_path / "g.vhdx"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vhdx", raw, vhdx], check=True)
    import_image(store, vhdx, "g-vhdx")
    assert store.names() == ["g", "g-imported", "g-vhdx"]
    assert store.check().ok
    assert not any(store.tmp_dir.iterdir())


def test_grow_onto_larger_target(golden: Path, tmp_path: Path) -> None:
    pytest.importorskip("fleetcast.disk.grow")
    store = ImageStore(tmp_path / "store")
    m = capture(golden, "g", store)
    target = tmp_path / "big.img"
    with open(target, "wb") as f:
        f.truncate(golden.stat().st_size + 64 * MiB)
    result = restore(m, store.source(), target, grow=True)
    assert result.grown
    table = read_table(target)
    old = read_table(golden)
    assert table.partitions[2].size > old.partitions[2].size
    assert table.partitions[:2] == old.partitions[:2]
    with mounted(target, 3, "ext4") as mt, mounted(golden, 3, "ext4") as mg:
        assert tree(mt) == tree(mg)
        assert os.statvfs(mt).f_blocks > os.statvfs(mg).f_blocks


def test_mbr_with_logical_partitions(tmp_path: Path) -> None:
    """MBR: the extended container is not an area; its EBRs are captured as gaps; logical partitions work."""
    disk = tmp_path / "mbr.img"
    with open(disk, "wb") as f:
        f.truncate(64 * MiB)
    subprocess.run(["sfdisk", "-q", disk], input=b"label: dos\n,16M,83\n,,5\n,20M,83\n,,83\n", check=True)
    root = tmp_path / "root"
    root.mkdir()
    (root / "hello.txt").write_text("logical partition\n" * 500)
    fs = tmp_path / "p5.img"
    subprocess.run(["mkfs.ext4", "-q", "-d", root, fs, "20M"], check=True)
    start5 = read_table(disk).partition(5).start * 512
    with open(disk, "r+b") as f:
        f.seek(start5)
        f.write(fs.read_bytes())
    store = ImageStore(tmp_path / "store")
    m = capture(disk, "mbr", store)
    assert [(a.number, a.fstype) for a in m.areas if a.kind == "partition"] == [
        (1, "raw"),
        (5, "ext"),
        (6, "raw"),
    ]
    out = tmp_path / "out.img"
    restore(m, store.source(), out)
    assert read_table(out).to_dict() == read_table(disk).to_dict()
    assert sha256(out) == sha256(disk)


def test_bitlocker_is_refused_naming_the_partition(tmp_path: Path, fleetcast_bin: Path) -> None:
    disk = tmp_path / "bl.img"
    with open(disk, "wb") as f:
        f.truncate(32 * MiB)
    subprocess.run(["sfdisk", "-q", disk], input=b"label: gpt\n,8M\n,,\n", check=True)
    start2 = read_table(disk).partition(2).start * 512
    with open(disk, "r+b") as f:
        f.seek(start2)
        f.write(b"\xeb\x58\x90-FVE-FS-" + os.urandom(500))
        f.seek(start2 + MiB)
        f.write(os.urandom(MiB))
    store = tmp_path / "store"
    proc = subprocess.run(
        [fleetcast_bin, "image", "capture", disk, "bl", "--store", store],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[0].startswith(f"fleetcast: error: partition 2 of {disk} (")
    assert "is encrypted with BitLocker" in proc.stderr
    assert "--force-raw" in proc.stderr
    assert not (store / "images" / "bl").exists()
    proc = subprocess.run(
        [fleetcast_bin, "image", "capture", disk, "bl", "--store", store, "--force-raw", "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert [p["fstype"] for p in json.loads(proc.stdout)["partitions"]] == ["raw", "bitlocker"]
    out = tmp_path / "out.img"
    restore(ImageStore(store).open("bl"), ImageStore(store).source(), out)
    assert sha256(out) == sha256(disk)


def test_capture_refuses_a_disk_with_a_partition_mounted_read_write(golden: Path, tmp_path: Path) -> None:
    from fleetcast.disk.loop import partitions
    from fleetcast.errors import CaptureError

    store = ImageStore(tmp_path / "store")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with attach(golden, read_only=True) as dev:
        parts = partitions(dev, expected=3)
        subprocess.run(["mount", "-o", "ro", parts[2], mnt], check=True)
        try:
            m = capture(dev, "ro-mounted", store)  # a read-only mount cannot change under us
            assert m.disk_size == golden.stat().st_size
        finally:
            subprocess.run(["umount", mnt], check=True)
    copy = tmp_path / "copy.img"
    subprocess.run(["cp", "--sparse=always", golden, copy], check=True)
    with attach(copy) as dev:
        parts = partitions(dev, expected=3)
        subprocess.run(["mount", parts[2], mnt], check=True)
        try:
            with pytest.raises(CaptureError) as err:
                capture(dev, "rw-mounted", store)
        finally:
            subprocess.run(["umount", mnt], check=True)
    assert str(err.value) == f"source {dev} is in use: {parts[2]} is mounted read-write on {mnt}"
    assert store.names() == ["ro-mounted"]
