"""The agent's personalize step on real disks from lab.sample_disk: mount through a loop device with
offset/sizelimit, personalize, unmount; once per network stack."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetcast.agent.personalize import personalize
from fleetcast.errors import AgentError
from fleetcast.identity.base import IdentitySettings, OsKind
from fleetcast.lab.sample_disk import MiB, build_linux_disk, mount_partition
from fleetcast.store.capture import capture
from fleetcast.store.images import ImageStore

pytestmark = pytest.mark.integration

MAC = "52:54:00:aa:bb:01"
EXPECTED = {
    "netplan": ("etc/netplan/01-fleetcast.yaml", "- 10.9.0.5/24"),
    "networkmanager": (
        "etc/NetworkManager/system-connections/fleetcast.nmconnection",
        "address1=10.9.0.5/24,10.9.0.1",
    ),
    "ifupdown": ("etc/network/interfaces", "iface enp1s0 inet static\n    address 10.9.0.5/24"),
    "networkd": ("etc/systemd/network/10-fleetcast.network", "Address=10.9.0.5/24"),
}


@pytest.mark.parametrize("netstack", sorted(EXPECTED))
def test_personalize_sample_disk(tmp_path: Path, netstack: str) -> None:
    disk = tmp_path / "disk.img"
    build_linux_disk(disk, size=64 * MiB, netstack=netstack)
    store = ImageStore(tmp_path / "store")
    store.ensure()
    manifest = capture(disk, "linux", store)
    settings = IdentitySettings(
        name="LAB-07", ip="10.9.0.5/24", gateway="10.9.0.1", dns=("10.9.0.2",), mac=MAC
    )
    kind, changes = personalize(disk, manifest, settings)
    assert kind is OsKind.LINUX
    assert "hostname: golden -> LAB-07" in changes
    with mount_partition(disk, 2, read_only=True) as root:
        assert (root / "etc/hostname").read_text() == "LAB-07\n"
        assert "127.0.1.1\tLAB-07" in (root / "etc/hosts").read_text()
        assert (root / "etc/machine-id").read_text() == ""
        assert not list((root / "etc/ssh").glob("ssh_host_*"))
        rel, needle = EXPECTED[netstack]
        assert needle in (root / rel).read_text()


def test_no_os_partition(tmp_path: Path) -> None:
    disk = tmp_path / "blank.img"
    with open(disk, "wb") as f:
        f.truncate(8 * MiB)
    store = ImageStore(tmp_path / "store")
    store.ensure()
    manifest = capture(disk, "blank", store)
    with pytest.raises(AgentError) as info:
        personalize(disk, manifest, IdentitySettings(name="X"))
    assert str(info.value) == f"image 'blank' on {disk} has no ext or NTFS partition to personalize"
