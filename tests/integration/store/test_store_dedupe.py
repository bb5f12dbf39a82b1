"""Dedupe: the same disk twice adds nothing, a few changed files add only their chunks, rm + gc frees exactly
what no image references any more."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pytest
from store_disks import mounted, sha256

from fleetcast.store.capture import CaptureStats, capture
from fleetcast.store.images import ImageStore
from fleetcast.store.restore import restore

pytestmark = pytest.mark.integration


def test_dedupe_and_gc(golden: Path, tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    first = CaptureStats()
    m1 = capture(golden, "one", store, stats=first)
    assert first.new_chunks == len(m1.chunk_ids())
    assert first.new_bytes == m1.stored_bytes

    second = CaptureStats()
    m2 = capture(golden, "two", store, stats=second)
    assert second.new_chunks == 0
    assert second.new_bytes == 0
    assert m2.chunk_ids() == m1.chunk_ids()

    # change two files in place on a copy: ext4 and NTFS
    copy = tmp_path / "changed.img"
    shutil.copyfile(golden, copy)
    rnd = random.Random(7)
    changed_bytes = 0
    with mounted(copy, 3, "ext4", read_only=False) as mnt:
        victim = sorted((mnt / "data").glob("blob*.bin"))[0]
        data = rnd.randbytes(victim.stat().st_size)
        with open(victim, "r+b") as f:
            f.write(data)
        changed_bytes += len(data)
    with mounted(copy, 2, "ntfs", read_only=False) as mnt:
        victim = sorted((mnt / "data").glob("blob*.bin"))[1]
        data = rnd.randbytes(victim.stat().st_size)
        with open(victim, "r+b") as f:
            f.write(data)
        changed_bytes += len(data)
    third = CaptureStats()
    m3 = capture(copy, "three", store, stats=third)
    new_ids = set(m3.chunk_ids()) - set(m1.chunk_ids())
    assert len(new_ids) == third.new_chunks
    # only the windows of the two files (~1 MiB each, 64 KiB windows) and a few metadata windows
    # (journal, MFT, bitmaps) are new; they are stored together in one new pack
    old_hashes = {c.hash for _, c in m1.entries()}
    new_slices = {c.hash for _, c in m3.entries()} - old_hashes
    assert 2 * 15 <= len(new_slices) <= 2 * 17 + 24, len(new_slices)
    assert third.new_chunks == 1
    assert changed_bytes < third.new_bytes < changed_bytes * 1.1 + (256 << 10)

    # the re-captured image mixes old and new packs; it restores to exactly the changed disk
    out = tmp_path / "three.img"
    restore(m3, store.source(), out)
    assert sha256(out) == sha256(copy)

    # rm + gc frees exactly the chunks only "three" used
    only_three = sum(size for cid, size in m3.chunk_sizes().items() if cid in new_ids)
    store.remove("three")
    report = store.gc()
    assert report.removed_chunks == len(new_ids)
    assert report.freed_chunk_bytes == only_three
    assert report.removed_leftovers == 0
    # "one" and "two" share everything: removing one frees nothing, removing both frees all
    store.remove("one")
    assert store.gc().freed_bytes == 0
    assert store.verify("two").ok
    store.remove("two")
    last = store.gc()
    assert last.freed_chunk_bytes == m1.stored_bytes
    assert sum(1 for _ in store.chunks.iter_files()) == 0
    assert store.check().ok
    os.sync()
