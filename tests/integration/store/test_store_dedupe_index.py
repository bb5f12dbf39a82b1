"""The persistent dedupe index (store/dedupe.py) and the server's ingest API (store/ingest.py): lookups
agree with a scan of every manifest through capture, re-capture, rm, gc and a rebuild after the file was
deleted or damaged; uploaded packs are stored only when intact; gc keeps leased packs."""

from __future__ import annotations

import json
import random
import sqlite3
import subprocess
from pathlib import Path

import pytest

from fleetcast.errors import CaptureError, ChunkCorrupt, IntegrityError, UsageError
from fleetcast.store.capture import CaptureStats, capture
from fleetcast.store.chunkstore import chunk_hash, compress, decompress_verify
from fleetcast.store.dedupe import DB_FILE, DedupeIndex
from fleetcast.store.images import ImageStore, summary
from fleetcast.store.ingest import StoreIngest
from fleetcast.store.manifest import INDEX_FILE
from fleetcast.store.restore import restore
from fleetcast.store.sink_local import StoreSink

pytestmark = pytest.mark.integration

MiB = 1 << 20


def _disk(path: Path, seed: int, size: int = 6 * MiB, changed: int = 0) -> Path:
    """A raw, unpartitioned disk: random 64 KiB windows and zero ones; ``changed`` windows re-randomized."""
    rnd = random.Random(seed)
    out = bytearray()
    for i in range(size // (64 << 10)):
        out += rnd.randbytes(64 << 10) if i % 3 else bytes(64 << 10)
    crnd = random.Random(seed + 1000)
    for _ in range(changed):
        w = crnd.randrange(size // (64 << 10))
        out[w * (64 << 10) : (w + 1) * (64 << 10)] = crnd.randbytes(64 << 10)
    path.write_bytes(bytes(out))
    return path


def _scan(store: ImageStore) -> set[tuple[bytes, str, int]]:
    rows = set()
    for m in store.list():
        for _, c in m.entries():
            rows.add((bytes.fromhex(c.hash), c.id, c.offset))
    return rows


def _rows(store: ImageStore) -> set[tuple[bytes, str, int]]:
    with DedupeIndex.open(store, sync=False) as dx:
        return set(dx.rows())


def test_index_follows_capture_rm_gc_and_rebuild(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    a = _disk(tmp_path / "a.img", 1)
    capture(a, "a", store, pack_size=MiB)
    assert (store.root / DB_FILE).is_file()
    assert _rows(store) == _scan(store) != set()

    again = CaptureStats()
    capture(a, "a2", store, pack_size=MiB, stats=again)
    assert again.new_bytes == 0  # every chunk answered by the index
    b = _disk(tmp_path / "b.img", 1, changed=5)
    stats = CaptureStats()
    mb = capture(b, "b", store, pack_size=MiB, stats=stats)
    assert stats.new_chunks == 1  # the 5 changed windows only, in one new pack
    assert _rows(store) == _scan(store)

    mc = capture(_disk(tmp_path / "c.img", 3), "c", store, pack_size=MiB)
    for name in ("a", "a2", "c"):
        store.remove(name)
    report = store.gc()
    assert report.removed_chunks == len(mc.pack_ids())  # b still uses every pack of a
    # after rm + gc: no row names a removed pack; rows beyond the scan are chunks of the removed images
    # inside packs b still uses -- present and intact, so still answerable
    rows = _rows(store)
    assert rows >= _scan(store)
    assert {pid for _, pid, _ in rows} == set(mb.pack_ids())
    for h, pid, off in rows - _scan(store):
        data = decompress_verify(pid, store.chunks.read(pid), None, what="test")
        assert chunk_hash(data[off : off + (64 << 10)]) == h.hex()
    with DedupeIndex.rebuild(store)[0] as dx:
        assert set(dx.rows()) == _scan(store)
    with DedupeIndex.open(store) as dx:
        assert dx.image_ids() == {"b": mb.image_id}

    # store check says how the index stands; --repair rebuilds it
    assert store.check().dedupe_index["state"] == "current"
    (store.root / DB_FILE).unlink()
    assert store.check().dedupe_index["state"] == "missing"
    repaired = store.check(repair=True).dedupe_index
    assert repaired["state"] == "rebuilt" and repaired["images"] == 1
    assert _rows(store) == _scan(store)

    # deleted: rebuilt on the next open; damaged: rebuilt too
    (store.root / DB_FILE).unlink()
    assert _rows(store) == set()  # sync=False on a new file: empty
    with DedupeIndex.open(store) as dx:
        assert set(dx.rows()) == _scan(store)
    (store.root / DB_FILE).write_bytes(b"not a database" * 100)
    for suffix in ("-wal", "-shm"):
        (store.root / f"{DB_FILE}{suffix}").unlink(missing_ok=True)
    with DedupeIndex.open(store) as dx:
        assert dx.rebuilt
        assert set(dx.rows()) == _scan(store)

    # a capture killed between its publish and its index update: the next open takes the image in
    conn = sqlite3.connect(store.root / DB_FILE)
    conn.execute("DELETE FROM images")
    conn.execute("DELETE FROM chunks")
    conn.commit()
    conn.close()
    with DedupeIndex.open(store) as dx:
        assert set(dx.rows()) == _scan(store)

    # re-captured under the same name: a new publish, not an edit
    store.remove("b")
    mb = capture(_disk(tmp_path / "b2.img", 1, changed=9), "b", store, pack_size=MiB)
    assert store.check().damaged_manifests == [] and store.verify("b").ok
    with DedupeIndex.open(store) as dx:
        assert dx.image_ids() == {"b": mb.image_id}
    # edited in place (an entry's data re-pointed, the manifest's index fields fixed up): named
    manifest = store.manifest_path("b")
    doc = json.loads(manifest.read_bytes())
    doc["created"] = "2020-01-01T00:00:00+00:00"
    manifest.write_bytes(json.dumps(doc, separators=(",", ":")).encode() + b"\n")
    edited = store.open("b").image_id
    changed = f"image 'b' changed since it was published: its manifest and index now have id {edited}, "
    assert store.check().damaged_manifests == [changed + f"it was published as {mb.image_id}"]
    assert store.verify("b").problems == [changed + f"it was published as {mb.image_id}"]
    store.remove("b")
    mb = capture(_disk(tmp_path / "b2.img", 1, changed=9), "b", store, pack_size=MiB)

    # a pack deleted behind the store's back is never answered
    victim = mb.pack_ids()[0]
    store.chunks.path(victim).unlink()
    hashes = [bytes.fromhex(c.hash) for _, c in mb.entries()]
    with DedupeIndex.open(store) as dx:
        known = dx.have(hashes)
        assert known and all(k.pack != victim for k in known.values())
        assert all(pid != victim for _, pid, _ in dx.rows())


def test_upload_publish_and_leases(tmp_path: Path) -> None:
    src = ImageStore(tmp_path / "src")
    disk = _disk(tmp_path / "d.img", 2)
    m = capture(disk, "d", src, pack_size=MiB)
    dst = ImageStore(tmp_path / "dst")
    ing = StoreIngest(dst)

    hashes = [bytes.fromhex(c.hash) for _, c in m.entries()]
    assert ing.have(hashes) == {}
    first = m.pack_refs()[0]
    stored = src.chunks.read(first.id)
    with pytest.raises(ChunkCorrupt) as err:
        ing.put_pack(first.id, stored + b"x" * 100)
    assert str(err.value) == f"upload: pack {first.id} is corrupt: 100 bytes follow its zstd frame"
    with pytest.raises(ChunkCorrupt) as err:
        ing.put_pack(first.id, stored[:-10])
    assert str(err.value) == f"upload: pack {first.id} is corrupt: its zstd frame is cut off"
    other = compress(b"other" * 1000)
    with pytest.raises(ChunkCorrupt) as err:
        ing.put_pack(first.id, other)
    found = chunk_hash(b"other" * 1000)
    assert str(err.value) == f"upload: pack {first.id} is corrupt: its content hashes to {found}"
    assert not dst.chunks.has(first.id)

    manifest = src.read_manifest_bytes("d")
    index = (src.images_dir / "d" / INDEX_FILE).read_bytes()
    with pytest.raises(IntegrityError) as err2:
        ing.publish(manifest, index)
    assert str(err2.value) == f"uploaded image 'd' names pack {first.id}, which the store does not have"
    assert dst.names() == []

    for p in m.pack_refs():
        assert ing.put_pack(p.id, src.chunks.read(p.id), stored_hash=p.hash) == p
    # leased but not yet published: gc keeps them only when told
    assert dst.gc(protect=lambda: [p.id for p in m.pack_refs()]).removed_chunks == 0
    got = ing.publish(manifest, index, expected_id=m.image_id)
    assert got.image_id == m.image_id and dst.names() == ["d"]
    assert set(ing.have(hashes)) == set(hashes)
    assert dst.verify("d").ok
    out = tmp_path / "out.img"
    restore(dst.open("d"), dst.source(), out)
    assert out.read_bytes() == disk.read_bytes()

    # a second capture of another disk under the same name: refused, or replaced atomically
    src2 = ImageStore(tmp_path / "src2")
    disk2 = _disk(tmp_path / "d2.img", 9)
    m2 = capture(disk2, "d", src2, pack_size=MiB)
    for p in m2.pack_refs():
        ing.put_pack(p.id, src2.chunks.read(p.id))
    manifest2 = src2.read_manifest_bytes("d")
    index2 = src2.images_dir / "d" / INDEX_FILE
    with pytest.raises(CaptureError) as err3:
        ing.publish(manifest2, index2)
    assert str(err3.value) == f"image 'd' already exists in the store {dst.root}"
    assert ing.publish(manifest2, index2, replace=True).image_id == m2.image_id
    assert dst.open("d").image_id == m2.image_id and dst.names() == ["d"]
    assert list(dst.tmp_dir.iterdir()) == []
    restore(dst.open("d"), dst.source(), out)
    assert out.read_bytes() == disk2.read_bytes()
    assert dst.gc().removed_chunks == len(m.pack_ids())  # the replaced image's packs
    with DedupeIndex.open(dst) as dx:
        assert dx.image_ids() == {"d": m2.image_id}

    # an unreferenced upload: kept while leased, collected after
    extra = b"lease me" * 5000
    eid = chunk_hash(extra)
    ing.put_pack(eid, compress(extra))
    report = dst.gc(protect={eid})
    assert report.protected_packs == 1 and dst.chunks.has(eid)
    assert dst.gc().removed_chunks == 1 and not dst.chunks.has(eid)
    ing.close()


def test_list_and_info_show_referenced_and_unique_bytes(tmp_path: Path, fleetcast_bin: Path) -> None:
    store = ImageStore(tmp_path / "store")
    a = _disk(tmp_path / "a.img", 4)
    ma = capture(a, "a", store, pack_size=MiB)
    mb = capture(_disk(tmp_path / "b.img", 4, changed=3), "b", store, pack_size=MiB)
    mc = capture(_disk(tmp_path / "c.img", 5), "c", store, pack_size=MiB)
    new_in_b = set(mb.pack_ids()) - set(ma.pack_ids())
    assert len(new_in_b) == 1
    sizes = {p.id: p.stored for m in (ma, mb, mc) for p in m.pack_refs()}
    out = subprocess.run(
        [str(fleetcast_bin), "image", "list", "--json", "--store", str(store.root)],
        check=True,
        capture_output=True,
        text=True,
    )
    listed = {x["name"]: x for x in json.loads(out.stdout)}
    assert {n: (x["stored_bytes"], x["unique_bytes"]) for n, x in listed.items()} == {
        "a": (ma.stored_bytes, 0),  # every pack of a is shared with b
        "b": (mb.stored_bytes, sum(sizes[p] for p in new_in_b)),
        "c": (mc.stored_bytes, mc.stored_bytes),
    }
    assert listed["b"]["image_id"] == mb.image_id
    out = subprocess.run(
        [str(fleetcast_bin), "image", "info", "c", "--json", "--store", str(store.root)],
        check=True,
        capture_output=True,
        text=True,
    )
    assert json.loads(out.stdout)["unique_bytes"] == mc.stored_bytes
    # what rm + gc frees is exactly the unique bytes
    store.remove("b")
    assert store.gc().freed_chunk_bytes == listed["b"]["unique_bytes"]


def test_cli_gc_keeps_the_packs_a_server_leased(tmp_path: Path, fleetcast_bin: Path) -> None:
    from datetime import timedelta

    from sqlalchemy import text

    from fleetcast.server.db import Base, CaptureLease, Database, utcnow

    data = tmp_path / "data"
    store = ImageStore(data / "store")
    ing = StoreIngest(store)
    leased, free = b"leased" * 4000, b"free" * 6000
    ing.put_pack(chunk_hash(leased), compress(leased))
    ing.put_pack(chunk_hash(free), compress(free))
    ing.close()
    db = Database(f"sqlite:///{data / 'fleetcast.db'}")
    Base.metadata.create_all(db.engine)
    with db.transaction() as s:
        s.execute(text("PRAGMA foreign_keys=OFF"))  # a lease without its capture row, for this test
        s.add(
            CaptureLease(capture_id=1, pack_id=chunk_hash(leased), expires_at=utcnow() + timedelta(hours=1))
        )
    db.close()
    out = subprocess.run(
        [str(fleetcast_bin), "--data", str(data), "store", "gc", "--json"],
        check=True,
        capture_output=True,
        text=True,
    )
    report = json.loads(out.stdout)
    assert (report["removed_chunks"], report["protected_packs"]) == (1, 1)
    assert store.chunks.has(chunk_hash(leased)) and not store.chunks.has(chunk_hash(free))


def test_capture_through_a_sink_without_a_store_and_os_info(golden: Path, tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    info = {"product": "Test OS", "generalized": False}
    with pytest.raises(UsageError) as err:
        capture(golden, "g", None)
    assert str(err.value) == "capture needs a store or a sink to write to"
    m = capture(golden, "g", None, sink=StoreSink(store, "g"), os_info={2: info})
    assert [a.os_info for a in m.areas if a.kind == "partition"] == [None, info, None]
    assert store.open("g").areas == m.areas and store.verify("g").ok


def test_listing_cache_agrees_with_the_manifests(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    capture(_disk(tmp_path / "a.img", 6), "a", store, pack_size=MiB)
    capture(_disk(tmp_path / "b.img", 6, changed=4), "b", store, pack_size=MiB)
    capture(_disk(tmp_path / "c.img", 7), "c", store, pack_size=MiB)

    def exact() -> list[dict[str, object]]:
        images = store.list()
        usage = store.usage(images)
        return [summary(m, usage[m.name]) for m in images]

    assert store.summaries() == exact()  # fills the cache
    assert store.summaries() == exact()  # read from it
    store.remove("b")
    assert store.summaries() == exact()  # a's packs are its own now
    capture(_disk(tmp_path / "b2.img", 8), "b", store, pack_size=MiB)
    assert store.summaries() == exact()
    # an edit after publish: the cached summary is not trusted
    manifest = store.manifest_path("c")
    doc = json.loads(manifest.read_bytes())
    doc["created"] = "2020-01-01T00:00:00+00:00"
    manifest.write_bytes(json.dumps(doc, separators=(",", ":")).encode() + b"\n")
    assert store.summaries() == exact()
    store.gc()
    assert store.summaries() == exact()
