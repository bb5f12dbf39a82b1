"""Restore's refusals that need no real disk: a block-device target that is in use."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from tests.unit.store.test_manifest import valid

from fleetcast.disk.device import DiskInfo
from fleetcast.errors import ChunkCorrupt, RestoreError
from fleetcast.store.chunkstore import chunk_hash, compress
from fleetcast.store.manifest import Manifest
from fleetcast.store.restore import restore


class _NoSource:
    def fetch(self, chunk_id: str) -> bytes:
        raise AssertionError("nothing may be fetched")

    def fetch_many(self, chunk_ids: object) -> object:
        raise AssertionError("nothing may be fetched")


def test_block_device_in_use_is_refused_before_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fleetcast.disk import device, discovery

    manifest = Manifest.from_json(json.dumps(valid()))
    target = tmp_path / "sdz"
    target.write_bytes(b"old" * 1000)
    seen: list[Path] = []

    def fake_in_use(path: Path) -> list[str]:
        seen.append(path)
        return ["sdz2 is mounted on /mnt/win"]

    monkeypatch.setattr(device, "inspect", lambda p: DiskInfo(Path(p), 16 << 20, 512, 512, is_block=True))
    monkeypatch.setattr(discovery, "in_use", fake_in_use)
    with pytest.raises(RestoreError) as err:
        restore(manifest, _NoSource(), target)  # type: ignore[arg-type]
    assert str(err.value) == f"target {target} is in use: sdz2 is mounted on /mnt/win"
    assert (
        err.value.hint
        == "fleetcast never overwrites a disk in use: unmount it (and stop what holds it) first"
    )
    assert seen == [target]
    assert target.read_bytes() == b"old" * 1000


def test_a_failed_restore_closes_the_source_stream(tmp_path: Path) -> None:
    good, bad = b"a" * 4096, b"b" * 4096
    ids = [chunk_hash(good), chunk_hash(bad)]
    raw = {
        "format": "fleetcast-image",
        "version": 1,
        "name": "bare",
        "created": "2026-11-24T21:30:26+00:00",
        "tool_version": "0.1.0",
        "disk": {"size": 1 << 20, "logical_sector_size": 512, "physical_sector_size": 512},
        "table": {
            "label": "none",
            "id": "",
            "sector_size": 512,
            "first_lba": None,
            "last_lba": None,
            "table_length": None,
            "partitions": [],
        },
        "chunking": {
            "hash": "blake3",
            "compression": "zstd",
            "chunk_size": 65536,
            "zero_block": 4096,
            "pack_size": 65536,
        },
        "os_hint": None,
        "packs": [
            {"id": ids[0], "stored": len(compress(good))},
            {"id": ids[1], "stored": len(compress(b"c" * 4096))},
        ],
        "areas": [
            {
                "kind": "disk",
                "number": None,
                "start": 0,
                "size": 1 << 20,
                "fstype": "raw",
                "os_hint": None,
                "used": 8192,
                "chunks": [
                    {"pack": 0, "hash": ids[0], "offset": 0, "window": 0, "extents": [[0, 4096]]},
                    {"pack": 1, "hash": ids[1], "offset": 0, "window": 65536, "extents": [[65536, 4096]]},
                ],
                "zeros": [],
            }
        ],
    }
    manifest = Manifest.from_json(json.dumps(raw))
    state = {"closed": False}

    class Source:
        def fetch(self, chunk_id: str) -> bytes:
            raise AssertionError("restore streams")

        def fetch_many(self, chunk_ids: Iterable[str]) -> Iterator[tuple[str, bytes]]:
            try:
                for cid in chunk_ids:
                    yield cid, compress(good if cid == ids[0] else b"c" * 4096)  # the second is corrupt
            finally:
                state["closed"] = True

    with pytest.raises(ChunkCorrupt) as err:
        restore(manifest, Source(), tmp_path / "disk.img")
    assert str(err.value).startswith(f"image 'bare': chunk {ids[1]} is corrupt: its content hashes to ")
    assert state["closed"]


def test_resuming_onto_a_missing_target_is_refused(tmp_path: Path) -> None:
    manifest = Manifest.from_json(json.dumps(valid()))
    target = tmp_path / "gone.img"
    with pytest.raises(RestoreError) as err:
        restore(manifest, _NoSource(), target, done=manifest.pack_ids()[:1])  # type: ignore[arg-type]
    assert str(err.value) == (
        f"cannot resume image 'lab-1' with 1 packs done: target {target} does not exist, "
        "so the packs written before are not there"
    )
    assert not target.exists()
