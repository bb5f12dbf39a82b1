"""The boot environment's init, after /init has mounted /proc, /sys, /dev and loaded modules.

``python3 -m fleetcast.bootenv.init``: reads the kernel command line, brings up the interface the machine
booted from (``BOOTIF=``, else the first with a carrier), gets an address with udhcpc, then runs the
agent with the settings from the command line, restarting it if it dies. Status lines go to the console
(``fleetcast: ...``); the agent's own log goes there too, so the lab reads it on the serial port. The
agent executes the post action itself (``reboot -f`` / ``poweroff -f``; "none" keeps the machine here).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from fleetcast.agent.cmdline import CmdlineSettings, read
from fleetcast.errors import FleetcastError
from fleetcast.run import run, spawn

NET = Path("/sys/class/net")
CARRIER_WAIT = 8.0
DHCP_TIMEOUT = 30
RESTART_DELAY = 5.0


def status(line: str) -> None:
    print(f"fleetcast: {line}", flush=True)


def firmware() -> str:
    """``BIOS``, ``UEFI, Secure Boot off`` or ``UEFI, Secure Boot on`` (the SecureBoot EFI variable)."""
    if not Path("/sys/firmware/efi").is_dir():
        return "BIOS"
    efivars = Path("/sys/firmware/efi/efivars")
    if efivars.is_dir() and not any(efivars.iterdir()):
        run(["modprobe", "efivarfs"], check=False)
        run(["mount", "-t", "efivarfs", "efivarfs", efivars], check=False)
    var = efivars / "SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"
    try:
        on = var.read_bytes()[4:5] == b"\x01"  # 4 bytes of attributes, then the value
    except OSError:
        on = False
    return f"UEFI, Secure Boot {'on' if on else 'off'}"


def interfaces() -> dict[str, str]:
    """Ethernet interfaces by name -> MAC (lower case), loopback and virtual ones left out."""
    found = {}
    for dev in sorted(NET.iterdir()) if NET.is_dir() else []:
        if dev.name == "lo" or not (dev / "device").exists():
            continue
        try:
            found[dev.name] = (dev / "address").read_text().strip().lower()
        except OSError:
            continue
    return found


def _carrier(name: str) -> bool:
    try:
        return (NET / name / "carrier").read_text().strip() == "1"
    except OSError:
        return False


def choose_interface(nics: dict[str, str], boot_mac: str | None) -> str | None:
    """The interface with the BOOTIF MAC, else the first whose link comes up."""
    for name in nics:
        run(["ip", "link", "set", name, "up"], check=False)
    if boot_mac is not None:
        for name, mac in nics.items():
            if mac == boot_mac:
                return name
        status(f"no interface has the boot MAC {boot_mac} (found {', '.join(nics.values()) or 'none'})")
    deadline = time.monotonic() + CARRIER_WAIT
    while time.monotonic() < deadline:
        for name in nics:
            if _carrier(name):
                return name
        time.sleep(0.25)
    return next(iter(nics), None)


def dhcp(name: str) -> str | None:
    argv = ["timeout", str(DHCP_TIMEOUT + 5), "udhcpc", "-i", name, "-n", "-q", "-f", "-t", "10", "-T", "3"]
    argv += ["-s", "/etc/fleetcast/udhcpc.script", "-x", "hostname:fleetcast"]
    proc = run(argv, check=False, capture=True)
    if proc.returncode != 0:
        return None
    try:
        return Path("/run/fleetcast-address").read_text().strip()
    except OSError:
        return None


def agent_argv(settings: CmdlineSettings) -> list[str]:
    argv = [sys.executable, "-m", "fleetcast", "agent", "--state-dir", "/var/lib/fleetcast-agent"]
    if settings.server is not None:
        argv += ["--server", settings.server]
    if settings.enroll_token is not None:
        argv += ["--enroll-token", settings.enroll_token]
    return argv


def main() -> int:
    try:
        settings = read()
    except FleetcastError as exc:
        status(f"error: {exc.message}")
        return 2
    status(f"firmware {firmware()}")
    status(f"server {settings.server or '(none: fleetcast.server= missing)'}")
    nics = interfaces()
    name = choose_interface(nics, settings.boot_mac)
    if name is None:
        status("error: no network interface found (is its driver in the boot environment? --add-modules)")
    else:
        status(f"interface {name} ({nics[name]}): asking for an address (DHCP)")
        address = dhcp(name)
        status(f"interface {name}: address {address}" if address else f"error: no DHCP answer on {name}")
    if settings.server is None or settings.enroll_token is None:
        status("error: fleetcast.server= and fleetcast.token= are needed on the kernel command line")
        return 2
    while True:
        proc = spawn(agent_argv(settings), stdout=None, stderr=None)
        status(f"agent started (pid {proc.pid}), server {settings.server}")
        rc = proc.wait()
        if rc == 0:
            status("agent finished")
            return 0
        status(f"error: agent exited with status {rc}; restarting in {RESTART_DELAY:.0f} s")
        time.sleep(RESTART_DELAY)


if __name__ == "__main__":
    sys.exit(main())
