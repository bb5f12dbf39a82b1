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
import time
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


_LAB_NETNS: set[int] = set()  # the network namespaces (nsfs inodes) of the labs these tests made


def _mine(lab: FleetLab) -> FleetLab:
    """Count this lab's namespaces as ours: udpcast processes in them are this test's to answer for
    (a benchmark or another lab on the same machine may run udpcast at the same time)."""
    _LAB_NETNS.update(os.stat(f"/run/netns/{n.name}").st_ino for n in (lab.net.server, *lab.net.clients))
    return lab


def udpcast_pids(*names: str) -> list[int]:
    """PIDs of every udp-sender / udp-receiver (or only ``names``) in a namespace of these tests' labs
    (read from /proc, nothing is killed; a namespace outlives its name while a process holds it, so a
    stray is found after the lab is gone too)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            exe = os.path.basename(os.readlink(f"/proc/{entry}/exe"))
            netns = os.stat(f"/proc/{entry}/ns/net").st_ino
        except OSError:
            continue
        if exe in (names or ("udp-sender", "udp-receiver")) and netns in _LAB_NETNS:
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
    with FleetLab(tmp_path, 3, net_prefix="fc-mc-") as lab:
        _mine(lab)
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


def _results(view: dict[str, Any]) -> dict[str, str]:
    return {c["mac"]: _transport_line(c) for c in view["clients"]}


def _repaired(line: str) -> int:
    return int(line.split(" packs by multicast, ")[1].split(" repaired", maxsplit=1)[0])


def _by_multicast(line: str) -> int:
    return int(line.split("(", maxsplit=1)[1].split(" packs by multicast", maxsplit=1)[0])


def test_six_clients_late_lossy_killed_and_slow(tmp_path: Path, golden: Path) -> None:
    """Six agents: one joins late, one link drops 5 % of packets (nftables), one agent is killed and
    started again mid-stream, one link is too slow (tbf) and is dropped to unicast; two are clean.
    The deployment's late joiners are set to wait for the next cycle (``repair: cycle``; the default,
    whichever is sooner by estimate, is checked in tests/unit/server/test_multicast_repair.py): the late
    joiner and the restarted agent get what they lack from a second (or third) stream."""
    with FleetLab(tmp_path, 6, net_prefix="fc-mc-") as lab:
        _mine(lab)
        lab.capture_image(golden, IMAGE, pack_size=1 * MiB)
        lab.start_server()
        lab.add_disks()
        lab.start_agents()
        lab.wait_enrolled(6)
        late, lossy, killed, slow, *clean = sorted(lab.agents, key=lambda a: a.node.mac)
        lab.stop_agent(late)  # enrolled, but not there when the session starts
        lossy.node.run(["nft", "add", "table", "inet", "fcloss"])
        lossy.node.run(
            ["nft", "add", "chain", "inet", "fcloss", "c", "{ type filter hook input priority 0; }"]
        )
        lossy.node.run(["nft", "add", "rule", "inet", "fcloss", "c", "udp", "dport", "9000-9999",
                        "numgen", "random", "mod", "100", "<", "5", "drop"])  # fmt: skip
        hub = ["ip", "netns", "exec", lab.net.hub]
        run_hub = [*hub, "tc", "qdisc", "add", "dev", slow.node.hub_port, "root", "tbf", "rate", "6mbit",
                   "burst", "32kb", "latency", "50ms"]  # fmt: skip
        assert os.spawnvp(os.P_WAIT, run_hub[0], run_hub) == 0
        stored = sum(p.stat().st_size for p in (lab.data / "store" / "chunks").rglob("*") if p.is_file())
        before = tx_bytes(lab.net.server)
        deploy = lab.cli_spawn(
            *_deploy_args(lab, "--batch", "6", "--min-clients", "5", "--max-wait", "60",
                          "--drop-below", "40", "--wait", "--json"),
            log=tmp_path / "deploy.err",
        )  # fmt: skip
        try:
            _wait("the deployment", lambda: bool(lab.get("/api/deployments")["deployments"]))
            dep = lab.get("/api/deployments")["deployments"][0]["deployment"]
            assert lab.api("POST", f"/api/deployments/{dep}/multicast", {"repair": "cycle"})[0] == 200
            _wait("the session to start", lambda: any(e["type"] == "multicast-started" for e in lab.events()))
            lab.start_agent(late)
            # kill -9 mid-stream: after its first checkpoint (the set of packs written is on its disk)
            _wait(
                "the victim's first checkpoint",
                lambda: any(
                    json.loads(p.read_text() or "{}").get("checkpoint_chunk", 0) > 0
                    for p in killed.state_dir.glob("*/state.json")
                ),
                timeout=300,
            )
            # ... and the server knows it (else it rightly restarts the agent from chunk 0)
            _wait(
                "the server to know the victim's checkpoint",
                lambda: any(
                    c["mac"] == killed.node.mac and c["checkpoint_chunk"] > 0
                    for d in lab.get("/api/deployments")["deployments"][:1]
                    for c in lab.get(f"/api/deployments/{d['deployment']}")["clients"]
                ),
                timeout=60,
            )
            lab.kill_agent(killed)
            lab.start_agent(killed)
            out, _ = deploy.communicate(timeout=600)
        finally:
            if deploy.poll() is None:
                deploy.kill()
                deploy.wait()
        assert deploy.returncode == 0, (tmp_path / "deploy.err").read_text()[-3000:]
        sent = tx_bytes(lab.net.server) - before
        assert json.loads(out)["deployment"] == dep
        view = lab.get(f"/api/deployments/{dep}")
        assert [c["state"] for c in view["clients"]] == ["done"] * 6
        lines = _results(view)
        events = lab.events(dep)
        total = len({p.name for p in (lab.data / "store" / "chunks").rglob("*") if p.is_file()})
        # the late joiner: everything from the next cycle of the stream
        assert lines[late.node.mac].startswith("transport: multicast ("), lines
        assert "multicast received in cycle 2" in lines[late.node.mac], lines
        late_events = [e for e in events if e["type"] == "client-multicast-late"]
        assert {(e["mac"], e["choice"]) for e in late_events} >= {(late.node.mac, "cycle")}, late_events
        # the restarted agent resumed from its completed set: it asked only for the rest (a later cycle)
        assert any(e["type"] == "client-resumed" and e["mac"] == killed.node.mac for e in events)
        line = lines[killed.node.mac]
        assert " in cycle" in line and 0 < _by_multicast(line) + _repaired(line) < total, line
        mc = lab.get(f"/api/deployments/{dep}/multicast")["sessions"]
        assert [s["cycle"] for s in mc][:2] == [1, 2] and {s["state"] for s in mc} == {"finished"}, mc
        assert mc[1]["packs_sent"] == total, mc  # the late joiner lacked every pack: cycle 2 sent them all
        # the slow one was dropped to unicast, with an event saying so
        dropped = [e for e in events if e["type"] == "client-multicast-dropped"]
        assert [e["mac"] for e in dropped] == [slow.node.mac], dropped
        assert "multicast dropped" in lines[slow.node.mac]
        assert lines[slow.node.mac].startswith("transport: unicast ("), lines
        # udpcast repairs the lossy link itself; the clean ones needed nothing
        for agent in (lossy, *clean):
            assert lines[agent.node.mac].startswith("transport: multicast ("), lines
        for agent in clean:
            assert " 0 repaired by HTTP" in lines[agent.node.mac], lines
        # the server sent one copy per cycle by multicast plus exactly the repairs by HTTP, not six copies
        repaired = sum(_repaired(line) for line in lines.values())
        by_http = stored * repaired / total
        cycles = sum(s["packs_sent"] for s in mc) / total
        multicast_part = (sent - by_http) / stored
        print(f"server sent {sent} bytes for {stored} stored bytes ({sent / stored:.2f} copies): "
              f"{repaired} of {6 * total} packs by HTTP, multicast {multicast_part:.2f} copies "
              f"in {len(mc)} cycles ({cycles:.2f} copies of packs)")  # fmt: skip
        # udpcast's own overhead (headers, and the retransmissions the lossy and the slow receiver cause
        # in cycle 1) stays under one copy per copy streamed; the late joiner and the restarted agent
        # cost a cycle each instead of an HTTP copy each, so the total is ~4 copies here, not six
        assert sent - by_http < 2.0 * cycles * stored, (sent, stored, repaired, cycles)
        assert sent < 0.8 * 6 * stored
        _check_disks(lab, golden, view)
    _wait("no udp-sender/udp-receiver left", lambda: udpcast_pids() == [], timeout=20)


def test_rules_change_while_waiting_then_cancel_mid_stream(lab3: FleetLab, golden: Path) -> None:
    lab = lab3
    # 1. min-clients 4 with 3 clients and a long max-wait: the session waits until the rule is changed
    proc = lab.cli(*_deploy_args(lab, "--batch", "3", "--min-clients", "4", "--max-wait", "600", "--json"))
    assert proc.returncode == 0, proc.stderr
    dep = json.loads(proc.stdout)["deployment"]
    _wait("three joined", lambda: len(_session(lab, dep).get("members", [])) == 3)
    time.sleep(2)
    assert _session(lab, dep)["state"] == "waiting"
    assert udpcast_pids("udp-sender") == []  # no sender before the rules say so ...
    assert len(udpcast_pids("udp-receiver")) == 3  # ... but the receivers wait from the join on
    changed = lab.cli("deployments", "multicast", str(dep), "--server", lab.url, f"--token={lab.admin_token}",
                      "--min-clients", "3", "--json")  # fmt: skip
    assert changed.returncode == 0, changed.stderr
    assert json.loads(changed.stdout)["sessions"][0]["min_clients"] == 3
    _wait("the deployment to finish", lambda: lab.get(f"/api/deployments/{dep}")["state"] == "done", 300)
    assert any(e["type"] == "multicast-rules-changed" for e in lab.events(dep))
    # 2. cancel mid-stream (a slow server link keeps it streaming): sender and receivers end
    lab.net.limit(lab.net.server, "20mbit")
    proc = lab.cli(*_deploy_args(lab, "--batch", "3", "--json"))
    assert proc.returncode == 0, proc.stderr
    dep = json.loads(proc.stdout)["deployment"]
    _wait("streaming", lambda: _session(lab, dep).get("state") == "streaming", 120)
    assert len(udpcast_pids()) == 4  # one sender, three receivers
    status, _ = lab.api("POST", f"/api/deployments/{dep}/cancel")
    assert status == 200
    _wait("cancelled", lambda: lab.get(f"/api/deployments/{dep}")["state"] == "cancelled", 60)
    _wait("no udp-sender/udp-receiver after the cancel", lambda: udpcast_pids() == [], timeout=20)
    assert _session(lab, dep)["state"] == "ended"


def _session(lab: FleetLab, dep: int) -> dict[str, Any]:
    sessions = lab.get(f"/api/deployments/{dep}/multicast")["sessions"]
    return dict(sessions[-1]) if sessions else {}
