"""lab.netns for real: namespaces, bridge, reachability, cleanup (also after a failure)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from fleetcast.lab.netns import LabNetwork

pytestmark = pytest.mark.integration


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_lab_network_reachability_and_cleanup() -> None:
    with LabNetwork(clients=2) as lab:
        names = {n.name for n in lab.nodes} | {lab.hub}
        assert names <= _namespaces()
        assert [n.ip for n in lab.nodes] == ["10.77.0.1", "10.77.0.11", "10.77.0.12"]
        assert lab.nodes[1].mac < lab.nodes[2].mac
        neigh = lab.clients[1].run(["ip", "-o", "addr", "show", "eth0"]).stdout.decode()
        assert "10.77.0.12/24 brd 10.77.0.255" in neigh
        link = lab.clients[0].run(["ip", "-o", "link", "show", "eth0"]).stdout.decode()
        assert lab.clients[0].mac in link
        br = subprocess.run(
            ["ip", "netns", "exec", lab.hub, "cat", "/sys/class/net/br0/bridge/multicast_snooping"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert br.strip() == "0"
        sleeper = lab.clients[0].spawn(["sleep", "300"])
    assert sleeper.returncode is not None  # ended by the lab
    assert not names & _namespaces()


def test_cleanup_on_failure() -> None:
    lab = LabNetwork(clients=1)
    with pytest.raises(RuntimeError), lab:
        created = {n.name for n in lab.nodes} | {lab.hub}
        assert created <= _namespaces()
        raise RuntimeError("boom")
    assert not created & _namespaces()


def test_http_between_nodes(tmp_path: Path) -> None:
    (tmp_path / "hello.txt").write_text("hello lab\n")
    with LabNetwork(clients=1) as lab:
        lab.server.spawn(
            [
                "/usr/bin/python3",
                "-m",
                "http.server",
                "--bind",
                lab.server.ip,
                "8099",
                "--directory",
                str(tmp_path),
            ]
        )
        lab.limit(lab.server, "100mbit")
        out = lab.clients[0].run(
            ["/usr/bin/python3", "-c", _FETCH.format(url=f"{lab.server_url(8099)}/hello.txt")], check=False
        )
        assert out.stdout.decode() == "hello lab\n", out.stderr
        qdisc = lab.server.run(["tc", "qdisc", "show", "dev", "eth0"]).stdout.decode()
        assert "tbf" in qdisc


_FETCH = """
import time, urllib.request
for i in range(100):
    try:
        print(urllib.request.urlopen("{url}", timeout=2).read().decode(), end="")
        break
    except OSError:
        time.sleep(0.1)
"""


def test_two_labs_side_by_side() -> None:
    with LabNetwork(clients=1) as a, LabNetwork(clients=1) as b:
        assert a.prefix != b.prefix
        assert not ({n.name for n in a.nodes} & {n.name for n in b.nodes})
        assert {a.hub, b.hub} <= _namespaces()
    assert not ({a.hub, b.hub} & _namespaces())
