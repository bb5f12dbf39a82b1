"""Format version 2 on the real FAT/NTFS/ext4 disk: any-order restore, integrity, kill -9 and resume."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import Collection, Iterator
from pathlib import Path

import pytest
from store_disks import MiB, parts_of, sha256

from fleetcast.errors import ChunkCorrupt, ManifestError, RestoreError
from fleetcast.store.capture import capture
from fleetcast.store.images import ImageStore
from fleetcast.store.index import IndexReader, write_index
from fleetcast.store.manifest import INDEX_FILE, Manifest, image_id, load_image
from fleetcast.store.restore import restore

pytestmark = pytest.mark.integration

PACK = MiB  # small packs: dozens of them on the 160 MiB test disk


class Shuffled:
    """A PackSource in its own order: a random permutation, some packs twice, another image's mixed in;
    it records what it was asked for."""

    def __init__(self, store: ImageStore, extra: list[str], seed: int, *, damaged: str | None = None):
        self.store = store
        self.extra = extra
        self.rnd = random.Random(seed)
        self.asked: list[set[str]] = []
        self.damaged = damaged

    def packs(self, wanted: Collection[str]) -> Iterator[tuple[str, bytes]]:
        self.asked.append(set(wanted))
        order = list(wanted) + self.rnd.sample(list(wanted), k=max(1, len(wanted) // 4)) + self.extra
        self.rnd.shuffle(order)
        if self.damaged is not None:
            order.insert(0, self.damaged)
        for pid in order:
            data = self.store.chunks.read(pid)
            if pid == self.damaged:
                flipped = bytearray(data)
                flipped[len(flipped) // 3] ^= 0x04
                data = bytes(flipped)
            yield pid, data


@pytest.fixture(scope="module")
def images(golden: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[ImageStore, Manifest, Manifest]:
    store = ImageStore(tmp_path_factory.mktemp("v2") / "store")
    m = capture(golden, "g", store, pack_size=PACK)
    other = tmp_path_factory.mktemp("v2o") / "other.img"
    other.write_bytes(os.urandom(4 * MiB))
    o = capture(other, "other", store, pack_size=PACK)
    return store, m, o


def test_v2_manifest_and_index(images: tuple[ImageStore, Manifest, Manifest]) -> None:
    store, m, _ = images
    assert m.version == 2 and m.index is not None
    raw = json.loads((store.images_dir / "g" / "manifest.json").read_bytes())
    assert "chunks" not in raw["areas"][0] and raw["index"]["entries"] == m.entry_count
    index_size = (store.images_dir / "g" / INDEX_FILE).stat().st_size
    assert index_size <= m.used_bytes / 1000  # the target: index <= 0.1 % of the used bytes
    for a in m.areas:
        assert a.used == a.data_bytes + sum(n for _, n in a.zeros) + a.skipped
    assert m.image_id == image_id((store.images_dir / "g" / "manifest.json").read_bytes())


def test_any_order_with_duplicates_and_foreign_packs(
    images: tuple[ImageStore, Manifest, Manifest], golden: Path, tmp_path: Path
) -> None:
    store, m, o = images
    in_order = tmp_path / "in-order.img"
    restore(m, store.source(), in_order)
    assert sha256(in_order) == sha256(golden)
    source = Shuffled(store, o.pack_ids(), seed=7)
    out = tmp_path / "shuffled.img"
    result = restore(m, source, out)
    assert sha256(out) == sha256(in_order)
    assert result.packs_written == len(m.pack_ids()) > 15
    assert len(source.asked) == 1


def test_a_flipped_byte_in_any_pack_fails_naming_it(
    images: tuple[ImageStore, Manifest, Manifest], tmp_path: Path
) -> None:
    store, m, _ = images
    for pack in m.pack_refs():
        with pytest.raises(ChunkCorrupt) as err:
            restore(m, Shuffled(store, [], seed=1, damaged=pack.id), tmp_path / "t.img")
        assert err.value.message.startswith(
            f"image 'g': pack {pack.id} is corrupt: its stored bytes hash to "
        ), err.value.message


_CHILD = """
import os, signal, sys
from pathlib import Path
from fleetcast.store.images import ImageStore
from fleetcast.store.restore import restore
store = ImageStore(Path(sys.argv[1]))
m = store.open("g")
half = len(m.pack_ids()) // 2
def checkpoint(done):
    Path(sys.argv[3]).write_text("\\n".join(sorted(done)))
    if len(done) >= half:
        os.kill(os.getpid(), signal.SIGKILL)
restore(m, store.source(), Path(sys.argv[2]), on_checkpoint=checkpoint, checkpoint_bytes=1)
"""


def _mounts(disk: Path, golden: Path) -> list[str]:
    """Which of the golden disk's filesystems mount (or list) at their offsets on ``disk``."""
    (esp, _), (ntfs, ntfs_size), (ext, ext_size) = parts_of(golden)
    found = []
    if (
        subprocess.run(["mdir", "-i", f"{disk}@@{esp}", "::/"], capture_output=True, check=False).returncode
        == 0
    ):
        found.append("fat")
    for name, start, size, cmd in (
        ("ntfs", ntfs, ntfs_size, "ntfs-3g -o ro"),
        ("ext4", ext, ext_size, "mount -o ro"),
    ):
        script = (
            f"set -e; d=$(losetup -f --show -r -o {start} --sizelimit {size} {disk}); "
            f"m=$(mktemp -d); r=0; {cmd} $d $m 2>/dev/null || r=1; "
            f"[ $r = 0 ] && umount $m; rmdir $m; losetup -d $d; exit $r"
        )
        proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], check=False)
        if proc.returncode == 0:
            found.append(name)
    return found


def test_kill_9_half_way_then_resume(
    images: tuple[ImageStore, Manifest, Manifest], golden: Path, tmp_path: Path
) -> None:
    store, m, _ = images
    target = tmp_path / "t.img"
    old = random.Random(3).randbytes(MiB)
    with open(target, "wb") as f:  # a disk that held another image
        for _ in range(golden.stat().st_size // MiB):
            f.write(old)
    done_file = tmp_path / "done"
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(store.root), str(target), str(done_file)],
        capture_output=True,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    done = set(done_file.read_text().split())
    assert len(m.pack_ids()) // 2 <= len(done) < len(m.pack_ids())
    # the interrupted disk: no partition table, nothing mounts
    assert subprocess.run(["sfdisk", "-d", str(target)], capture_output=True, check=False).returncode != 0
    assert _mounts(target, golden) == []
    source = Shuffled(store, [], seed=5)
    result = restore(m, source, target, done=done)
    assert source.asked == [set(m.pack_ids()) - done]  # only the others, counted
    assert result.packs_written == len(m.pack_ids()) - len(done)
    assert sha256(target) == sha256(golden)
    assert _mounts(target, golden) == ["fat", "ntfs", "ext4"]


def test_metadata_edits_are_refused_before_writing(
    images: tuple[ImageStore, Manifest, Manifest], tmp_path: Path
) -> None:
    store, m, _ = images
    image_dir = store.images_dir / "g"
    data = (image_dir / "manifest.json").read_bytes()
    assert m.index is not None
    entries = list(m.index.entries())
    target = tmp_path / "t.img"
    target.write_bytes(b"untouched" * 1000)

    # a deleted entry; then an extent shifted within its window
    victim = len(entries) // 2
    e = entries[victim]
    shifted = e._replace(extents=((e.extents[0][0] + 512, e.extents[0][1] - 512), *e.extents[1:]))
    edits = {
        "deleted entry": entries[:victim] + entries[victim + 1 :],
        "shifted extent": [*entries[:victim], shifted, *entries[victim + 1 :]],
    }
    for what, edited in edits.items():
        path = tmp_path / f"index-{what.replace(' ', '-')}"
        info = write_index(path, edited)
        with pytest.raises(ManifestError, match=r"^image 'g' chunk index (is|hashes|holds)"):
            load_image(data, path)
        lazy = load_image(data, path, lazy=True)  # a listing reads the manifest alone
        assert lazy.index is None and lazy.entry_count == m.entry_count
        with pytest.raises(ManifestError, match=r"^image 'g' chunk index (is|hashes|holds)"):
            restore(lazy, store.source(), target)  # the index is checked before anything is written
        # forged consistently (the manifest records the edited index): the planned image id refuses it
        raw = json.loads(data)
        raw["index"] = {"hash": info.hash, "size": info.size, "entries": info.entries}
        forged = json.dumps(raw, separators=(",", ":")).encode() + b"\n"
        with pytest.raises(
            ManifestError, match=r"^the image has id [0-9a-f]{64} but [0-9a-f]{64} was expected$"
        ):
            load_image(forged, path, expected_id=m.image_id)
        if what == "deleted entry":
            with pytest.raises(ManifestError, match="the areas hold"):
                load_image(forged, path)  # and the per-area entry counts no longer add up
    with pytest.raises(RestoreError, match="was planned"):
        restore(m, store.source(), target, expected_id="0" * 64)
    assert target.read_bytes() == b"untouched" * 1000
    IndexReader.open(image_dir / INDEX_FILE, m.index_info)  # the real index is fine


def test_bytes_appended_to_a_pack_fail_verify_and_restore(golden: Path, tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    m = capture(golden, "g", store, pack_size=PACK)
    pack = m.pack_refs()[len(m.pack_refs()) // 2]
    with open(store.chunk_path(pack.id), "ab") as f:
        f.write(os.urandom(1000))
    expected = (
        f"image 'g': pack {pack.id} is corrupt: it is {pack.stored + 1000} bytes, "
        f"the manifest records {pack.stored}"
    )
    assert store.verify("g").problems == [expected]
    target = tmp_path / "new.img"
    with pytest.raises(ChunkCorrupt) as err:
        restore(m, store.source(), target)
    assert err.value.message == expected
    assert not target.exists()  # a failed restore leaves no target file it created
