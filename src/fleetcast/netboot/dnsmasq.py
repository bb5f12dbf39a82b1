"""dnsmasq's configuration and TFTP root, generated from a :class:`NetbootConfig` (pure where it can be).

Modes (``fleetcast serve --dhcp``):

- ``full``: fleetcast is the network's DHCP server on the named interface, leasing from ``--range``;
- ``proxy``: beside the site's DHCP server, fleetcast answers PXE clients with boot information only
  (``dhcp-range=NETWORK,proxy``; never an address);
- ``off``: TFTP only (the site's DHCP server points clients at fleetcast itself).

Always ``interface=IF`` + ``bind-interfaces`` + ``except-interface=lo`` so DHCP is answered on the
named interface only, and ``port=0`` (no DNS). Router advertisements (``enable-ra``, an RA-only IPv6
range) are sent when the interface has an IPv6 address that is not link-local: iPXE otherwise waits
about 13 s for IPv6 before it goes on.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from fleetcast.errors import CommandError, UsageError
from fleetcast.netboot import methods
from fleetcast.netboot.methods import Bios, HttpBoot, Ipxe, SecureBoot, Uefi
from fleetcast.run import run_text

logger = logging.getLogger(__name__)

LEASE_TIME = "1h"
IFNAME_MAX = 15


class DhcpMode(StrEnum):
    FULL = "full"
    PROXY = "proxy"
    OFF = "off"


@dataclass(frozen=True)
class DhcpRange:
    start: ipaddress.IPv4Address
    end: ipaddress.IPv4Address

    def __str__(self) -> str:
        return f"{self.start}-{self.end}"

    @property
    def size(self) -> int:
        return int(self.end) - int(self.start) + 1


@dataclass(frozen=True)
class InterfaceInfo:
    """What the configuration needs to know about the interface (from ``ip -j addr show``)."""

    name: str
    mac: str
    ipv4: ipaddress.IPv4Interface | None
    ipv6_global: bool = False


@dataclass(frozen=True)
class NetbootConfig:
    """Everything the network boot needs; built once by ``fleetcast serve`` (or the lab) and passed in.

    ``state_dir`` holds ``dnsmasq.conf`` and the lease file; ``tftp_dir`` is the TFTP root (dnsmasq reads
    it after dropping root, so it must not lie inside the 0700 data directory; default ``state_dir/tftp``).
    ``secureboot_macs``: clients that get the Secure Boot chain (shim → signed GRUB) when UEFI.
    ``uefi_boot``: ``ipxe`` (UEFI clients get snponly.efi) or ``shim`` (every UEFI client gets shim).
    """

    interface: str
    mode: DhcpMode
    server_url: str
    state_dir: Path
    dhcp_range: DhcpRange | None = None
    uefi_boot: str = "ipxe"
    secureboot_macs: tuple[str, ...] = ()
    bootenv_dir: Path | None = None
    extra: tuple[str, ...] = field(default_factory=tuple)  # more dnsmasq lines (tests, experts)
    tftp_dir: Path | None = None

    @property
    def tftp_root(self) -> Path:
        return self.tftp_dir if self.tftp_dir is not None else self.state_dir / "tftp"

    @property
    def conf_file(self) -> Path:
        return self.state_dir / "dnsmasq.conf"

    @property
    def lease_file(self) -> Path:
        return self.state_dir / "dnsmasq.leases"


def parse_range(text: str) -> DhcpRange:
    """``A-B`` (IPv4, A ≤ B) -> DhcpRange, with exact error texts."""
    start_text, sep, end_text = text.strip().partition("-")
    if not sep or not start_text.strip() or not end_text.strip():
        raise UsageError(
            f"DHCP range {text!r} is not START-END", hint="for example --range 10.0.0.100-10.0.0.200"
        )
    try:
        start = ipaddress.IPv4Address(start_text.strip())
        end = ipaddress.IPv4Address(end_text.strip())
    except ipaddress.AddressValueError as exc:
        raise UsageError(
            f"DHCP range {text!r}: {exc}", hint="for example --range 10.0.0.100-10.0.0.200"
        ) from exc
    if end < start:
        raise UsageError(f"DHCP range {text!r}: the end {end} comes before the start {start}")
    return DhcpRange(start, end)


def check_range(rng: DhcpRange, iface: InterfaceInfo) -> None:
    """The range must lie in the interface's subnet, not hold its own address nor the subnet's
    network or broadcast address."""
    if iface.ipv4 is None:
        raise UsageError(
            f"interface {iface.name} has no IPv4 address; full DHCP needs one in the range's subnet",
            hint=f"ip addr add 10.0.0.1/24 dev {iface.name}",
        )
    net = iface.ipv4.network
    for addr in (rng.start, rng.end):
        if addr not in net:
            raise UsageError(
                f"DHCP range {rng}: {addr} is not in {iface.name}'s subnet {net}",
                hint=f"pick a range inside {net}",
            )
    if net.prefixlen < 31 and (rng.start == net.network_address or rng.end == net.broadcast_address):
        raise UsageError(
            f"DHCP range {rng} includes the network or broadcast address of {net}",
            hint=f"start above {net.network_address} and end below {net.broadcast_address}",
        )
    if rng.start <= iface.ipv4.ip <= rng.end:
        raise UsageError(
            f"DHCP range {rng} includes {iface.name}'s own address {iface.ipv4.ip}",
            hint="leave the server's address out of the range",
        )


def interface_info(name: str) -> InterfaceInfo:
    """The interface's MAC and addresses; UsageError when it does not exist."""
    if not name or len(name) > IFNAME_MAX or "/" in name or name in (".", ".."):
        raise UsageError(f"network interface {name!r} is not a valid interface name")
    if not Path("/sys/class/net", name).exists():
        present = sorted(p.name for p in Path("/sys/class/net").iterdir())
        raise UsageError(
            f"network interface {name!r} does not exist",
            hint=f"interfaces here: {', '.join(present) or 'none'}",
        )
    try:
        data = json.loads(run_text(["ip", "-j", "addr", "show", "dev", name]))
    except (CommandError, ValueError) as exc:
        raise UsageError(f"cannot read the addresses of {name}: {exc}") from exc
    entry = data[0] if isinstance(data, list) and data and isinstance(data[0], dict) else {}
    ipv4 = None
    ipv6_global = False
    for a in entry.get("addr_info", []):
        if a.get("family") == "inet" and ipv4 is None:
            ipv4 = ipaddress.IPv4Interface(f"{a['local']}/{a['prefixlen']}")
        elif a.get("family") == "inet6" and a.get("scope") == "global":
            ipv6_global = True
    return InterfaceInfo(name=name, mac=str(entry.get("address", "")), ipv4=ipv4, ipv6_global=ipv6_global)


def render(cfg: NetbootConfig, iface: InterfaceInfo) -> str:
    """The dnsmasq configuration file for ``cfg`` on ``iface``."""
    if iface.ipv4 is None:
        raise UsageError(
            f"interface {iface.name} has no IPv4 address; network boot needs one (clients fetch from it)",
            hint=f"ip addr add 10.0.0.1/24 dev {iface.name}",
        )
    server_ip = str(iface.ipv4.ip)
    url = cfg.server_url.rstrip("/")
    lines = [
        "# generated by fleetcast (netboot/dnsmasq.py); rewritten at every start",
        "port=0",
        f"interface={cfg.interface}",
        "except-interface=lo",
        "bind-interfaces",
        "pid-file=",
        f"dhcp-leasefile={cfg.lease_file}",
        "log-dhcp",
        "enable-tftp",
        f"tftp-root={cfg.tftp_root}",
        "",
        "# what the client is: iPXE (option 175 / user class), then its architecture (option 93)",
        f"dhcp-match=set:{Ipxe.tag},175",
        f"dhcp-userclass=set:{Ipxe.tag},{methods.IPXE_USER_CLASS}",
    ]
    for cls in (Bios, Uefi, HttpBoot):
        for code in cls.arch_codes:
            lines.append(f"dhcp-match=set:{cls.tag},option:client-arch,{code}")
    if cfg.uefi_boot == "shim":
        lines.append(f"tag-if=set:{SecureBoot.tag},tag:{Uefi.tag}")
    for mac in cfg.secureboot_macs:
        lines.append(f"dhcp-mac=set:{SecureBoot.tag},{mac}")
    ipxe, bios, efi, sb, http = Ipxe.tag, Bios.tag, Uefi.tag, SecureBoot.tag, HttpBoot.tag
    lines += [
        "",
        "# boot files: exclusive tags, so the order of these lines does not matter",
        f"dhcp-boot=tag:{ipxe},{Ipxe.boot_target(url)}",
        f"dhcp-boot=tag:{bios},tag:!{ipxe},{Bios.boot_file},,{server_ip}",
        f"dhcp-boot=tag:{efi},tag:!{ipxe},tag:!{sb},{Uefi.boot_file},,{server_ip}",
        f"dhcp-boot=tag:{efi},tag:!{ipxe},tag:{sb},{SecureBoot.boot_file},,{server_ip}",
        f"dhcp-boot=tag:{http},{HttpBoot.boot_target(url)}",
        # UEFI HTTP boot only takes an answer that says HTTPClient in option 60
        f"dhcp-option-force=tag:{http},60,HTTPClient",
        "",
    ]
    if cfg.mode is DhcpMode.FULL:
        if cfg.dhcp_range is None:
            raise UsageError(
                "full DHCP needs --range START-END", hint="for example --range 10.0.0.100-10.0.0.200"
            )
        netmask = iface.ipv4.network.netmask
        lines += [
            "# full DHCP: leases from the range; no router or DNS server is announced",
            f"dhcp-range={cfg.dhcp_range.start},{cfg.dhcp_range.end},{netmask},{LEASE_TIME}",
            "dhcp-option=option:router",
            "dhcp-option=option:dns-server",
        ]
    elif cfg.mode is DhcpMode.PROXY:
        # proxyDHCP answers only PXE clients and only for pxe-service lines: iPXE gets its URL from the
        # dhcp-boot line above (no pxe-service matches it), UEFI asks again on port 4011
        lines += [
            "# proxyDHCP beside the site's DHCP server: boot information only, never an address",
            f"dhcp-range={iface.ipv4.network.network_address},proxy,{iface.ipv4.network.netmask}",
            f'pxe-service=tag:!{ipxe},x86PC,"fleetcast",{Bios.boot_file}',
        ]
        for csa in ("BC_EFI", "X86-64_EFI"):
            lines += [
                f'pxe-service=tag:!{ipxe},tag:!{sb},{csa},"fleetcast",{Uefi.boot_file}',
                f'pxe-service=tag:!{ipxe},tag:{sb},{csa},"fleetcast",{SecureBoot.boot_file}',
            ]
    else:
        lines.append("# DHCP off: TFTP only (the site's DHCP server names this server and the boot file)")
    if iface.ipv6_global:
        lines += [
            "",
            "# router advertisements so iPXE does not wait ~13 s for IPv6",
            "enable-ra",
            f"dhcp-range=::,constructor:{cfg.interface},ra-only",
        ]
    lines += list(cfg.extra)
    return "\n".join(lines) + "\n"


GRUB_STUB = """# generated by fleetcast. Debian's signed network GRUB reads (tftp)/grub/grub.cfg; under
# Secure Boot it loads no modules and http is one, so everything comes by TFTP: a per-MAC config the
# server keeps in grub/mac/ (the boot environment with BOOTIF, or exit to the local disk), else the
# boot environment.
set timeout=0
set fc=(tftp,{host})
# (test -e cannot see files over TFTP: source it; a missing file is an error GRUB goes on after)
source $fc/grub/mac/$net_default_mac.cfg
echo "fleetcast: $net_default_mac: starting the boot environment"
linux $fc/bootenv/vmlinuz {cmdline}
initrd $fc/bootenv/initrd.img
boot
"""


def grub_stub(server_url: str, fallback_cmdline: str) -> str:
    """``grub/grub.cfg`` of the TFTP root (see GRUB_STUB)."""
    hostport = server_url.split("://", 1)[-1].split("/", 1)[0]
    host = hostport.rsplit(":", 1)[0] if hostport.count(":") == 1 else hostport
    return GRUB_STUB.format(host=host, cmdline=fallback_cmdline)


MAC_DIR = "grub/mac"


def sync_mac_configs(tftp_root: Path, configs: dict[str, str]) -> int:
    """Make ``tftp_root/grub/mac/<mac>.cfg`` exactly ``configs`` (written atomically, stale ones
    removed); returns how many files changed."""
    folder = tftp_root / MAC_DIR
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o755)
    changed = 0
    wanted = {f"{mac}.cfg": text for mac, text in configs.items()}
    for name, text in wanted.items():
        path = folder / name
        try:
            if path.read_text() == text:
                continue
        except OSError:
            pass
        _publish(path, text.encode())
        changed += 1
    for path in folder.glob("*.cfg"):
        if path.name not in wanted:
            path.unlink(missing_ok=True)
            changed += 1
    return changed


def _publish(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def prepare_tftp_root(cfg: NetbootConfig, grub_cfg: str) -> dict[str, Path]:
    """Fill ``cfg.tftp_root``: the boot files of every method (copied: dnsmasq drops root and must
    read them), ``grub/grub.cfg``, and ``bootenv/`` symlinks to the boot environment for GRUB's TFTP
    fallback. Returns name -> source."""
    files = methods.tftp_files()
    root = cfg.tftp_root
    try:
        (root / "grub").mkdir(parents=True, exist_ok=True)
        for d in (root, root / "grub"):
            os.chmod(d, 0o755)
        for name, src in files.items():
            dst = root / name
            if not (dst.is_file() and dst.stat().st_size == src.stat().st_size):
                tmp = dst.with_name(f".{name}.tmp")
                shutil.copyfile(src, tmp)
                os.chmod(tmp, 0o644)
                os.replace(tmp, dst)
        _publish(root / "grub" / "grub.cfg", grub_cfg.encode())
        _publish(root / "grub.cfg", grub_cfg.encode())
        env = root / "bootenv"
        if env.is_symlink() or env.exists():
            if env.is_symlink() or env.is_file():
                env.unlink()
            else:
                shutil.rmtree(env)
        if cfg.bootenv_dir is not None:
            env.symlink_to(cfg.bootenv_dir.resolve())
    except OSError as exc:
        raise UsageError(f"cannot prepare the TFTP root {root}: {exc.strerror}: {exc.filename}") from exc
    return files
