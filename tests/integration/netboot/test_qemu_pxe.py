"""A real QEMU BIOS machine (TCG) on the namespace's bridge PXE-boots from `fleetcast serve`: its iPXE gets
the HTTP script URL by DHCP, fetches the per-MAC script, loads the boot environment over HTTP, and the
agent in it enrolls with the server under the MAC it booted from."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from nbkit import api, lan, serve

from fleetcast.bootenv import BootEnvOptions, ensure

pytestmark = pytest.mark.integration

MAC = "52:54:00:fc:81:61"
BOOT_WAIT = 240.0


def _wait_for(path: Path, text: str, deadline: float, proc: subprocess.Popen[bytes]) -> float:
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return time.monotonic()
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    tail = path.read_text(errors="replace")[-3000:] if path.exists() else "(no serial output)"
    raise AssertionError(f"{text!r} did not appear on the serial console:\n{tail}")


def test_bios_machine_pxe_boots_into_the_agent(tmp_path: Path) -> None:
    bootenv = ensure(BootEnvOptions()).root  # cached by its inputs: built once, re-packed after a change
    qemu = shutil.which("qemu-system-x86_64")
    assert qemu is not None, "qemu-system-x86 is not installed; make setup installs it"
    with lan(6) as net:
        for argv in (
            ["ip", "tuntap", "add", "dev", "tap0", "mode", "tap"],
            ["ip", "link", "set", "tap0", "master", "br0", "up"],
        ):
            net.run(net.srv, argv)
        served = serve(
            net, tmp_path, "--interface", "br0", "--dhcp", "full", "--range", f"{net.ip(100)}-{net.ip(120)}",
            "--bootenv", str(bootenv),
        )  # fmt: skip
        serial = tmp_path / "serial.log"
        started = time.monotonic()
        vm = net.spawn(
            net.srv,
            [qemu, "-accel", "tcg", "-m", "2048", "-display", "none", "-serial", f"file:{serial}",
             "-nic", "none", "-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no",
             "-device", f"virtio-net-pci,netdev=n0,mac={MAC}", "-boot", "n", "-no-reboot"],
            tmp_path / "qemu.log",
        )  # fmt: skip
        deadline = started + BOOT_WAIT
        t_agent = _wait_for(serial, "fleetcast: agent started", deadline, vm)
        assert "fleetcast: interface" in serial.read_text() and f"({MAC})" in serial.read_text()
        t_enrolled = None
        while time.monotonic() < deadline:
            clients = api(net, served, "GET", "/api/clients").json()["clients"]
            if any(c["mac"] == MAC for c in clients):
                t_enrolled = time.monotonic()
                break
            time.sleep(0.5)
        log = served.log.read_text()
        assert f"boot /boot/ipxe from {MAC}" in log, log[-3000:]
        assert t_enrolled is not None, f"the agent did not enroll:\n{serial.read_text()[-3000:]}"
        # the machine has nothing to do now: its next boot waits in the environment, not on the disk
        script = net.run(net.srv, ["curl", "-sf", f"{served.url}/boot/ipxe?mac={MAC}"]).stdout
        assert "registered: starting the boot environment" in script
        print(json.dumps({
            "bios_seconds_to_agent_started": round(t_agent - started, 1),
            "bios_seconds_to_registered": round(t_enrolled - started, 1),
        }))  # fmt: skip
        net.stop(vm)
