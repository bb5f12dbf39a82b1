"""The store's bookkeeping without disks: names, missing images, capture transactions vs gc and check."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetcast.errors import CaptureError, ImageNotFound, StoreError, UsageError
from fleetcast.store.chunkstore import chunk_hash, compress
from fleetcast.store.images import ImageStore


def test_missing_image_is_named(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "s")
    with pytest.raises(ImageNotFound) as err:
        store.open("win11")
    assert str(err.value) == f"image 'win11' does not exist in the store {tmp_path / 's'}"
    assert err.value.exit_code == 3
    assert store.names() == []
    assert store.list() == []


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".hidden", "-rf", "x" * 129, "sp ace"])
def test_bad_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(UsageError) as err:
        ImageStore(tmp_path).open(name)
    assert str(err.value) == (
        f"image name {name!r} is not valid: expected 1-128 letters, digits, '.', '_' or '-', "
        "starting with a letter or digit"
    )


def test_gc_refuses_while_a_capture_runs_and_check_sees_it(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "s")
    data = b"pack" * 1000
    pid = chunk_hash(data)
    with store.begin_capture("img") as txn:
        txn.add_chunk(pid, compress(data))
        with pytest.raises(StoreError) as err:
            store.gc()
        assert str(err.value) == f"the store {store.root} is busy: a capture is running"
        report = store.check()
        assert report.running_captures == [str(txn.dir)]
        assert report.leftovers == []
        assert report.ok
    # leaving without commit removes the capture's work
    assert list(store.tmp_dir.iterdir()) == []
    assert not store.chunks.has(pid)
    assert store.gc().freed_bytes == 0


def test_leftovers_are_reported_and_collected(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "s")
    store.ensure()
    dead = store.tmp_dir / "cap-x-1-abcd"
    (dead / "chunks").mkdir(parents=True)
    (dead / "chunks" / "junk").write_bytes(b"x" * 100)
    stray = store.chunks.root / "ab" / "not-a-chunk"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"y" * 10)
    report = store.check()
    assert not report.ok
    assert sorted(report.leftovers) == sorted([str(dead), str(stray)])
    gc = store.gc()
    assert gc.removed_leftovers == 2
    assert gc.freed_leftover_bytes == 110
    assert store.check().ok


def test_existing_name_is_refused(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "s")
    store.ensure()
    (store.images_dir / "img").mkdir()
    (store.images_dir / "img" / "manifest.json").write_text("{}")
    with pytest.raises(CaptureError) as err, store.begin_capture("img"):
        pass
    assert str(err.value) == f"image 'img' already exists in the store {store.root}"
    assert err.value.hint == "pick another name, or remove it first: fleetcast image rm img"


MOUNTINFO = """\
22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 22 7:3 / /mnt/ro ro,relatime shared:2 - ext4 /dev/loop3p3 ro
41 22 0:52 / /mnt/win rw,nosuid,nodev,relatime shared:3 - fuseblk /dev/loop3p2 rw,user_id=0
"""


def test_mounted_read_write_partition_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fleetcast.store import capture as capture_mod

    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO)
    devices = {"7:0": Path("/dev/loop3"), "7:2": Path("/dev/loop3p2"), "7:3": Path("/dev/loop3p3")}
    monkeypatch.setattr(capture_mod, "_block_devices", lambda source: devices)
    # the FUSE (ntfs-3g) mount is found by its source device, the ro ext4 mount is allowed
    with pytest.raises(CaptureError) as err:
        capture_mod.check_not_mounted_rw(Path("/dev/loop3"), info)
    assert str(err.value) == "source /dev/loop3 is in use: /dev/loop3p2 is mounted read-write on /mnt/win"
    assert err.value.hint == "unmount it (or remount it read-only) before capturing: umount /mnt/win"
    info.write_text(MOUNTINFO.splitlines()[0] + "\n" + MOUNTINFO.splitlines()[1] + "\n")
    capture_mod.check_not_mounted_rw(Path("/dev/loop3"), info)


def test_gc_keeps_a_running_export_work_directory(tmp_path: Path) -> None:
    from fleetcast.store.exchange import _workdir

    store = ImageStore(tmp_path / "s")
    with _workdir(store, "export") as work:
        (work / "disk.raw").write_bytes(b"z" * 10)
        report = store.check()
        assert report.running_captures == [str(work)]
        assert report.leftovers == []
        gc = store.gc()
        assert (gc.removed_leftovers, gc.freed_leftover_bytes) == (0, 0)
        assert (work / "disk.raw").read_bytes() == b"z" * 10
    assert list(store.tmp_dir.iterdir()) == []


def test_unusable_lock_file_is_a_store_error(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "s")
    store.ensure()
    store.lock_path.unlink()
    store.lock_path.mkdir()
    with pytest.raises(StoreError) as err:
        store.gc()
    assert str(err.value) == f"cannot open the store's lock file {store.lock_path}: Is a directory"


def test_manifest_bytes_are_the_validated_ones(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "s")
    store.ensure()
    (store.images_dir / "img").mkdir()
    (store.images_dir / "img" / "manifest.json").write_text("{}")
    with pytest.raises(StoreError) as err:
        store.read_manifest_bytes("img")
    assert str(err.value).startswith("image 'img' has an invalid manifest: manifest is missing 'format'")


def test_an_image_with_a_damaged_manifest_can_be_removed(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "s")
    store.ensure()
    (store.images_dir / "img").mkdir()
    (store.images_dir / "img" / "manifest.json").write_text("{")
    with pytest.raises(StoreError) as err:
        store.gc()
    assert str(err.value).startswith("refusing to collect garbage: 1 image(s) have damaged manifests (img: ")
    assert err.value.hint == "fix or remove those images first ('fleetcast store check' lists them)"
    store.remove("img")
    assert store.names() == []
    assert store.gc().freed_bytes == 0
    with pytest.raises(ImageNotFound) as missing:
        store.remove("img")
    assert str(missing.value) == f"image 'img' does not exist in the store {store.root}"


def test_capture_refuses_packs_a_restore_would_refuse(tmp_path: Path) -> None:
    from fleetcast.store.capture import capture

    with pytest.raises(UsageError) as err:
        capture(tmp_path / "missing.img", "img", ImageStore(tmp_path / "s"), pack_size=256 << 20)
    assert str(err.value) == (
        f"pack size {256 << 20} with chunk size 65536 would make packs larger than the "
        f"{256 << 20} bytes a restore accepts"
    )


def test_directories_with_impossible_names_are_not_images(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "s")
    store.ensure()
    for odd in (".snapshot", "copy of img"):
        (store.images_dir / odd).mkdir()
        (store.images_dir / odd / "manifest.json").write_text("{}")
    assert store.names() == []
    assert store.list() == []
    assert store.check().ok
    assert store.gc().freed_bytes == 0
