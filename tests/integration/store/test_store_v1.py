"""A format-1 image written by the release before format 2 (tests/data/v1-image) still restores."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from store_disks import sha256

from fleetcast.store.images import ImageStore
from fleetcast.store.restore import restore

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[2] / "data" / "v1-image" / "store"
EXPECTED = "76524c168ce7be1bb2fac6e11e5f7df930f1d399f7b16e8929d5f60dce5f3d8c"


def test_v1_image_restores_identically(tmp_path: Path) -> None:
    root = tmp_path / "store"
    shutil.copytree(DATA, root)
    store = ImageStore(root)
    m = store.open("v1-sample")
    assert m.version == 1 and len(m.pack_ids()) == 6
    out = tmp_path / "out.img"
    result = restore(m, store.source(), out)
    assert result.packs_written == 6 and result.chunks_written == 27
    assert sha256(out) == EXPECTED


def test_v1_pack_with_bytes_appended_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "store"
    shutil.copytree(DATA, root)
    store = ImageStore(root)
    m = store.open("v1-sample")
    pack = m.pack_refs()[2]
    with open(store.chunk_path(pack.id), "ab") as f:
        f.write(b"appended")
    from fleetcast.errors import ChunkCorrupt

    with pytest.raises(ChunkCorrupt) as err:
        restore(m, store.source(), tmp_path / "out.img")
    assert err.value.message == (
        f"image 'v1-sample': pack {pack.id} is corrupt: it is {pack.stored + 8} bytes, "
        f"the manifest records {pack.stored}"
    )


def test_store_upgrade_rewrites_v1_as_v2_atomically(tmp_path: Path, fleetcast_bin: Path) -> None:
    import json
    import subprocess

    root = tmp_path / "store"
    shutil.copytree(DATA, root)
    store = ImageStore(root)
    old = store.open("v1-sample")
    run = [str(fleetcast_bin), "store", "upgrade", "--json", "--store", str(root)]
    out = json.loads(subprocess.run(run, check=True, capture_output=True, text=True).stdout)
    assert [u["name"] for u in out["upgraded"]] == ["v1-sample"] and out["failed"] == []
    m = store.open("v1-sample")
    assert m.version == 2 and m.image_id == out["upgraded"][0]["new_id"] != old.image_id
    assert m.pack_ids() == old.pack_ids() and all(p.hash for p in m.pack_refs())
    assert [c for _, c in m.entries()] == [c for _, c in old.entries()]
    assert store.verify("v1-sample").ok and store.check().ok
    assert list(store.tmp_dir.iterdir()) == []
    result = restore(m, store.source(), tmp_path / "out.img")
    assert result.packs_written == 6 and result.chunks_written == 27
    assert sha256(tmp_path / "out.img") == EXPECTED
    again = json.loads(subprocess.run(run, check=True, capture_output=True, text=True).stdout)
    assert again["upgraded"] == [] and again["current"] == ["v1-sample"]


def test_store_upgrade_refuses_a_damaged_v1_pack(tmp_path: Path) -> None:
    from fleetcast.store.upgrade import upgrade_store

    root = tmp_path / "store"
    shutil.copytree(DATA, root)
    store = ImageStore(root)
    m = store.open("v1-sample")
    pack = m.pack_refs()[1]
    path = store.chunk_path(pack.id)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    report = upgrade_store(store)
    assert len(report.failed) == 1 and report.failed[0].startswith(
        f"v1-sample: cannot upgrade image 'v1-sample': pack {pack.id} is corrupt: "
    )
    assert store.open("v1-sample").version == 1  # left as it was
