"""One QEMU machine of the virtual lab: firmware, a blank disk, a tap NIC on the lab bridge, serial log.

    m = Machine(MachineSpec(name="client1", firmware=Firmware.UEFI, mac=lab_mac(1), tap="tap1",
                            workdir=Path("/run/fleetcast-lab/machines/client1"), netns="fc-nb-lab"))
    m.create_disk("8G")
    m.start()          # daemonized QEMU, its PID in workdir/qemu.pid
    m.serial_text()    # what the guest printed on ttyS0 (workdir/serial.log)
    m.stop()           # SIGTERM, then SIGKILL, by PID

Firmware is a small registry keyed by :class:`Firmware` (lab-notes.md has the command lines that work):

- ``bios``: SeaBIOS with ``graphics=off`` (it and iPXE print on the serial port), the NIC's iPXE
  option ROM (QEMU's ``efi-virtio.rom`` holds the legacy PXE image too).
- ``uefi``: ``-machine q35``, OVMF_CODE_4M.fd read-only + a private copy of OVMF_VARS_4M.fd; OVMF hands
  off to the NIC's iPXE EFI driver.
- ``secureboot``: ``-machine q35,smm=on``, OVMF_CODE_4M.ms.fd + a copy of OVMF_VARS_4M.ms.fd (Microsoft
  keys enrolled, Secure Boot on), ``cfi.pflash01`` secure; the NIC has no option ROM (an unsigned iPXE
  ROM is refused under Secure Boot), so OVMF's own PXE stack fetches Debian's signed shim.

Boot order: the NIC first (bootindex 1), then the disk (bootindex 2), so a machine whose iPXE script
says ``exit`` boots its disk. The serial port is a unix socket (``console`` attaches to it) logged to
``serial.log``; QMP on ``qmp.sock``. TCG unless ``/dev/kvm`` really works (lab-notes.md: here it is a
paravirtual KVM that aborts QEMU), always ``-nodefaults`` (no user-mode network sneaks in).
"""

from __future__ import annotations

import enum
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from fleetcast.errors import CommandError
from fleetcast.lab.netns import LabError
from fleetcast.run import run, which

logger = logging.getLogger(__name__)

QEMU = "qemu-system-x86_64"
OVMF_DIR = Path("/usr/share/OVMF")
DEFAULT_MEMORY_MIB = 2048  # a ~130 MB initrd needs it (lab-notes.md)
_SIZE_RE = re.compile(r"^([0-9]+)([KMGT]?)i?B?$", re.IGNORECASE)
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


class Firmware(enum.StrEnum):
    BIOS = "bios"
    UEFI = "uefi"
    SECUREBOOT = "secureboot"


class Accel(enum.StrEnum):
    AUTO = "auto"
    TCG = "tcg"
    KVM = "kvm"


def parse_size(text: str) -> int:
    """``8G``, ``512M``, ``4GiB``, ``1073741824`` -> bytes; a UsageError-like LabError otherwise."""
    m = _SIZE_RE.match(text.strip())
    if m is None:
        raise LabError(f"disk size {text!r} is not a size", hint="write it like 8G, 512M or 4GiB")
    value = int(m.group(1)) << (10 * "BKMGT".index((m.group(2) or "B").upper()))
    if value < (1 << 30):
        raise LabError(f"disk size {text!r} is below 1 GiB; the lab's golden image needs 2 GiB")
    return value


def lab_mac(index: int) -> str:
    """The MAC of lab machine ``index`` (1..254): ``52:54:00:fc:00:NN``, the same every run (the lab
    runs in its own network namespace, so two labs never share a wire)."""
    if not 1 <= index <= 254:
        raise LabError(f"lab machine number {index} is outside 1..254")
    return f"52:54:00:fc:00:{index:02x}"


class FirmwareProfile:
    """What one firmware adds to the QEMU command line; subclasses register themselves by ``kind``."""

    kind: ClassVar[Firmware]
    registry: ClassVar[dict[Firmware, type[FirmwareProfile]]] = {}
    machine: ClassVar[str] = "q35"
    nic_rom: ClassVar[bool] = True  # QEMU's own virtio-net ROM (iPXE: legacy PXE + EFI driver)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        FirmwareProfile.registry[cls.kind] = cls

    def prepare(self, workdir: Path) -> None:
        """Create per-machine firmware files (an NVRAM copy) if they are missing."""

    def args(self, workdir: Path) -> list[str]:
        return ["-machine", self.machine]


class BiosProfile(FirmwareProfile):
    kind = Firmware.BIOS
    machine = "q35,graphics=off"  # SeaBIOS and iPXE then write to the serial port (no screen here)


class _OvmfProfile(FirmwareProfile):
    kind = Firmware.UEFI
    code = "OVMF_CODE_4M.fd"
    vars = "OVMF_VARS_4M.fd"

    def prepare(self, workdir: Path) -> None:
        for name in (self.code, self.vars):
            if not (OVMF_DIR / name).is_file():
                raise LabError(f"firmware file {OVMF_DIR / name} is missing", hint="apt-get install ovmf")
        dest = workdir / "vars.fd"
        if not dest.exists():
            shutil.copyfile(OVMF_DIR / self.vars, dest)

    def args(self, workdir: Path) -> list[str]:
        return [
            *super().args(workdir),
            "-drive",
            f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_DIR / self.code}",
            "-drive",
            f"if=pflash,format=raw,unit=1,file={workdir / 'vars.fd'}",
        ]


class UefiProfile(_OvmfProfile):
    kind = Firmware.UEFI

    def args(self, workdir: Path) -> list[str]:
        # The NIC's iPXE ROM brings its own network stack. Without edk2's, OVMF offers no PXE/HTTP boot
        # options of its own: when iPXE exits (the server says "boot your disk") the boot manager goes on
        # to the disk. (An edk2 PXE option would run snponly.efi, whose exit returns EFI_SUCCESS, and
        # edk2 then stops at its setup menu instead of trying the next option.)
        return [*super().args(workdir), *_fw_cfg(IPv4Support="no", IPv6Support="no")]


class SecureBootProfile(_OvmfProfile):
    kind = Firmware.SECUREBOOT
    machine = "q35,smm=on"
    code = "OVMF_CODE_4M.ms.fd"
    vars = "OVMF_VARS_4M.ms.fd"
    nic_rom = False  # OVMF's own network stack: an unsigned iPXE ROM is refused with Secure Boot on

    def args(self, workdir: Path) -> list[str]:
        secure = ["-global", "driver=cfi.pflash01,property=secure,value=on"]
        # PXE over IPv4 only: no IPv6 PXE/HTTP boot options to time out before the disk
        return [*super().args(workdir), *secure, *_fw_cfg(IPv6Support="no")]


def _fw_cfg(**knobs: str) -> list[str]:
    """OVMF's runtime switches (edk2's OvmfPkg/RUNTIME_CONFIG.md):
    ``-fw_cfg name=opt/org.tianocore/KEY,string=VALUE``."""
    out = []
    for key, value in knobs.items():
        out += ["-fw_cfg", f"name=opt/org.tianocore/{key},string={value}"]
    return out


def profile(firmware: Firmware) -> FirmwareProfile:
    return FirmwareProfile.registry[firmware]()


_kvm_works: bool | None = None


def kvm_works() -> bool:
    """Whether QEMU can start a KVM guest with ``-cpu host`` (probed once: QEMU aborts at once on this
    host's paravirtual KVM, lab-notes.md)."""
    global _kvm_works
    if _kvm_works is None:
        _kvm_works = False
        if os.access("/dev/kvm", os.R_OK | os.W_OK):
            argv = [QEMU, "-accel", "kvm", "-cpu", "host", "-machine", "q35", "-nodefaults", "-S"]
            argv += ["-display", "none", "-qmp", "stdio"]
            qmp = b'{"execute": "qmp_capabilities"}\n{"execute": "quit"}\n'
            proc = run(argv, input=qmp, check=False, timeout=30)
            _kvm_works = proc.returncode == 0
        logger.info("KVM %s", "works" if _kvm_works else "does not work here: TCG")
    return _kvm_works


def resolve_accel(accel: Accel) -> Accel:
    if accel is Accel.AUTO:
        return Accel.KVM if kvm_works() else Accel.TCG
    return accel


@dataclass(frozen=True)
class MachineSpec:
    """One lab machine. ``workdir`` holds its disk, NVRAM copy, serial log, sockets and PID file."""

    name: str
    firmware: Firmware
    mac: str
    workdir: Path
    tap: str | None = None  # the tap device on the lab bridge; None: no network
    netns: str | None = None  # the namespace the tap lives in (QEMU is started inside it)
    memory_mib: int = DEFAULT_MEMORY_MIB
    accel: Accel = Accel.TCG
    disk_format: str = "qcow2"

    def __post_init__(self) -> None:
        if not _MAC_RE.match(self.mac):
            raise LabError(f"machine {self.name}: MAC {self.mac!r} is not like 52:54:00:fc:00:01")
        if self.disk_format not in ("qcow2", "raw"):
            raise LabError(f"machine {self.name}: disk format {self.disk_format!r} is not qcow2 or raw")


class Machine:
    def __init__(self, spec: MachineSpec) -> None:
        self.spec = spec
        self.workdir = spec.workdir
        self.profile = profile(spec.firmware)

    # -- files ------------------------------------------------------------------------------------

    @property
    def disk(self) -> Path:
        return self.workdir / f"disk.{self.spec.disk_format}"

    @property
    def serial_log(self) -> Path:
        return self.workdir / "serial.log"

    @property
    def serial_socket(self) -> Path:
        return self.workdir / "serial.sock"

    @property
    def qmp_socket(self) -> Path:
        return self.workdir / "qmp.sock"

    @property
    def pidfile(self) -> Path:
        return self.workdir / "qemu.pid"

    def create_disk(self, size: int | str, *, backing: Path | None = None) -> Path:
        """A blank disk of ``size`` (bytes or ``8G``), replacing any earlier one. ``backing``: an
        existing disk image (raw or qcow2) the disk starts as instead: a qcow2 copy-on-write overlay,
        so the image itself is never written (the disk's format must be qcow2)."""
        nbytes = parse_size(size) if isinstance(size, str) else size
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv: list[str | Path] = ["qemu-img", "create", "-q", "-f", self.spec.disk_format]
        if backing is not None:
            if self.spec.disk_format != "qcow2":
                raise LabError(f"machine {self.spec.name}: a disk from an image needs qcow2, not raw")
            backing = backing.resolve()
            if not backing.is_file():
                raise LabError(f"machine {self.spec.name}: disk image {backing} does not exist")
            with backing.open("rb") as fh:
                fmt = "qcow2" if fh.read(4) == b"QFI\xfb" else "raw"
            if nbytes < backing.stat().st_size and fmt == "raw":
                raise LabError(
                    f"machine {self.spec.name}: disk size {nbytes} is smaller than the image "
                    f"{backing} ({backing.stat().st_size} bytes)"
                )
            argv += ["-b", backing, "-F", fmt]
        self.disk.unlink(missing_ok=True)
        run([*argv, self.disk, str(nbytes)])
        return self.disk

    def serial_text(self) -> str:
        try:
            return self.serial_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- the command line -------------------------------------------------------------------------

    def argv(self) -> list[str]:
        spec = self.spec
        accel = resolve_accel(spec.accel)
        argv = [QEMU, "-name", f"fleetcast-lab-{spec.name}", "-nodefaults", "-accel", accel.value]
        argv += ["-cpu", "host" if accel is Accel.KVM else "qemu64", "-smp", "1", "-m", str(spec.memory_mib)]
        argv += self.profile.args(self.workdir)
        argv += ["-display", "none", "-vga", "none", "-boot", "menu=off,strict=off"]
        argv += [
            "-chardev",
            f"socket,id=ser0,path={self.serial_socket},server=on,wait=off,"
            f"logfile={self.serial_log},logappend=on",
            "-serial",
            "chardev:ser0",
            "-qmp",
            f"unix:{self.qmp_socket},server=on,wait=off",
        ]
        if spec.tap is not None:
            argv += ["-netdev", f"tap,id=net0,ifname={spec.tap},script=no,downscript=no"]
            nic = f"virtio-net-pci,netdev=net0,mac={spec.mac},bootindex=1"
            # (an explicit romfile=/usr/lib/ipxe/qemu/efi-virtio.rom is not run by SeaBIOS here)
            argv += ["-device", nic if self.profile.nic_rom else nic + ",romfile="]
        else:
            argv += ["-nic", "none"]
        if self.disk.exists():
            argv += ["-drive", f"file={self.disk},if=none,id=disk0,format={spec.disk_format},cache=unsafe"]
            argv += ["-device", "virtio-blk-pci,drive=disk0,bootindex=2"]
        argv += ["-pidfile", str(self.pidfile), "-daemonize"]
        return argv

    # -- power ------------------------------------------------------------------------------------

    def pid(self) -> int | None:
        """The PID of this machine's QEMU if it is running (checked against /proc, so a reused PID
        of some other program is never taken for ours)."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid, str(self.pidfile)) else None

    def running(self) -> bool:
        return self.pid() is not None

    def start(self) -> int:
        """Start (power on) the machine; returns QEMU's PID. Raises LabError with QEMU's message."""
        if self.running():
            raise LabError(f"machine {self.spec.name} is already running (pid {self.pid()})")
        which(QEMU, package="qemu-system-x86")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.profile.prepare(self.workdir)
        for stale in (self.pidfile, self.serial_socket, self.qmp_socket):
            stale.unlink(missing_ok=True)
        argv = self.argv()
        if self.spec.netns is not None:
            argv = ["ip", "netns", "exec", self.spec.netns, *argv]
        with open(self.serial_log, "ab") as log:
            log.write(f"\n--- fleetcast lab: power on {time.strftime('%H:%M:%S')} ---\n".encode())
        try:
            run(argv, timeout=60)
        except CommandError as exc:
            raise LabError(f"machine {self.spec.name}: QEMU did not start: {exc.message}") from exc
        pid = self.pid()
        if pid is None:
            raise LabError(f"machine {self.spec.name}: QEMU started but wrote no PID to {self.pidfile}")
        logger.info(
            "machine %s (%s, %s) started: pid %d", self.spec.name, self.spec.firmware, self.spec.mac, pid
        )
        return pid

    def stop(self, timeout: float = 10.0) -> None:
        """Power off: SIGTERM to QEMU by PID, SIGKILL after ``timeout``; a stopped machine is fine."""
        pid = self.pid()
        if pid is not None:
            stop_pid(pid, str(self.pidfile), timeout=timeout)
            logger.info("machine %s stopped (pid %d)", self.spec.name, pid)

    def power_cycle(self) -> int:
        self.stop()
        return self.start()

    def qmp(self, command: str, **arguments: Any) -> Any:
        """One QMP command; its ``return`` value."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            try:
                sock.connect(str(self.qmp_socket))
                f = sock.makefile("rwb")
                f.readline()  # greeting
                for msg in ({"execute": "qmp_capabilities"}, {"execute": command, "arguments": arguments}):
                    f.write(json.dumps(msg).encode() + b"\n")
                    f.flush()
                    while True:
                        reply = json.loads(f.readline() or b"{}")
                        if "event" not in reply:
                            break
                    if "error" in reply:
                        raise LabError(f"machine {self.spec.name}: QMP {command}: {reply['error']}")
            except (OSError, ValueError) as exc:
                raise LabError(f"machine {self.spec.name}: QMP {command} failed: {exc}") from exc
        return reply.get("return")

    def wait_serial(self, pattern: str | re.Pattern[str], timeout: float, *, since: int = 0) -> re.Match[str]:
        """Wait until the serial log (from byte offset ``since``) matches ``pattern``; LabError with
        the log's tail when it does not within ``timeout`` or QEMU exits."""
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while True:
            text = self.serial_text()[since:]
            m = rx.search(text)
            if m is not None:
                return m
            if time.monotonic() > deadline or not self.running():
                why = "QEMU exited" if not self.running() else f"nothing within {timeout:.0f} s"
                tail = "\n".join(text.splitlines()[-15:])
                raise LabError(
                    f"machine {self.spec.name}: waiting for {rx.pattern!r}: {why}; serial:\n{tail}"
                )
            time.sleep(0.5)


def pid_alive(pid: int, marker: str) -> bool:
    """Whether ``pid`` runs (not a zombie) with ``marker`` as one of its command-line words (empty
    marker: any program) -- so a PID reused by another program is never taken for ours."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if marker and marker.encode() not in cmdline.split(b"\0"):
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def stop_pid(pid: int, marker: str, *, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``, to this one PID (if it still is ours, see pid_alive)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not pid_alive(pid, marker):
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not pid_alive(pid, marker):
                return
            time.sleep(0.1)
    raise LabError(f"process {pid} did not end after SIGKILL")


def console_attach(sock_path: Path) -> None:
    """Attach the terminal to a machine's serial socket (Ctrl-] ends), like ``virsh console``."""
    if shutil.which("socat"):
        subprocess.run(["socat", "-,raw,echo=0,escape=0x1d", f"UNIX-CONNECT:{sock_path}"], check=False)
        return
    raise LabError(
        "attaching needs socat",
        hint="apt-get install socat, or use 'fleetcast lab console CLIENT' to follow the log",
    )
