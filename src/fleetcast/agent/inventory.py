"""What the agent tells the server about its machine (docs/agent-protocol.md ``Inventory``).

Every source is read from files so tests can point it at a fake tree; anything missing (no DMI
in a container, no /proc/cpuinfo model line on some ARM boards) is reported empty, never an error.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetcast import __version__
from fleetcast.disk.discovery import DiskInventory, list_disks

logger = logging.getLogger(__name__)

ARPHRD_ETHER = "1"
# Virtual link kinds that never identify a machine.
_VIRTUAL_KINDS = ("bridge", "bonding", "team", "tun_flags")


@dataclass(frozen=True)
class Roots:
    """Where the inventory reads from; the defaults are the real machine."""

    net: Path = Path("/sys/class/net")
    dmi: Path = Path("/sys/class/dmi/id")
    proc: Path = Path("/proc")


@dataclass(frozen=True)
class Inventory:
    macs: tuple[str, ...]
    hostname: str
    cpu_model: str
    cpu_cores: int
    ram_bytes: int
    dmi: dict[str, str] = field(default_factory=dict)
    disks: tuple[DiskInventory, ...] = ()
    agent_version: str = __version__
    windows: tuple[dict[str, Any], ...] = ()  # protocol.WindowsInstall each (issue 13 SID audit)

    @property
    def primary_mac(self) -> str:
        return self.macs[0] if self.macs else ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "macs": list(self.macs),
            "hostname": self.hostname,
            "cpu": {"model": self.cpu_model, "cores": self.cpu_cores},
            "ram_bytes": self.ram_bytes,
            "dmi": dict(self.dmi),
            "disks": [d.to_dict() for d in self.disks],
            "agent_version": self.agent_version,
            "windows": [dict(w) for w in self.windows],
        }


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return ""


def mac_addresses(net_root: Path) -> list[str]:
    """Ethernet MACs, lower-case: interfaces with a hardware device first (by name), then virtual
    ones such as veth (by name). Loopback, zero addresses, bridges and bonds are left out."""
    physical: list[tuple[str, str]] = []
    virtual: list[tuple[str, str]] = []
    try:
        names = sorted(p.name for p in net_root.iterdir())
    except OSError:
        return []
    for name in names:
        iface = net_root / name
        if _read(iface / "type") != ARPHRD_ETHER:
            continue
        if any((iface / kind).exists() for kind in _VIRTUAL_KINDS):
            continue
        mac = _read(iface / "address").lower()
        if not mac or mac == "00:00:00:00:00:00":
            continue
        (physical if (iface / "device").exists() else virtual).append((name, mac))
    macs: list[str] = []
    for _, mac in physical + virtual:
        if mac not in macs:
            macs.append(mac)
    return macs


def cpu_info(proc_root: Path) -> tuple[str, int]:
    model = ""
    for line in _read(proc_root / "cpuinfo").splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "cpu model") and value.strip():
            model = value.strip()
            break
    return model, os.cpu_count() or 1


def ram_bytes(proc_root: Path) -> int:
    for line in _read(proc_root / "meminfo").splitlines():
        if line.startswith("MemTotal:"):
            parts = line.split()
            try:
                return int(parts[1]) * 1024
            except (IndexError, ValueError):
                return 0
    return 0


def dmi_info(dmi_root: Path) -> dict[str, str]:
    return {
        "vendor": _read(dmi_root / "sys_vendor"),
        "model": _read(dmi_root / "product_name"),
        "serial": _read(dmi_root / "product_serial"),
    }


def windows_installs(disks: Sequence[DiskInventory]) -> tuple[dict[str, Any], ...]:
    """The Windows installations on ``disks``, read-only (identity.windows.scan; cached there)."""
    try:
        from fleetcast.identity.windows.scan import scan
    except ImportError as exc:  # no hivex on this machine
        logger.debug("Windows volumes not scanned: %s", exc)
        return ()
    return tuple(f.to_dict() for f in scan(Path(d.path) for d in disks))


def collect(
    allow: Sequence[Path] | None = None, *, roots: Roots | None = None, windows: bool = False
) -> Inventory:
    """The machine's inventory now. ``allow`` limits the disks (``--allow-disk``); ``windows`` also
    reads the Windows installations on them (mounts read-only; the agent does)."""
    roots = roots or Roots()
    model, cores = cpu_info(roots.proc)
    disks = tuple(list_disks(allow))
    return Inventory(
        macs=tuple(mac_addresses(roots.net)),
        hostname=socket.gethostname(),
        cpu_model=model,
        cpu_cores=cores,
        ram_bytes=ram_bytes(roots.proc),
        dmi=dmi_info(roots.dmi),
        disks=disks,
        windows=windows_installs(disks) if windows else (),
    )
