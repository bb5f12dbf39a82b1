"""gc --repack: packs whose live data fell below the threshold are rewritten, the images re-pointed stay
byte-identical on restore and verify, the transfer amplification falls, and a leased pack is left alone."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import pytest

from fleetcast.store.capture import capture
from fleetcast.store.images import ImageStore
from fleetcast.store.repack import amplification, repack_store
from fleetcast.store.restore import restore

pytestmark = pytest.mark.integration

W = 64 << 10
MiB = 1 << 20


def _generations(tmp_path: Path, store: ImageStore, n: int) -> Path:
    rnd = random.Random(3)
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"".join(rnd.randbytes(W) for _ in range(64)))  # 4 MiB: 4 packs of 1 MiB
    capture(disk, "gen0", store, pack_size=MiB)
    with open(disk, "r+b") as f:
        for g in range(1, n + 1):
            for w in rnd.sample(range(64), 8):  # 12 % per generation: old packs go stale fast
                f.seek(w * W)
                f.write(rnd.randbytes(W))
            f.flush()
            capture(disk, f"gen{g}", store, pack_size=MiB)
    return disk


def test_repack_lowers_amplification_and_keeps_images_exact(tmp_path: Path, fleetcast_bin: Path) -> None:
    store = ImageStore(tmp_path / "store")
    disk = _generations(tmp_path, store, 4)
    for g in range(3):
        store.remove(f"gen{g}")
    store.gc()
    fetched, needed = amplification(store, store.open("gen4"))
    before = fetched / needed
    assert before > 1.3
    keep = store.open("gen3").pack_ids()[0]  # leased: never rewritten
    old_ids = {n: store.open(n).image_id for n in store.names()}
    report = repack_store(store, threshold=0.9, protect={keep}, pack_size=MiB)
    assert report.candidates > 0 and report.new_packs > 0
    assert store.chunks.has(keep)
    assert set(report.images_rewritten) <= {"gen3", "gen4"} and report.images_rewritten
    for name in report.images_rewritten:
        assert store.open(name).image_id != old_ids[name]
    fetched, needed = amplification(store, store.open("gen4"))
    assert fetched / needed < before
    assert store.verify("gen4").ok and store.verify("gen3").ok
    store.gc()
    check = store.check()
    assert check.ok and check.damaged_manifests == [], check.to_dict()
    out = tmp_path / "out.img"
    restore(store.open("gen4"), store.source(), out)
    assert out.read_bytes() == disk.read_bytes()
    # the CLI: nothing left under the threshold now except the leased pack's neighbours
    proc = subprocess.run(
        [
            str(fleetcast_bin),
            "store",
            "gc",
            "--repack",
            "--threshold",
            "0.5",
            "--json",
            "--store",
            str(store.root),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(proc.stdout)["repack"]["candidates"] == 0
