"""The boot environment's init, after /init has mounted /proc, /sys, /dev and loaded modules.

``python3 -m fleetcast.bootenv.init``: reads the kernel command line, brings up the interface the machine
booted from (``BOOTIF=``, else the first with a carrier), gets an address with udhcpc, then runs the
agent with the settings from the command line, restarting it if it dies. Status lines go to the console
(``fleetcast: ...``); the agent's own log goes there too, so the lab reads it on the serial port. The
agent executes the post action itself (``reboot -f`` / ``poweroff -f``; "none" keeps the machine here).
"""

from __future__ import annotations

import os
import re
import subprocess
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


def uptime() -> float:
    try:
        return float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0


KMSG_STAMP = re.compile(r"^\d+,\d+,(\d+),[^;]*;(.*)$")


def _kmsg(path: Path = Path("/dev/kmsg")) -> list[tuple[float, str]]:
    """The kernel's log so far as (seconds since the kernel started, message), without blocking."""
    out: list[tuple[float, str]] = []
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return out
    try:
        while True:
            try:
                record = os.read(fd, 8192).decode(errors="replace")
            except BlockingIOError:
                break
            except OSError:  # EPIPE: a record was overwritten while reading; go on with the next
                continue
            if not record:
                break
            m = KMSG_STAMP.match(record.split("\n", 1)[0])
            if m:
                out.append((int(m.group(1)) / 1e6, m.group(2)))
    finally:
        os.close(fd)
    return out


def boot_times(kmsg: list[tuple[float, str]], env: dict[str, str], now: float) -> str:
    """Where the boot's seconds went, counted from the kernel's start (after its own decompression):
    the initramfs unpacked from .. to .., /init started, modules loaded, this init running."""
    parts = []
    start = next((t for t, m in kmsg if m.startswith("Trying to unpack rootfs")), None)
    end = next((t for t, m in kmsg if m.startswith("Freeing initrd memory")), None)
    if start is not None and end is not None:
        parts.append(f"initramfs unpacked {start:.1f}-{end:.1f} s")
    for key, label in (("FC_UP_INIT", "/init"), ("FC_UP_MODULES", "modules loaded")):
        if key in env:
            parts.append(f"{label} {env[key]} s")
    parts.append(f"python init {now:.1f} s")
    return "times since the kernel started: " + ", ".join(parts)


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


# What the agent imports before it can enroll (the slow part of its start under emulation).
AGENT_MODULES = ("fleetcast.cli.main", "fleetcast.cli.agent", "fleetcast.agent.loop")


class ForkedAgent:
    """The first agent, forked from this init before DHCP: it shares the interpreter and modules
    already loaded, imports :data:`AGENT_MODULES` while the network comes up, and runs
    ``fleetcast agent ARGS`` (the CLI's ``main``) once :meth:`start` says so. (Later restarts are
    fresh processes.)"""

    def __init__(self, argv: list[str]) -> None:
        read_end, self._go = os.pipe()  # closed unwritten (this init died): the child just exits
        self.pid = os.fork()
        if self.pid == 0:
            os.close(self._go)
            self._child(read_end, argv)
        os.close(read_end)

    @staticmethod
    def _child(read_end: int, argv: list[str]) -> None:
        code = 1
        try:
            import importlib

            for name in AGENT_MODULES:
                importlib.import_module(name)
            if os.read(read_end, 1) == b"1":
                from fleetcast.cli.main import main as cli_main

                code = cli_main(argv)
            else:
                code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def start(self) -> None:
        os.write(self._go, b"1")
        os.close(self._go)

    def wait(self) -> int:
        _, raw = os.waitpid(self.pid, 0)
        return os.waitstatus_to_exitcode(raw)


def main() -> int:
    try:
        settings = read()
    except FleetcastError as exc:
        status(f"error: {exc.message}")
        return 2
    complete = settings.server is not None and settings.enroll_token is not None
    first = ForkedAgent(agent_argv(settings)[3:]) if complete else None  # [3:]: after "python3 -m fleetcast"
    status(f"firmware {firmware()}")
    status(boot_times(_kmsg(), dict(os.environ), uptime()))
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
        proc: ForkedAgent | subprocess.Popen[bytes]
        if first is not None:
            proc, first = first, None
            proc.start()
        else:
            proc = spawn(agent_argv(settings), stdout=None, stderr=None)
        up = f"{uptime():.1f} s since the kernel started"
        status(f"agent started (pid {proc.pid}, {up}), server {settings.server}")
        rc = proc.wait()
        if rc == 0:
            status("agent finished")
            return 0
        status(f"error: agent exited with status {rc}; restarting in {RESTART_DELAY:.0f} s")
        time.sleep(RESTART_DELAY)


if __name__ == "__main__":
    sys.exit(main())
