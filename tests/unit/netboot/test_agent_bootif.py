"""The agent reports the MAC it network-booted from (BOOTIF= on the kernel command line) as boot_mac."""

from __future__ import annotations

from pathlib import Path

from fleetcast.agent.inventory import Inventory
from fleetcast.agent.loop import Agent, AgentSettings

INV = Inventory(
    macs=("52:54:00:00:00:01", "52:54:00:00:00:02"), hostname="h", cpu_model="c", cpu_cores=1, ram_bytes=1
)


def agent(tmp_path: Path, line: str) -> Agent:
    cmdline = tmp_path / "cmdline"
    cmdline.write_text(line)
    settings = AgentSettings(
        server="http://127.0.0.1:9", enroll_token="t", state_dir=tmp_path, cmdline=cmdline
    )
    return Agent(settings)


def test_bootif_of_a_second_nic(tmp_path: Path) -> None:
    a = agent(tmp_path, "console=ttyS0 BOOTIF=01-52-54-00-00-00-02 quiet\n")
    assert a.boot_mac(INV) == "52:54:00:00:00:02"
    assert a._inventory(INV)["boot_mac"] == "52:54:00:00:00:02"
    a.api.close()


def test_no_bootif_or_a_foreign_one_or_a_bad_line(tmp_path: Path) -> None:
    for line in ("console=ttyS0", "BOOTIF=01-52-54-00-00-00-09", 'fleetcast.token="open', "BOOTIF=zz"):
        a = agent(tmp_path, line)
        assert a.boot_mac(INV) is None, line
        assert "boot_mac" not in a._inventory(INV)
        a.api.close()
    a = agent(tmp_path, "")
    a.settings = AgentSettings(server="http://127.0.0.1:9", enroll_token="t", cmdline=tmp_path / "missing")
    assert a.boot_mac(INV) is None
    a.api.close()
