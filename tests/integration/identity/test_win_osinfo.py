"""What capture records about a Windows volume (the console's image details, issue 9): a GPT disk
from lab.sample_disk with a Windows tree on its NTFS partition, read through a read-only loop device
and ntfs-3g; the facts land in the captured manifest's partition ``os_info``."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.fixtures.windows_tree import build_windows_tree

from fleetcast.identity.windows import osinfo
from fleetcast.lab.sample_disk import MiB, build_sample_disk, mount_partition
from fleetcast.store.capture import capture
from fleetcast.store.images import ImageStore, summary

pytestmark = pytest.mark.integration


def test_probe_reads_the_windows_facts_and_capture_records_them(tmp_path: Path) -> None:
    golden = tmp_path / "golden.img"
    build_sample_disk(golden, size=96 * MiB, fill=0.02, layout="gpt-esp-ntfs-ext4")
    with mount_partition(golden, 2) as root:
        info = build_windows_tree(root, image_state="IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE")
    before = hashlib.sha256(golden.read_bytes()).hexdigest()

    found = osinfo.probe(golden)
    assert list(found) == [2]  # the ESP and the ext4 root hold no Windows
    facts = found[2]
    assert (facts["kind"], facts["product"], facts["edition"]) == (
        "windows",
        "Windows 10 Pro",
        "Professional",
    )
    assert (facts["version"], facts["build"], facts["domain"]) == ("22H2", "19045", "INTERNAL")
    assert facts["machine_sid"] == str(info.machine_sid)
    assert facts["generalized"] is True
    assert facts["image_state"] == "IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE"
    assert facts["computer_name"]
    assert "error" not in facts
    assert hashlib.sha256(golden.read_bytes()).hexdigest() == before  # read-only

    store = ImageStore(tmp_path / "store")
    store.ensure()
    capture(golden, "win", store, os_info=found)
    parts = summary(store.open("win"))["partitions"]
    recorded = {p["number"]: p["os_info"] for p in parts}
    assert recorded[2] == facts
    assert recorded[1] is None and recorded[3] is None

    plain = tmp_path / "linux.img"
    build_sample_disk(plain, size=64 * MiB, fill=0.02, layout="bare-ext4")
    assert osinfo.probe(plain) == {}


def _loops_of(disk: Path) -> list[str]:
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=False).stdout
    return [line for line in out.splitlines() if str(disk) in line]


def test_a_capture_killed_while_the_probe_reads_leaves_no_mount_or_loop_device(tmp_path: Path) -> None:
    """SIGKILL of the capturing process while its probe has the NTFS volume mounted: the probe's own
    process finishes, unmounts and detaches (issue 14: nothing leaked by a killed capture)."""
    golden = tmp_path / "golden.img"
    build_sample_disk(golden, size=96 * MiB, fill=0.02, layout="gpt-esp-ntfs-ext4")
    with mount_partition(golden, 2) as root:
        build_windows_tree(root)
    code = (
        "from pathlib import Path; from fleetcast.identity.windows.osinfo import probe; "
        f"probe(Path({str(golden)!r}))"
    )
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 120
        while not _loops_of(golden):  # the probe attached the NTFS partition
            assert parent.poll() is None, "the probe ended before it attached the volume"
            assert time.monotonic() < deadline, "the probe never attached the volume"
            time.sleep(0.02)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 120
        while _loops_of(golden):
            assert time.monotonic() < deadline, f"left behind: {_loops_of(golden)}"
            time.sleep(0.2)  # (a mount would hold its loop device: none left means none mounted)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
