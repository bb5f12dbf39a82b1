"""What capture records about a Linux root (issue 11 item 2, for the plan's static-IP check): real ext4
filesystems made with ``mkfs.ext4 -d`` (no mount in the test), read by the probe's child through read-only
loop devices mounted ``ro,noload`` in a mount namespace of its own; the facts land in the captured
manifest's partition ``os_info``, and the disk is not changed."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from fleetcast.identity.linux import osinfo
from fleetcast.identity.osinfo import start
from fleetcast.store.capture import capture
from fleetcast.store.images import ImageStore, summary

pytestmark = pytest.mark.integration

MiB = 1 << 20


def _ext4(path: Path, tree: dict[str, str], size_mib: int = 16) -> Path:
    root = path.with_suffix(".tree")
    for rel, text in tree.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    root.mkdir(exist_ok=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(root), str(path), f"{size_mib}M"], check=True)
    return path


def _gpt_disk(path: Path, parts: list[Path]) -> Path:
    """A GPT disk file holding ``parts`` (filesystem images) as partitions 1.. from 1 MiB on."""
    size = sum(p.stat().st_size for p in parts) + 2 * MiB
    with open(path, "wb") as f:
        f.truncate(size)
    layout = "label: gpt\n" + "".join(f"size={p.stat().st_size // 512}\n" for p in parts)
    subprocess.run(["sfdisk", "-q", str(path)], input=layout.encode(), check=True)
    offset = MiB
    with open(path, "r+b") as f:
        for p in parts:
            f.seek(offset)
            f.write(p.read_bytes())
            offset += p.stat().st_size
    return path


def _loops_of(disk: Path) -> list[str]:
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=False).stdout
    return [line for line in out.splitlines() if str(disk) in line]


def test_the_linux_root_and_its_network_stack_are_recorded_read_only(tmp_path: Path) -> None:
    home = _ext4(tmp_path / "home.ext4", {"alice/notes.txt": "not a root\n"})
    root = _ext4(
        tmp_path / "root.ext4",
        {
            "etc/os-release": 'NAME="Debian GNU/Linux"\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n',
            "etc/netplan/50-cloud-init.yaml": "network: {version: 2, ethernets: {eth0: {dhcp4: true}}}\n",
        },
    )
    disk = _gpt_disk(tmp_path / "golden.img", [home, root])
    before = hashlib.sha256(disk.read_bytes()).hexdigest()

    found = osinfo.probe(disk)
    assert found == {
        2: {"os": "linux", "network_stack": "netplan", "name": "Debian GNU/Linux 12 (bookworm)"}
    }  # the /home partition holds no os-release: nothing recorded for it
    assert hashlib.sha256(disk.read_bytes()).hexdigest() == before  # read-only
    assert _loops_of(disk) == []  # the probe's loop devices are gone with its mounts

    store = ImageStore(tmp_path / "store")
    store.ensure()
    probes = start(disk)  # Windows and Linux probes, while the capture reads
    capture(disk, "linux", store, os_info=probes.result)
    recorded = {p["number"]: p["os_info"] for p in summary(store.open("linux"))["partitions"]}
    assert recorded == {1: None, 2: found[2]}
    assert hashlib.sha256(disk.read_bytes()).hexdigest() == before


def test_a_root_without_a_network_stack_records_none(tmp_path: Path) -> None:
    """What the plan refuses a static IP for: a bare ext4 root with no netplan, NetworkManager, networkd
    or ifupdown configuration (and no systemd); a root with only ifupdown's interfaces file is ifupdown."""
    bare = _ext4(tmp_path / "bare.img", {"usr/lib/os-release": "NAME=Alpine\n"})
    assert osinfo.probe(bare) == {0: {"os": "linux", "network_stack": None, "name": "Alpine"}}
    ifupdown = _ext4(
        tmp_path / "ifupdown.img",
        {"etc/os-release": "NAME=Devuan\n", "etc/network/interfaces": "auto eth0\niface eth0 inet dhcp\n"},
    )
    assert osinfo.probe(ifupdown)[0]["network_stack"] == "ifupdown"
