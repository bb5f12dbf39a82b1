"""Issue 10 end to end: ``--transport multicast`` in network namespaces on a bridge, agents on loop devices.

The server streams the batch's packs once through udp-sender; every agent's udp-receiver feeds the
any-order restore, and whatever the stream did not bring (a late joiner, a restarted agent, packet loss,
a receiver dropped for being slow) comes by HTTP. Checked: identical verified disks, each client's
transport and repaired packs in its result, the server's interface sent about one copy of the image,
and no udp-sender or udp-receiver is left (also after a cancel).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.e2e.test_unicast_deploy import _check_disks as check_disks
from tests.e2e.test_unicast_deploy import _wait

from fleetcast.lab.deploy_demo import FleetLab, build_golden
from fleetcast.lab.netns import Node
from fleetcast.lab.sample_disk import MiB

pytestmark = pytest.mark.e2e

IMAGE = "linux"


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("golden") / "golden.img"
    build_golden(path, size=256 * MiB, extra_mib=48)
    return path


def udpcast_pids() -> list[int]:
    """PIDs of every udp-sender / udp-receiver on this machine (read from /proc, nothing is killed)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            exe = os.path.basename(os.readlink(f"/proc/{entry}/exe"))
        except OSError:
            continue
        if exe in ("udp-sender", "udp-receiver"):
            found.append(int(entry))
    return found


def tx_bytes(node: Node) -> int:
    out = node.run(["cat", "/sys/class/net/eth0/statistics/tx_bytes"]).stdout
    return int(out.decode().strip())


def _deploy_args(lab: FleetLab, *extra: str) -> list[str]:
    return [
        "deploy", IMAGE, "--server", lab.url, f"--token={lab.admin_token}", "--clients", "all", "--disk", "0",
        "--name", "LAB-{n:02}", "--ip", "10.77.0.101/24", "--gateway", "10.77.0.1", "--dns", "10.77.0.1",
        "--then", "none", "--transport", "multicast", *extra,
    ]  # fmt: skip


def _transport_line(view_client: dict[str, Any]) -> str:
    lines = [c for c in view_client["changes"] if c.startswith("transport: ")]
    assert len(lines) == 1, view_client["changes"]
    return str(lines[0])


def _check_disks(lab: FleetLab, golden: Path, view: dict[str, Any]) -> None:
    """Every disk holds the golden image (ESP byte for byte, root tree up to its identity)."""
    check_disks(lab, golden, {c["mac"]: c for c in view["clients"]})


@pytest.fixture
def lab3(tmp_path: Path, golden: Path) -> Iterator[FleetLab]:
    with FleetLab(tmp_path, 3) as lab:
        lab.capture_image(golden, IMAGE, pack_size=1 * MiB)
        lab.start_server()
        lab.add_disks()
        lab.start_agents()
        lab.wait_enrolled(3)
        yield lab
    assert udpcast_pids() == [], "a udp-sender or udp-receiver outlived the lab"


def test_three_clients_one_stream(lab3: FleetLab, golden: Path) -> None:
    lab = lab3
    plan = lab.cli(*_deploy_args(lab, "--batch", "3", "--plan", "--json"))
    assert plan.returncode == 0, plan.stderr
    assert json.loads(plan.stdout)["transport"] == "multicast"
    before = tx_bytes(lab.net.server)
    proc = lab.cli(*_deploy_args(lab, "--batch", "3", "--max-wait", "30", "--wait", "--json"), timeout=600)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    sent = tx_bytes(lab.net.server) - before
    dep = json.loads(proc.stdout)["deployment"]
    view = lab.get(f"/api/deployments/{dep}")
    assert view["transport"] == "multicast"
    for c in view["clients"]:
        assert c["state"] == "done", c
        line = _transport_line(c)
        assert line.startswith("transport: multicast ("), line
        assert " 0 repaired by HTTP" in line, line
    stored = sum(p.stat().st_size for p in (lab.data / "store").rglob("*") if p.is_file())
    # one copy (plus udpcast's headers and retransmissions), far from three
    assert sent < 1.6 * stored, (sent, stored)
    mc = lab.get(f"/api/deployments/{dep}/multicast")
    assert [s["state"] for s in mc["sessions"]] == ["finished"]
    events = {e["type"] for e in lab.events(dep)}
    assert {"multicast-waiting", "multicast-started", "multicast-finished", "client-transport"} <= events
    _check_disks(lab, golden, view)
    _wait("no udp-sender/udp-receiver left", lambda: udpcast_pids() == [], timeout=20)
