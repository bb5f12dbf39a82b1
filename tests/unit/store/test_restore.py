"""Restore's refusals that need no real disk: a block-device target that is in use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.unit.store.test_manifest import valid

from fleetcast.disk.device import DiskInfo
from fleetcast.errors import RestoreError
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
