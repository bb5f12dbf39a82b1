"""Loop devices outlive no SIGKILL: attach() makes them autoclear and holds them open (issue 14)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fleetcast.disk import device, loop

pytestmark = pytest.mark.integration

HOLD = """
import sys, time
from pathlib import Path
from fleetcast.disk import loop
with loop.attach(Path(sys.argv[1]), read_only=True, sector_size=4096) as dev:
    print(dev, flush=True)
    time.sleep(600)
"""


def _devices_of(img: Path) -> list[str]:
    out = subprocess.run(["losetup", "-j", img], check=True, capture_output=True, text=True).stdout
    return [line.split(":")[0] for line in out.splitlines()]


def test_a_killed_holder_leaves_no_loop_device(tmp_path: Path) -> None:
    img = tmp_path / "disk.img"
    with open(img, "wb") as f:
        f.truncate(8 << 20)
    proc = subprocess.Popen([sys.executable, "-c", HOLD, img], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        dev = Path(proc.stdout.readline().strip())
        assert _devices_of(img) == [str(dev)]
        assert (Path("/sys/class/block") / dev.name / "loop" / "autoclear").read_text().strip() == "1"
        assert device.inspect(dev).logical_sector_size == 4096
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    for _ in range(100):  # the kernel clears it when the killed process's descriptor is closed
        if not _devices_of(img):
            break
        time.sleep(0.05)
    assert _devices_of(img) == []


def test_attach_detaches_on_exit(tmp_path: Path) -> None:
    img = tmp_path / "disk.img"
    with open(img, "wb") as f:
        f.truncate(8 << 20)
    with loop.attach(img, offset=1 << 20, sizelimit=4 << 20) as dev:
        assert device.inspect(dev).size == 4 << 20
    assert _devices_of(img) == []
