"""Static IP configuration for the network stack a deployed Linux system uses.

Detection, first match wins (docs/linux-identity.md):

1. netplan -- ``/etc/netplan/*.yaml`` exists (netplan then renders for networkd or NetworkManager);
2. NetworkManager -- ``/usr/sbin/NetworkManager`` is installed, or ``/etc/NetworkManager`` holds its
   configuration or connection profiles;
3. systemd-networkd -- ``/etc/systemd/network/*.network`` exists or the service is enabled;
4. ifupdown -- ``/etc/network/interfaces`` names an interface other than ``lo``;
5. otherwise, when the image has systemd: systemd-networkd, enabled by fleetcast.

The interface is matched by the client's MAC when the deployment knows it, so a renamed or
differently named NIC on the target still gets the address; ifupdown has no MAC matching and keeps
the interface name the image already uses.
"""

from __future__ import annotations

import glob
import ipaddress
import logging
import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from fleetcast.errors import IdentityError
from fleetcast.identity.linux import files

logger = logging.getLogger(__name__)


class Stack(StrEnum):
    NETPLAN = "netplan"
    NETWORK_MANAGER = "networkmanager"
    NETWORKD = "systemd-networkd"
    IFUPDOWN = "ifupdown"


@dataclass(frozen=True)
class StaticIp:
    interface: ipaddress.IPv4Interface | ipaddress.IPv6Interface
    gateway: str | None
    dns: tuple[str, ...]
    mac: str | None


def parse_static(ip: str, gateway: str | None, dns: tuple[str, ...], mac: str | None) -> StaticIp:
    """Validate the settings at the edge: CIDR address, gateway and DNS addresses, MAC."""
    if "/" not in ip:
        raise IdentityError(
            f"IP address {ip!r} has no prefix length", hint="write it as CIDR, e.g. 10.0.0.101/24"
        )
    try:
        iface = ipaddress.ip_interface(ip)
    except ValueError as exc:
        raise IdentityError(f"IP address {ip!r} is not a valid CIDR address: {exc}") from exc
    for label, value in [("gateway", gateway), *(("DNS server", d) for d in dns)]:
        if value is None:
            continue
        try:
            ipaddress.ip_address(value)
        except ValueError as exc:
            raise IdentityError(f"{label} {value!r} is not an IP address") from exc
    if mac is not None and not re.fullmatch(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}", mac.lower()):
        raise IdentityError(f"MAC address {mac!r} is not of the form aa:bb:cc:dd:ee:ff")
    return StaticIp(iface, gateway, tuple(dns), mac.lower() if mac else None)


def _has_systemd(root: Path) -> bool:
    return any(files.exists(root, p) for p in ("usr/lib/systemd/systemd", "lib/systemd/systemd"))


def _ifupdown_interface(root: Path) -> str | None:
    text = files.read(root, "etc/network/interfaces") or ""
    for line in text.splitlines():
        m = re.match(r"\s*iface\s+(\S+)\s+inet6?\s+", line)
        if m and m.group(1) != "lo":
            return m.group(1)
    return None


def detect(root: Path) -> Stack | None:
    if glob.glob(str(root / "etc/netplan/*.yaml")) or glob.glob(str(root / "etc/netplan/*.yml")):
        return Stack.NETPLAN
    if (
        files.exists(root, "usr/sbin/NetworkManager")
        or files.exists(root, "usr/bin/NetworkManager")
        or files.exists(root, "etc/NetworkManager/NetworkManager.conf")
        or glob.glob(str(root / "etc/NetworkManager/system-connections/*.nmconnection"))
    ):
        return Stack.NETWORK_MANAGER
    if glob.glob(str(root / "etc/systemd/network/*.network")) or files.exists(
        root, "etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
    ):
        return Stack.NETWORKD
    if _ifupdown_interface(root):
        return Stack.IFUPDOWN
    if _has_systemd(root):
        return Stack.NETWORKD
    return None


def _netplan(root: Path, cfg: StaticIp) -> list[str]:
    changes: list[str] = []
    for existing in sorted(
        glob.glob(str(root / "etc/netplan/*.yaml")) + glob.glob(str(root / "etc/netplan/*.yml"))
    ):
        name = Path(existing).name
        if name == "01-fleetcast.yaml":
            continue
        # renamed, not read and rewritten: a symlink (cloud-init's point into /run) would be followed
        # to the host's file once the root is mounted, and a dangling one cannot be read at all
        files.rename(root, f"etc/netplan/{name}", f"etc/netplan/{name}.fleetcast-orig")
        changes.append(f"netplan: disabled /etc/netplan/{name} (kept as {name}.fleetcast-orig)")
    match = f'        macaddress: "{cfg.mac}"' if cfg.mac else '        name: "e*"'
    lines = [
        "# Written by fleetcast at deployment.",
        "network:",
        "  version: 2",
        "  ethernets:",
        "    fleetcast0:",
        "      match:",
        match,
        "      dhcp4: false",
        "      addresses:",
        f"        - {cfg.interface.with_prefixlen}",
    ]
    if cfg.gateway:
        lines += [
            "      routes:",
            f"        - to: {'default' if cfg.interface.version == 4 else '::/0'}",
            f"          via: {cfg.gateway}",
        ]
    if cfg.dns:
        lines += ["      nameservers:", "        addresses: [" + ", ".join(cfg.dns) + "]"]
    files.write(root, "etc/netplan/01-fleetcast.yaml", "\n".join(lines) + "\n", mode=0o600)
    changes.append(f"netplan: /etc/netplan/01-fleetcast.yaml with {cfg.interface.with_prefixlen}")
    return changes


def _network_manager(root: Path, cfg: StaticIp) -> list[str]:
    v = cfg.interface.version
    addr = cfg.interface.with_prefixlen + (f",{cfg.gateway}" if cfg.gateway else "")
    lines = [
        "# Written by fleetcast at deployment.",
        "[connection]",
        "id=fleetcast",
        "type=ethernet",
        "autoconnect=true",
        "autoconnect-priority=100",
        "",
        "[ethernet]",
    ]
    if cfg.mac:
        lines.append(f"mac-address={cfg.mac.upper()}")
    lines += ["", f"[ipv{v}]", "method=manual", f"address1={addr}"]
    if cfg.dns:
        lines.append("dns=" + ";".join(cfg.dns) + ";")
    lines += ["", f"[ipv{6 if v == 4 else 4}]", "method=" + ("auto" if v == 4 else "disabled")]
    path = "etc/NetworkManager/system-connections/fleetcast.nmconnection"
    files.write(root, path, "\n".join(lines) + "\n", mode=0o600)
    return [f"NetworkManager: /{path} with {cfg.interface.with_prefixlen}"]


def _networkd(root: Path, cfg: StaticIp) -> list[str]:
    changes: list[str] = []
    match = f"MACAddress={cfg.mac}" if cfg.mac else "Name=e*"
    lines = [
        "# Written by fleetcast at deployment.",
        "[Match]",
        match,
        "",
        "[Network]",
        "DHCP=no",
        f"Address={cfg.interface.with_prefixlen}",
    ]
    if cfg.gateway:
        lines.append(f"Gateway={cfg.gateway}")
    lines += [f"DNS={d}" for d in cfg.dns]
    # networkd applies the first matching file in lexical order: 10- comes before distribution files.
    files.write(root, "etc/systemd/network/10-fleetcast.network", "\n".join(lines) + "\n")
    changes.append(
        f"systemd-networkd: /etc/systemd/network/10-fleetcast.network with {cfg.interface.with_prefixlen}"
    )
    wants = "etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
    if not files.exists(root, wants):
        unit = next(
            (
                f"/{p}"
                for p in (
                    "usr/lib/systemd/system/systemd-networkd.service",
                    "lib/systemd/system/systemd-networkd.service",
                )
                if files.exists(root, p)
            ),
            "/lib/systemd/system/systemd-networkd.service",
        )
        files.symlink(root, wants, unit)
        changes.append("systemd-networkd: enabled")
    return changes


_IFUPDOWN_STANZAS = ("iface", "auto", "mapping", "source", "source-directory", "rename")


def _ends_options(line: str) -> bool:
    """interfaces(5): a stanza's options run up to the next stanza (or an unindented comment),
    indented or not."""
    if not line.strip():
        return False
    if line.startswith("#"):
        return True
    word = line.split(maxsplit=1)[0]
    return word in _IFUPDOWN_STANZAS or word.startswith(("allow-", "no-"))


def _ifupdown(root: Path, cfg: StaticIp) -> list[str]:
    name = _ifupdown_interface(root)
    if name is None:
        raise IdentityError(
            "/etc/network/interfaces in the deployed system configures no interface besides lo",
            hint="give the golden image an 'iface NAME inet dhcp' stanza for its network card",
        )
    text = files.read(root, "etc/network/interfaces") or ""
    kept: list[str] = []
    skipping = False
    for line in text.splitlines():
        stripped = line.strip()
        if re.match(rf"iface\s+{re.escape(name)}\s+inet6?\s+", stripped):
            skipping = True
            continue
        if skipping:
            if not _ends_options(line):
                continue
            skipping = False
        kept.append(line)
    family = "inet" if cfg.interface.version == 4 else "inet6"
    stanza = [f"iface {name} {family} static", f"    address {cfg.interface.with_prefixlen}"]
    if cfg.gateway:
        stanza.append(f"    gateway {cfg.gateway}")
    if cfg.dns:
        stanza.append("    dns-nameservers " + " ".join(cfg.dns))
    body = "\n".join(kept).rstrip("\n")
    files.write(
        root,
        "etc/network/interfaces",
        body + "\n\n# Written by fleetcast at deployment.\n" + "\n".join(stanza) + "\n",
    )
    return [f"ifupdown: /etc/network/interfaces: {name} static {cfg.interface.with_prefixlen}"]


def require_stack(root: Path) -> Stack:
    """The stack to configure, or IdentityError when there is none (checked before any change)."""
    stack = detect(root)
    if stack is None:
        raise IdentityError(
            "the deployed system uses no network stack fleetcast knows (netplan, NetworkManager, "
            "systemd-networkd, ifupdown), so the static IP cannot be set",
            hint="deploy without --ip (DHCP), or install one of them in the golden image",
        )
    return stack


def configure(root: Path, cfg: StaticIp) -> list[str]:
    stack = require_stack(root)
    logger.info("network stack of the deployed system: %s", stack)
    writer = {
        Stack.NETPLAN: _netplan,
        Stack.NETWORK_MANAGER: _network_manager,
        Stack.NETWORKD: _networkd,
        Stack.IFUPDOWN: _ifupdown,
    }[stack]
    return writer(root, cfg)
