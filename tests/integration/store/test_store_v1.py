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
