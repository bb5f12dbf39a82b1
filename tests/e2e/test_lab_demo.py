"""Issue 8, the virtual lab's demo flow: ``fleetcast lab demo --clients 2 --firmware mixed --once --json``.

Two QEMU machines with blank disks (client1 BIOS, client2 UEFI) network-boot from the server in the
lab's namespace, register, get ``lab-debian`` with names LAB-01/LAB-02 and static IPs, reboot, and
boot their own disks into the deployed Debian, which reports hostname, IP, machine-id and Secure Boot.
The command prints exactly the keys acceptance checks read, and leaves nothing running.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from tests.conftest import require

from fleetcast.lab import vlab

pytestmark = pytest.mark.e2e

KEYS = [
    "client",
    "firmware",
    "state",
    "hostname",
    "ip",
    "machine_id",
    "secure_boot",
    "seconds_to_registered",
    "seconds_total",
]


def _our_processes(marker: str) -> list[str]:
    """Command lines of running processes that mention ``marker`` (the lab's state folder)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline and "pytest" not in cmdline:
            found.append(f"{proc.name}: {cmdline[:200]}")
    return found


@pytest.mark.timeout(3600)
def test_lab_demo_two_clients_boot_their_deployed_disks(fleetcast_bin: Path, tmp_path: Path) -> None:
    require("qemu-system-x86_64")
    require("dnsmasq")
    state_dir = tmp_path / "lab"
    argv = [str(fleetcast_bin), "lab", "demo", "--clients", "2", "--firmware", "mixed", "--once", "--json"]
    argv += ["--state-dir", str(state_dir), "--accel", "tcg", "--timeout", "3000"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=3500, check=False)
    assert proc.stdout.strip(), f"no JSON on stdout; stderr:\n{proc.stderr[-3000:]}"
    result = json.loads(proc.stdout)
    assert list(result) == ["clients"]
    clients = result["clients"]
    assert [list(c) for c in clients] == [KEYS, KEYS]
    assert [(c["client"], c["firmware"]) for c in clients] == [("client1", "bios"), ("client2", "uefi")]
    for c in clients:
        assert c["state"] == "booted-from-disk", f"{c}\nstderr:\n{proc.stderr[-3000:]}"
        assert c["secure_boot"] is False
        assert re.fullmatch(r"[0-9a-f]{32}", c["machine_id"] or ""), c
        assert 0 < c["seconds_to_registered"] < c["seconds_total"]
    assert [c["hostname"] for c in clients] == ["LAB-01", "LAB-02"]
    assert [c["ip"] for c in clients] == ["10.78.0.11", "10.78.0.12"]
    assert clients[0]["machine_id"] != clients[1]["machine_id"]
    assert proc.returncode == 0, proc.stderr[-2000:]
    # --once: nothing of the lab is left
    assert not Path(f"/run/netns/{vlab.netns_name(state_dir)}").exists()
    assert not state_dir.exists()
    assert _our_processes(str(state_dir)) == []
