"""Issue 3 end to end: ``fleetcast serve`` in one network namespace, 4 ``fleetcast agent`` processes in 4
others on a bridge, each with its own loop-device disk; a real image captured by the engine (GPT + ext4
Linux root from lab.sample_disk) deployed with ``--batch 2``, names LAB-01..04 and static IPs.

Faults on the way: one agent is killed (SIGKILL, by PID) after its first checkpoint and started again
(the server must show it resumed); the server is frozen (SIGSTOP) for 30 s while clients write (they
must continue where they were). Afterwards a second deployment is cancelled mid-way. The same flow
runs once more against a real PostgreSQL.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from tests.fixtures.postgres import postgres_cluster

from fleetcast.disk.partitions import read_table
from fleetcast.lab.deploy_demo import Agent, FleetLab, build_golden
from fleetcast.lab.sample_disk import MiB, mount_partition
from fleetcast.lab.treecompare import compare_trees

pytestmark = pytest.mark.e2e

CLIENTS = 4
IMAGE = "linux"
RATE = "40mbit"  # the server's link: slow enough to interrupt a write, fast enough for a short test
OUTAGE_SECONDS = 30
PERSONALIZED = {
    "etc/hostname: contents differ",
    "etc/hosts: contents differ",
    "etc/machine-id: contents differ",
    "only in {g}: etc/netplan/01-netcfg.yaml",
    "only in {d}: etc/netplan/01-netcfg.yaml.fleetcast-orig",
    "only in {d}: etc/netplan/01-fleetcast.yaml",
    "only in {g}: etc/ssh/ssh_host_rsa_key",
    "only in {g}: etc/ssh/ssh_host_rsa_key.pub",
    "only in {g}: etc/ssh/ssh_host_ed25519_key",
    "only in {g}: etc/ssh/ssh_host_ed25519_key.pub",
}


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("golden") / "golden.img"
    build_golden(path, size=256 * MiB, extra_mib=48)
    return path


def _state(agent: Agent) -> dict[str, Any] | None:
    """The agent's task state: ``STATE_DIR/MAC/state.json`` (each identity has its own directory)."""
    for path in agent.state_dir.glob("*/state.json"):
        try:
            data: dict[str, Any] = json.loads(path.read_text())
            return data
        except (OSError, ValueError):
            return None
    return None


def _wait(what: str, predicate: Any, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def _deploy_args(lab: FleetLab, *extra: str) -> list[str]:
    return [
        "deploy", IMAGE, "--server", lab.url, f"--token={lab.admin_token}", "--clients", "all", "--disk", "0",
        "--name", "LAB-{n:02}", "--ip", "10.77.0.101/24", "--gateway", "10.77.0.1", "--dns", "10.77.0.1",
        "--then", "none", *extra,
    ]  # fmt: skip


def _max_writing(events: list[dict[str, Any]]) -> int:
    """Clients writing at once, from the event log: a client writes from client-started to its end."""
    writing: set[str] = set()
    peak = 0
    for ev in sorted(events, key=lambda e: e.get("id", 0)):
        if ev["type"] == "client-started":
            writing.add(ev["mac"])
            peak = max(peak, len(writing))
        elif ev["type"] in ("client-done", "client-failed", "client-cancelled"):
            writing.discard(ev["mac"])
    return peak


def _check_result(lab: FleetLab, result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    clients = result["clients"]
    assert len(clients) == CLIENTS
    by_mac = {c["mac"]: c for c in clients}
    agents = sorted(lab.agents, key=lambda a: a.node.mac)
    for n, agent in enumerate(agents, start=1):
        c = by_mac[agent.node.mac]
        assert set(c) == {"mac", "name", "ip", "disk", "state", "bytes", "started_at", "finished_at", "error"}
        assert c["state"] == "done", c
        assert c["error"] is None
        assert c["name"] == f"LAB-{n:02}"
        assert c["ip"] == f"10.77.0.{100 + n}/24"
        assert c["disk"] == str(agent.disk)
        assert c["bytes"] > 0
        assert datetime.fromisoformat(c["started_at"]) < datetime.fromisoformat(c["finished_at"])
    return by_mac


def _check_disks(lab: FleetLab, golden: Path, by_mac: dict[str, dict[str, Any]]) -> None:
    table = read_table(golden)
    esp = table.partition(1)
    ss = table.sector_size
    with open(golden, "rb") as f:
        f.seek(esp.start * ss)
        golden_esp = f.read(esp.size * ss)
    with mount_partition(golden, 2, read_only=True) as groot:
        for agent in lab.agents:
            c = by_mac[agent.node.mac]
            with open(agent.backing, "rb") as f:
                f.seek(esp.start * ss)
                assert f.read(esp.size * ss) == golden_esp, f"ESP of {agent.disk} differs"
            with mount_partition(agent.backing, 2, read_only=True) as droot:
                diffs = compare_trees(groot, droot)
                allowed = {line.format(g=groot, d=droot) for line in PERSONALIZED}
                assert set(diffs) <= allowed, sorted(set(diffs) - allowed)
                assert (droot / "etc/hostname").read_text() == f"{c['name']}\n"
                assert f"127.0.1.1\t{c['name']}" in (droot / "etc/hosts").read_text()
                assert (droot / "etc/machine-id").read_text() == ""
                netplan = (droot / "etc/netplan/01-fleetcast.yaml").read_text()
                assert f"- {c['ip']}" in netplan
                assert f'macaddress: "{agent.node.mac}"' in netplan
                assert "via: 10.77.0.1" in netplan


@pytest.fixture
def lab(tmp_path: Path, golden: Path) -> Iterator[FleetLab]:
    with FleetLab(tmp_path, CLIENTS) as lab:
        yield lab


def _start(lab: FleetLab, golden: Path, rate: str = RATE, *, pack_size: int | None = None) -> None:
    lab.capture_image(golden, IMAGE, pack_size=pack_size)
    lab.start_server()
    lab.add_disks()
    lab.start_agents()
    lab.wait_enrolled(CLIENTS)
    lab.net.limit(lab.net.server, rate)


def test_deploy_batch2_with_kill_and_outage_then_cancel(lab: FleetLab, golden: Path, tmp_path: Path) -> None:
    # 1 MiB packs: the restore writes (and checkpoints) long before the end of this small image
    _start(lab, golden, pack_size=1 * MiB)
    plan = lab.cli(*_deploy_args(lab, "--batch", "2", "--plan", "--json"))
    assert plan.returncode == 0, plan.stderr
    assert [c["name"] for c in json.loads(plan.stdout)["clients"]] == ["LAB-01", "LAB-02", "LAB-03", "LAB-04"]

    deploy = lab.cli_spawn(
        *_deploy_args(lab, "--batch", "2", "--wait", "--json"), log=tmp_path / "deploy.err"
    )
    try:
        # 1. kill -9 an agent after its first checkpoint (read from its state file: polling the server
        #    from inside a namespace is too slow on a loaded machine), start it again
        victim = _wait(
            "an agent's first checkpoint",
            lambda: next((a for a in lab.agents if (_state(a) or {}).get("checkpoint_chunk", 0) > 0), None),
            timeout=300,
        )
        time.sleep(1.0)  # the checkpoint is reported at once; give the report a moment to arrive
        lab.kill_agent(victim)
        lab.start_agent(victim)
        # 2. freeze the server for 30 s while clients are writing
        _wait("a client writing after the restart", lambda: any(_state(a) for a in lab.agents))
        assert lab.server_proc is not None
        os.kill(lab.server_proc.pid, signal.SIGSTOP)
        try:
            time.sleep(OUTAGE_SECONDS)
        finally:
            os.kill(lab.server_proc.pid, signal.SIGCONT)
        out, _ = deploy.communicate(timeout=600)
    finally:
        if deploy.poll() is None:
            deploy.kill()
            deploy.wait()
    assert deploy.returncode == 0, (tmp_path / "deploy.err").read_text()[-3000:]
    result = json.loads(out)
    by_mac = _check_result(lab, result)

    events = lab.events(result["deployment"])
    assert _max_writing(events) == 2
    # the server shows that the victim (and only it) resumed -- or, had its checkpoint report not
    # arrived before the kill, restarted; the outage made nobody start again
    again = [e for e in events if e["type"] in ("client-resumed", "client-restarted")]
    assert [e["mac"] for e in again] == [victim.node.mac], again
    agent_log = victim.log.read_text()
    if again[0]["type"] == "client-resumed":
        assert again[0]["resume_chunk"] > 0
        assert f"from chunk {again[0]['resume_chunk']}" in agent_log
    else:
        assert "from chunk 0" in agent_log.split("enrolled with")[-1]
    _check_disks(lab, golden, by_mac)

    # 3. a cancelled deployment stops its agents cleanly
    started = lab.cli(*_deploy_args(lab, "--batch", "1", "--json"))
    assert started.returncode == 0, started.stderr
    dep = json.loads(started.stdout)["deployment"]
    _wait("a client writing the second deployment", lambda: any(_state(a) for a in lab.agents))
    status, _ = lab.api("POST", f"/api/deployments/{dep}/cancel")
    assert status == 200
    view = _wait(
        "the deployment to be cancelled",
        lambda: (v := lab.get(f"/api/deployments/{dep}"))["state"] == "cancelled" and v,
        timeout=60,
    )
    assert [c["state"] for c in view["clients"]] == ["cancelled"] * CLIENTS
    _wait("agents to clear their task state", lambda: not any(_state(a) for a in lab.agents), timeout=30)
    assert all(a.proc is not None and a.proc.poll() is None for a in lab.agents)  # still serving
    assert (
        sum(
            "task" in line and ": cancelled" in line
            for a in lab.agents
            for line in a.log.read_text().splitlines()
        )
        == 1
    )


def test_deploy_on_postgresql(tmp_path: Path, golden: Path) -> None:
    with postgres_cluster() as url, FleetLab(tmp_path, CLIENTS, database=url) as lab:
        _start(lab, golden, rate="300mbit")  # no faults to inject here: let it run
        proc = lab.cli(*_deploy_args(lab, "--batch", "2", "--wait", "--json"))
        assert proc.returncode == 0, proc.stderr.decode()[-3000:]
        result = json.loads(proc.stdout)
        by_mac = _check_result(lab, result)
        assert _max_writing(lab.events(result["deployment"])) == 2
        listed = lab.cli("clients", "list", "--server", lab.url, f"--token={lab.admin_token}", "--json")
        assert listed.returncode == 0
        assert sorted(c["mac"] for c in json.loads(listed.stdout)["clients"]) == sorted(by_mac)
        _check_disks(lab, golden, by_mac)
        # the state really lives in PostgreSQL: ask it directly
        engine = sqlalchemy.create_engine(url)
        try:
            with engine.connect() as conn:
                states = conn.execute(sqlalchemy.text("SELECT state FROM targets")).scalars().all()
        finally:
            engine.dispose()
        assert states == ["done"] * CLIENTS


def test_a_failing_client_does_not_stop_the_others(tmp_path: Path, golden: Path) -> None:
    """Client 1's disk is too small: it fails with the reason, before writing anything; client 2 (queued
    behind it with --batch 1) is deployed anyway."""
    with FleetLab(tmp_path, 2, disk_sizes=[64 * MiB, 256 * MiB]) as lab:
        lab.capture_image(golden, IMAGE)
        lab.start_server()
        lab.add_disks()
        lab.start_agents()
        lab.wait_enrolled(2)
        small, big = lab.agents
        proc = lab.cli(
            "deploy", IMAGE, "--server", lab.url, f"--token={lab.admin_token}", "--clients",
            f"{small.node.mac},{big.node.mac}", "--disk", "0", "--batch", "1", "--then", "none",
            "--wait", "--json",
        )  # fmt: skip
        assert proc.returncode == 1  # not all done
        by_mac = {c["mac"]: c for c in json.loads(proc.stdout)["clients"]}
        failed, done = by_mac[small.node.mac], by_mac[big.node.mac]
        assert failed["state"] == "failed"
        assert failed["error"].startswith(
            f"disk {small.disk} is {64 * MiB} bytes (0.1 GB) but the image needs at least"
        )
        assert f"disks seen: {small.disk} (0.1 GB)" in failed["error"]
        assert failed["started_at"] is None  # it never began writing
        assert done["state"] == "done"
        assert small.backing.read_bytes() == bytes(64 * MiB)  # untouched
