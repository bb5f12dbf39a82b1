"""Real QEMU machines (TCG) on the namespace's bridge network-boot from `fleetcast serve`:

- BIOS: iPXE (QEMU's NIC ROM) gets the HTTP script URL by DHCP, fetches the per-MAC script and loads the
  boot environment over HTTP;
- UEFI with Secure Boot on (OVMF's Microsoft-keys variables, no NIC ROM, nothing enrolled): OVMF's own
  PXE client gets Debian's signed shim by TFTP, shim loads the signed network GRUB, GRUB the per-MAC
  config and the signed kernel + initrd by TFTP; the kernel reports Secure Boot on.

In both the agent in the boot environment enrolls with the server under the MAC it booted from."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from nbkit import Lan, Served, api, lan, serve

from fleetcast.bootenv import BootEnvOptions, ensure

pytestmark = pytest.mark.integration

BOOT_WAIT = 420.0
OVMF = Path("/usr/share/OVMF")


def _wait_for(path: Path, text: str, deadline: float, proc: subprocess.Popen[bytes]) -> float:
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return time.monotonic()
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    tail = path.read_text(errors="replace")[-3000:] if path.exists() else "(no serial output)"
    raise AssertionError(f"{text!r} did not appear on the serial console:\n{tail}")


def _serve(net: Lan, tmp: Path) -> Served:
    bootenv = ensure(BootEnvOptions()).root  # cached by its inputs: built once, re-packed after a change
    net.run(net.srv, ["ip", "tuntap", "add", "dev", "tap0", "mode", "tap"])
    net.run(net.srv, ["ip", "link", "set", "tap0", "master", "br0", "up"])
    return serve(
        net, tmp, "--interface", "br0", "--dhcp", "full", "--range", f"{net.ip(100)}-{net.ip(120)}",
        "--bootenv", str(bootenv),
    )  # fmt: skip


def _run_vm(net: Lan, served: Served, tmp: Path, mac: str, machine: list[str]) -> dict[str, float]:
    """Power a machine on; seconds until its agent started and until it enrolled."""
    qemu = shutil.which("qemu-system-x86_64")
    assert qemu is not None, "qemu-system-x86 is not installed; make setup installs it"
    serial = tmp / "serial.log"
    started = time.monotonic()
    vm = net.spawn(
        net.srv,
        [qemu, "-accel", "tcg", "-m", "2048", "-display", "none", "-serial", f"file:{serial}",
         "-nic", "none", "-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no", *machine, "-no-reboot"],
        tmp / "qemu.log",
    )  # fmt: skip
    deadline = started + BOOT_WAIT
    t_agent = _wait_for(serial, "fleetcast: agent started", deadline, vm)
    assert f"({mac}): asking for an address" in serial.read_text()
    t_enrolled = None
    while time.monotonic() < deadline:
        clients = api(net, served, "GET", "/api/clients").json()["clients"]
        if any(c["mac"] == mac for c in clients):
            t_enrolled = time.monotonic()
            break
        time.sleep(0.5)
    assert t_enrolled is not None, f"the agent did not enroll:\n{serial.read_text()[-3000:]}"
    net.stop(vm)
    return {
        "seconds_to_agent_started": round(t_agent - started, 1),
        "seconds_to_registered": round(t_enrolled - started, 1),
    }


def test_bios_machine_pxe_boots_into_the_agent(tmp_path: Path) -> None:
    mac = "52:54:00:fc:81:61"
    with lan(6) as net:
        served = _serve(net, tmp_path)
        nic = ["-device", f"virtio-net-pci,netdev=n0,mac={mac}", "-boot", "n"]
        times = _run_vm(net, served, tmp_path, mac, nic)
        log = served.log.read_text()
        assert f"boot /boot/ipxe from {mac}" in log, log[-3000:]
        # enrolled and nothing to do: its next boot waits in the environment, not on the disk
        script = net.run(net.srv, ["curl", "-sf", f"{served.url}/boot/ipxe?mac={mac}"]).stdout
        assert "registered: starting the boot environment" in script
        print(json.dumps({"firmware": "bios", **times}))


def test_secure_boot_machine_network_boots_with_no_key_enrolled(tmp_path: Path) -> None:
    mac = "52:54:00:fc:81:71"
    with lan(7) as net:
        served = _serve(net, tmp_path)
        r = api(net, served, "POST", "/api/registrations", {"mac": mac, "boot": "secureboot"})
        assert r.status_code == 201, r.text
        time.sleep(3)  # dnsmasq restarted with the tag; the per-MAC GRUB config written
        variables = tmp_path / "OVMF_VARS_4M.ms.fd"
        shutil.copy(OVMF / "OVMF_VARS_4M.ms.fd", variables)
        machine = [
            "-machine", "q35,smm=on", "-global", "driver=cfi.pflash01,property=secure,value=on",
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF / 'OVMF_CODE_4M.ms.fd'}",
            "-drive", f"if=pflash,format=raw,unit=1,file={variables}",
            "-device", f"virtio-net-pci,netdev=n0,mac={mac},romfile=,bootindex=1",
        ]  # fmt: skip
        times = _run_vm(net, served, tmp_path, mac, machine)
        serial = (tmp_path / "serial.log").read_text(errors="replace")
        assert "NBP filename is bootx64.efi" in serial  # shim, from OVMF's own PXE client
        assert (
            f"fleetcast: {mac}: new machine: starting the boot environment" in serial
        )  # per-MAC GRUB config
        assert "fleetcast: firmware UEFI, Secure Boot on" in serial
        log = served.log.read_text()
        for sent in (
            "bootx64.efi",
            "grubx64.efi",
            "grub/grub.cfg",
            f"grub/mac/{mac}.cfg",
            "bootenv/initrd.img",
        ):
            assert f"/{sent} to 10.81.7." in log, sent  # dnsmasq: "sent /run/.../NAME to IP"
        print(json.dumps({"firmware": "secureboot", **times}))
