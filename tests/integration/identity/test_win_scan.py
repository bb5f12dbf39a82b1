"""The agent's read-only scan of its disks for Windows installations (issue 13 SID audit): real
NTFS volumes on loop devices (a GPT disk from lab.sample_disk, ntfs-3g), real hives."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from tests.fixtures.windows_tree import build_windows_tree

from fleetcast.agent.inventory import collect
from fleetcast.identity.windows import scan
from fleetcast.identity.windows.personalizer import Options
from fleetcast.identity.windows.personalizer import personalize as win_personalize
from fleetcast.lab.sample_disk import MiB, build_sample_disk, mount_partition
from fleetcast.protocol import Inventory

pytestmark = pytest.mark.integration


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_scan_reads_each_windows_volume_without_writing(tmp_path: Path) -> None:
    golden = tmp_path / "golden.img"
    build_sample_disk(golden, size=96 * MiB, fill=0.02, layout="gpt-esp-ntfs-ext4")
    with mount_partition(golden, 2) as root:
        info = build_windows_tree(root)
    clone = tmp_path / "clone.img"
    shutil.copyfile(golden, clone)
    other = tmp_path / "other.img"
    shutil.copyfile(golden, other)
    with mount_partition(other, 2) as root:
        win_personalize(root, Options(name="OTHER-PC", new_sid=True))
    plain = tmp_path / "linux.img"
    build_sample_disk(plain, size=64 * MiB, fill=0.02, layout="bare-ext4")
    before = _digest(golden)

    scan.invalidate()
    found = scan.scan([golden, clone, other, plain])
    assert [(f.disk, f.partition) for f in found] == [(str(golden), 2), (str(clone), 2), (str(other), 2)]
    assert found[0].machine_sid == found[1].machine_sid == str(info.machine_sid)
    assert found[2].machine_sid is not None and found[2].machine_sid != str(info.machine_sid)
    assert found[2].computer_name == "OTHER-PC"
    assert found[0].error is None and found[0].domain == "INTERNAL"
    assert _digest(golden) == before  # read-only: not one byte written

    # cached until invalidated: a rewritten disk is read again only after invalidate()
    with mount_partition(clone, 2) as root:
        win_personalize(root, Options(new_sid=True))
    assert scan.scan_disk(clone)[0].machine_sid == str(info.machine_sid)
    scan.invalidate()
    fresh = scan.scan_disk(clone)[0].machine_sid
    assert fresh is not None and fresh not in (str(info.machine_sid), found[2].machine_sid)


def test_inventory_carries_the_installations_the_protocol_accepts(tmp_path: Path) -> None:
    disk = tmp_path / "win.img"
    build_sample_disk(disk, size=96 * MiB, fill=0.02, layout="gpt-esp-ntfs-ext4")
    with mount_partition(disk, 2) as root:
        info = build_windows_tree(root)
    scan.invalidate()
    d = collect([disk], windows=True).to_dict()
    d["macs"] = d["macs"] or ["52:54:00:00:00:01"]  # a container may have no Ethernet interface
    inv = Inventory.model_validate(d)
    assert [(w.partition, w.machine_sid) for w in inv.windows] == [(2, str(info.machine_sid))]
    assert collect([disk]).windows == ()


def test_unreadable_windows_volume_is_reported_with_its_error(tmp_path: Path) -> None:
    disk = tmp_path / "broken.img"
    build_sample_disk(disk, size=96 * MiB, fill=0.02, layout="gpt-esp-ntfs-ext4")
    with mount_partition(disk, 2) as root:
        build_windows_tree(root)
        config = next(p for p in root.rglob("*") if p.name.lower() == "config" and p.is_dir())
        sam = next(p for p in config.iterdir() if p.name.upper() == "SAM")
        sam.write_bytes(b"not a hive" * 100)
    scan.invalidate()
    (found,) = scan.scan_disk(disk)
    assert found.machine_sid is None
    # named relative to the volume, not the agent's temporary mount point
    assert found.error == (
        "Windows/System32/config/SAM is not a registry hive: "
        "expected magic 'regf' at offset 0, found 6e6f7420"
    )
