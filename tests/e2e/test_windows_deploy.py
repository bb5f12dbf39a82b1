"""Issue 4 end to end: an NTFS image holding a Windows tree, deployed by ``fleetcast serve`` to two
``fleetcast agent`` processes in network namespaces, gives two machines with different names and SIDs
(the agent's Windows personalizer runs after the write).

Issue 13 audit on the way: the agents' loop disks first hold the same cloned Windows (same machine
SID): their inventories report it and ``fleetcast audit sids`` names the pair (exit 1); after the
deployment each reports the SID it wrote, and the audit finds none shared (exit 0). The fix without
re-imaging: ``fleetcast personalize all --new-sid`` on clones gives each its own SID, nothing else
of the disk rewritten (the ext4 partition beside Windows stays byte-identical)."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.fixtures.windows_tree import TreeInfo, build_windows_tree

from fleetcast.disk.partitions import read_table
from fleetcast.identity.windows.inspect import inspect
from fleetcast.identity.windows.sidaudit import CONSEQUENCE
from fleetcast.lab.deploy_demo import FleetLab
from fleetcast.lab.sample_disk import MiB, build_sample_disk, mount_partition

pytestmark = pytest.mark.e2e

CLIENTS = 2


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[FleetLab]:
    with FleetLab(tmp_path, CLIENTS, disk_size=128 * MiB) as lab:
        yield lab


def _cloned_lab(lab: FleetLab, tmp_path: Path) -> TreeInfo:
    """The golden disk captured as image 'win', and copied as it is onto every agent's disk."""
    golden = tmp_path / "golden-win.img"
    build_sample_disk(golden, size=128 * MiB, fill=0.05, layout="gpt-esp-ntfs-ext4")
    with mount_partition(golden, 2) as root:
        info = build_windows_tree(root)
    lab.capture_image(golden, "win")
    lab.start_server()
    lab.add_disks()
    for agent in lab.agents:  # plain clones of the golden disk: one machine SID twice
        with open(golden, "rb") as src, open(agent.disk, "r+b") as dst:
            shutil.copyfileobj(src, dst, 4 << 20)
    lab.start_agents()
    lab.wait_enrolled(CLIENTS)
    return info


def _reported(lab: FleetLab, expected: dict[str, str | None]) -> dict[str, str | None]:
    """computer name -> machine SID as the agents' inventories report them, once they match ``expected``
    (each agent sends a fresh inventory right after a task) or after 60 s."""
    deadline = time.monotonic() + 60
    while True:
        reported = {w["computer_name"]: w["machine_sid"] for c in lab.get("/api/clients")["clients"]
                    for w in c["windows"]}  # fmt: skip
        if reported == expected or time.monotonic() > deadline:
            return reported
        time.sleep(1)


def _partition_digest(disk: Path, number: int) -> str:
    table = read_table(disk)
    part = next(p for p in table.partitions if p.number == number)
    h = hashlib.sha256()
    with open(disk, "rb") as f:
        f.seek(part.start * table.sector_size)
        h.update(f.read(part.size * table.sector_size))
    return h.hexdigest()


def test_windows_image_to_two_agents(lab: FleetLab, tmp_path: Path) -> None:
    info = _cloned_lab(lab, tmp_path)
    before = lab.cli("audit", "sids", "--server", lab.url, "--token", lab.admin_token, "--json")
    assert before.returncode == 1, before.stderr.decode(errors="replace")[-3000:]
    report = json.loads(before.stdout)
    assert report["installations"] == CLIENTS and report["not_checked"] == []
    (group,) = report["groups"]
    assert group["machine_sid"] == str(info.machine_sid) and len(group["installations"]) == CLIENTS
    assert {i["partition"] for i in group["installations"]} == {f"{a.disk} partition 2" for a in lab.agents}
    assert report["consequence"] == CONSEQUENCE
    proc = lab.cli(
        "deploy", "win", "--server", lab.url, "--token", lab.admin_token, "--clients", "all", "--disk", "0",
        "--name", "WIN-{n:02}", "--ip", "10.77.0.101/24", "--gateway", "10.77.0.1", "--dns", "10.77.0.1",
        "--then", "none", "--wait", "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    result = json.loads(proc.stdout)
    assert [c["state"] for c in result["clients"]] == ["done"] * CLIENTS, result
    seen: dict[str, str | None] = {}
    for agent in lab.agents:
        with mount_partition(agent.backing, 2, read_only=True) as root:
            rep = inspect(root)
            names = {n["computer_name"] for n in rep.names}
            assert len(names) == 1
            assert rep.machine_sid_sam == rep.machine_sid_security != str(info.machine_sid)
            seen[names.pop()] = rep.machine_sid_sam
    assert sorted(seen) == ["WIN-01", "WIN-02"]
    assert len(set(seen.values())) == CLIENTS

    # each agent reports the SID it wrote (its inventory right after the task), the audit is clean
    assert _reported(lab, seen) == seen
    after = lab.cli("audit", "sids", "--server", lab.url, "--token", lab.admin_token)
    assert after.returncode == 0, after.stdout.decode(errors="replace")
    assert after.stdout.decode() == f"no shared machine SID among {CLIENTS} Windows installation(s)\n"


def test_personalize_only_gives_clones_their_own_sids(lab: FleetLab, tmp_path: Path) -> None:
    info = _cloned_lab(lab, tmp_path)
    gold = str(info.machine_sid)
    assert lab.cli("audit", "sids", "--server", lab.url, "--token", lab.admin_token).returncode == 1
    linux_before = {str(a.disk): _partition_digest(a.backing, 3) for a in lab.agents}
    proc = lab.cli(
        "personalize", "all", "--new-sid", "--server", lab.url, "--token", lab.admin_token, "--wait", "--json"
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr).decode(errors="replace")[-3000:]
    result = json.loads(proc.stdout)
    assert [c["state"] for c in result["clients"]] == ["done"] * CLIENTS, result
    assert all(c["disk"] for c in result["clients"])
    sids: dict[str, str] = {}
    for agent in lab.agents:
        with mount_partition(agent.backing, 2, read_only=True) as root:
            rep = inspect(root)
            assert rep.machine_sid_sam == rep.machine_sid_security
            assert rep.machine_sid_sam is not None and rep.machine_sid_sam != gold
            # no --name: the computer names stay the golden's (its Windows 7 SYSTEM's two control sets)
            assert {n["computer_name"] for n in rep.names} == {"WKS-WIN732BITA", "WIN-V5T3CSP8U4H"}
            sids[str(agent.disk)] = rep.machine_sid_sam
    assert len(set(sids.values())) == CLIENTS
    # nothing but the Windows volume was touched (no image written)
    assert {str(a.disk): _partition_digest(a.backing, 3) for a in lab.agents} == linux_before
    deadline = time.monotonic() + 60
    while True:
        reported = {f"{w['disk']}": w["machine_sid"] for c in lab.get("/api/clients")["clients"]
                    for w in c["windows"]}  # fmt: skip
        if reported == sids or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert reported == sids
    after = lab.cli("audit", "sids", "--server", lab.url, "--token", lab.admin_token)
    assert after.returncode == 0, after.stdout.decode(errors="replace")
