"""Restore never writes onto a block device that is in use (here: a loop device with a mounted filesystem)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from store_disks import sh

from fleetcast.disk.loop import attach
from fleetcast.errors import RestoreError
from fleetcast.store.capture import capture
from fleetcast.store.images import ImageStore
from fleetcast.store.restore import restore

pytestmark = pytest.mark.integration

MiB = 1 << 20


def test_restore_refuses_a_mounted_target_then_writes_it_once_free(tmp_path: Path) -> None:
    src = tmp_path / "bare.img"
    with open(src, "wb") as f:
        f.truncate(32 * MiB)
    sh("mkfs.ext4", "-q", "-F", "-L", "bare", src)
    store = ImageStore(tmp_path / "store")
    m = capture(src, "bare", store)
    tgt = tmp_path / "target.img"
    with open(tgt, "wb") as f:
        f.truncate(32 * MiB)
    sh("mkfs.ext4", "-q", "-F", "-L", "busy", tgt)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with attach(tgt) as dev:
        sh("mount", dev, mnt)
        try:
            with pytest.raises(RestoreError) as err:
                restore(m, store.source(), dev)
            assert str(err.value) == f"target {dev} is in use: {dev.name} is mounted on {mnt}"
        finally:
            sh("umount", mnt)
        # nothing was written: restoring would have erased the old superblock (and its label) first
        assert sh("blkid", "-s", "LABEL", "-o", "value", os.fspath(tgt)).strip() == "busy"
        result = restore(m, store.source(), dev)
        assert result.chunks_written == m.entry_count
    assert sh("blkid", "-s", "LABEL", "-o", "value", os.fspath(tgt)).strip() == "bare"
