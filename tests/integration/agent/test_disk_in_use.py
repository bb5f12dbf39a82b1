"""disk.discovery.in_use on a real loop device: a mounted filesystem makes it in use."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import pytest

from fleetcast.disk import loop
from fleetcast.disk.discovery import in_use

pytestmark = pytest.mark.integration


def test_mounted_loop_device_is_in_use(tmp_path: Path) -> None:
    img = tmp_path / "fs.img"
    with open(img, "wb") as f:
        f.truncate(16 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True)
    with loop.attach(img) as dev:
        assert in_use(dev) == []
        mnt = Path(tempfile.mkdtemp(prefix="fleetcast-inuse-"))
        subprocess.run(["mount", str(dev), str(mnt)], check=True)
        try:
            assert in_use(dev) == [f"{dev.name} is mounted on {mnt}"]
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
            mnt.rmdir()
        assert in_use(dev) == []
