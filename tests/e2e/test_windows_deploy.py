"""Issue 4 end to end: an NTFS image holding a Windows tree, deployed by ``fleetcast serve`` to two
``fleetcast agent`` processes in network namespaces, gives two machines with different names and SIDs
(the agent's Windows personalizer runs after the write)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.fixtures.windows_tree import build_windows_tree

from fleetcast.identity.windows.inspect import inspect
from fleetcast.lab.deploy_demo import FleetLab
from fleetcast.lab.sample_disk import MiB, build_sample_disk, mount_partition

pytestmark = pytest.mark.e2e

CLIENTS = 2


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[FleetLab]:
    with FleetLab(tmp_path, CLIENTS, disk_size=128 * MiB) as lab:
        yield lab


def test_windows_image_to_two_agents(lab: FleetLab, tmp_path: Path) -> None:
    golden = tmp_path / "golden-win.img"
    build_sample_disk(golden, size=128 * MiB, fill=0.05, layout="gpt-esp-ntfs-ext4")
    with mount_partition(golden, 2) as root:
        info = build_windows_tree(root)
    lab.capture_image(golden, "win")
    lab.start_server()
    lab.add_disks()
    lab.start_agents()
    lab.wait_enrolled(CLIENTS)
    proc = lab.cli(
        "deploy", "win", "--server", lab.url, "--token", lab.admin_token, "--clients", "all", "--disk", "0",
        "--name", "WIN-{n:02}", "--ip", "10.77.0.101/24", "--gateway", "10.77.0.1", "--dns", "10.77.0.1",
        "--then", "none", "--wait", "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    result = json.loads(proc.stdout)
    assert [c["state"] for c in result["clients"]] == ["done"] * CLIENTS, result
    seen = {}
    for agent in lab.agents:
        with mount_partition(agent.backing, 2, read_only=True) as root:
            rep = inspect(root)
            names = {n["computer_name"] for n in rep.names}
            assert len(names) == 1
            assert rep.machine_sid_sam == rep.machine_sid_security != str(info.machine_sid)
            seen[names.pop()] = rep.machine_sid_sam
    assert sorted(seen) == ["WIN-01", "WIN-02"]
    assert len(set(seen.values())) == CLIENTS
