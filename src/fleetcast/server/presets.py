"""Deployment presets beyond a name pattern and an IP range (issue 9's wizard, ``fleetcast deploy``):

- an **IP list**: CSV text, one line per client ``MAC,NAME,IP/PREFIX`` (the columns of ``fleetcast
  clients import``; NAME may be empty, a header line ``mac,name,ip`` is skipped, ``#`` starts a
  comment), instead of a range;
- **conflicts** of the planned addresses with what the server knows: an address that another enrolled
  client has now (it would answer ARP for it) is reported, not refused (the technician may know that
  machine is being replaced);
- **Windows options**: new machine SID, reset machine IDs, a driver folder of the server
  (``DATA/drivers/NAME``, INF packages) and the unattend.xml (``auto``: made by fleetcast, ``none``,
  or an unattend.xml document).

Pure functions on values; every refusal is a UsageError with an exact text. The options of a
deployment are stored in their own table (``deployment_options``: a new table is created on an
existing database, a new column would not be).
"""

from __future__ import annotations

import csv
import io
import ipaddress
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from xml.parsers import expat

from sqlalchemy import ForeignKey, Integer, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from fleetcast.errors import UsageError
from fleetcast.protocol import MAX_DNS
from fleetcast.server.db import Base
from fleetcast.server.plan import HOSTNAME_MAX, Assignment, Network, PlanClient, normalize_mac

logger = logging.getLogger(__name__)

MAX_IP_LIST = 1 << 20  # bytes of CSV text
MAX_UNATTEND = 256 * 1024
DRIVER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
UNATTEND_MODES = ("auto", "none")
# a computer name in the list is literal text (no {n} pattern), the same rule as plan.render_names
COMPUTER_NAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?")


class OptionsRow(Base):
    """What a deployment asks beyond the ``deployments`` columns (IP list, Windows options)."""

    __tablename__ = "deployment_options"

    deployment_id: Mapped[int] = mapped_column(Integer, ForeignKey("deployments.id"), primary_key=True)
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)


@dataclass(frozen=True)
class ListEntry:
    line: int
    mac: str
    name: str | None
    ip: str  # CIDR
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = field(default=None, compare=False)


@dataclass(frozen=True)
class WindowsOptions:
    new_sid: bool = True
    reset_ids: bool = True
    drivers: str | None = None
    unattend: str = "auto"  # "auto", "none" or an unattend.xml document

    @property
    def unattend_kind(self) -> str:
        return self.unattend if self.unattend in UNATTEND_MODES else "custom"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self, drivers_infs: int | None = None) -> dict[str, Any]:
        """What a plan shows (the unattend document by its size, not its text)."""
        return {
            "new_sid": self.new_sid,
            "reset_ids": self.reset_ids,
            "drivers": self.drivers,
            "drivers_infs": drivers_infs,
            "unattend": self.unattend_kind,
            "unattend_bytes": len(self.unattend.encode()) if self.unattend_kind == "custom" else 0,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> WindowsOptions:
        return cls(
            new_sid=bool(raw.get("new_sid", True)),
            reset_ids=bool(raw.get("reset_ids", True)),
            drivers=raw.get("drivers") or None,
            unattend=str(raw.get("unattend") or "auto"),
        )

    @property
    def is_default(self) -> bool:
        return self == WindowsOptions()


# -- the IP list -------------------------------------------------------------------------------


def parse_ip_list(text: str) -> list[ListEntry]:
    """CSV ``MAC,NAME,IP/PREFIX`` lines; every problem names its line number."""
    if len(text.encode()) > MAX_IP_LIST:
        raise UsageError(f"the IP list has {len(text.encode())} bytes; at most {MAX_IP_LIST} are accepted")
    entries: list[ListEntry] = []
    macs: dict[str, int] = {}
    ips: dict[str, int] = {}
    text = text.removeprefix("\ufeff")  # a CSV saved by a spreadsheet starts with a byte order mark
    for number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        cells = [c.strip() for c in row]
        if not cells or not any(cells) or cells[0].startswith("#"):
            continue
        if number == 1 and cells[0].lower() == "mac":
            continue
        where = f"IP list line {number}"
        if len(cells) != 3:
            raise UsageError(
                f"{where} has {len(cells)} column{'s' if len(cells) != 1 else ''}: expected MAC,NAME,IP",
                hint="e.g. 52:54:00:12:34:56,LAB-01,10.0.0.101/24 (NAME may be empty)",
            )
        mac_text, name, ip_text = cells
        try:
            mac = normalize_mac(mac_text)
        except UsageError as exc:
            raise UsageError(f"{where}: {exc.message}") from exc
        if mac in macs:
            raise UsageError(f"{where}: client {mac} is already on line {macs[mac]}")
        if "/" not in ip_text:
            raise UsageError(
                f"{where}: IP {ip_text!r} has no prefix length",
                hint=f"write it as {ip_text or '10.0.0.101'}/24",
            )
        try:
            iface = ipaddress.ip_interface(ip_text)
        except ValueError as exc:
            raise UsageError(
                f"{where}: IP {ip_text!r} is not an address/prefix such as 10.0.0.101/24"
            ) from exc
        _check_host(iface, where)
        address = str(iface.ip)
        if address in ips:
            raise UsageError(f"{where}: address {address} is already given to line {ips[address]}")
        if name and (not COMPUTER_NAME_RE.fullmatch(name) or len(name) > HOSTNAME_MAX):
            raise UsageError(
                f"{where}: computer name {name!r} is not valid",
                hint="use letters, digits and '-', at most 63 characters, not starting or ending with '-'",
            )
        macs[mac] = number
        ips[address] = number
        entries.append(
            ListEntry(number, mac, name or None, f"{iface.ip}/{iface.network.prefixlen}", iface.network)
        )
    if not entries:
        raise UsageError("the IP list is empty", hint="one line per client: MAC,NAME,IP/PREFIX")
    return entries


def _check_host(iface: ipaddress.IPv4Interface | ipaddress.IPv6Interface, where: str) -> None:
    net = iface.network
    if isinstance(iface.ip, ipaddress.IPv4Address) and net.prefixlen <= 30:
        if iface.ip == net.network_address:
            raise UsageError(f"{where}: {iface} is the network address of {net}")
        if iface.ip == net.broadcast_address:
            raise UsageError(f"{where}: {iface} is the broadcast address of {net}")


def apply_ip_list(
    assignments: Sequence[Assignment], entries: Sequence[ListEntry], gateway: str | None
) -> list[Assignment]:
    """The plan's assignments with each client's address (and name, when the line has one) from
    the list. Every client must have a line; the gateway must be in each address's network."""
    by_mac = {e.mac: e for e in entries}
    gw = ipaddress.ip_address(gateway) if gateway else None
    out: list[Assignment] = []
    for a in assignments:
        entry = by_mac.get(a.mac)
        if entry is None:
            raise UsageError(
                f"client {a.mac} (number {a.n}) has no line in the IP list",
                hint="add a line MAC,NAME,IP for it, or leave it out of the deployment",
            )
        if gw is not None:
            network = entry.network or ipaddress.ip_interface(entry.ip).network
            if gw not in network:
                raise UsageError(
                    f"IP list line {entry.line}: gateway {gw} is not in the network {network} of {entry.ip}"
                )
            if str(gw) == entry.ip.split("/", 1)[0]:
                raise UsageError(f"IP list line {entry.line}: {entry.ip} is the gateway's address")
        out.append(Assignment(a.n, a.client_id, a.mac, entry.name or a.name, entry.ip))
    seen: set[str] = set()
    for a in out:
        if a.name and a.name in seen:
            raise UsageError(f"the computer name {a.name!r} is given to more than one client")
        if a.name:
            seen.add(a.name)
    return out


def unused_lines(entries: Sequence[ListEntry], assignments: Sequence[Assignment]) -> list[str]:
    chosen = {a.mac for a in assignments}
    return [
        f"IP list line {e.line} ({e.mac}) is for a client not in this deployment"
        for e in entries
        if e.mac not in chosen
    ]


def conflicts(
    assignments: Sequence[Assignment],
    enrolled: Sequence[PlanClient],
    addresses: Mapping[int, str],
    planned: Sequence[tuple[str, int, str, int]] = (),
) -> list[str]:
    """Planned addresses another enrolled client has now (``addresses``: client id -> its address),
    or that a deployment still running gives another client (``planned``: address, client id, MAC,
    deployment id)."""
    found: list[str] = []
    for a in assignments:
        address = a.ip.split("/", 1)[0] if a.ip else None
        for other_address, client_id, mac, deployment_id in planned:
            if address == other_address and client_id != a.client_id:
                found.append(
                    f"{address} (for {a.name or a.mac}) is given to client {mac} by deployment "
                    f"{deployment_id}, which is still running"
                )
    by_id = {c.client_id: c for c in enrolled}
    holders: dict[str, int] = {}
    for client_id, address in addresses.items():
        if address:
            holders.setdefault(address, client_id)
    for a in assignments:
        if not a.ip:
            continue
        address = a.ip.split("/", 1)[0]
        holder = holders.get(address)
        if holder is None or holder == a.client_id:
            continue
        other = by_id.get(holder)
        label = (
            f"{other.mac}{f' ({other.hostname})' if other and other.hostname else ''}"
            if other
            else str(holder)
        )
        found.append(f"{address} (for {a.name or a.mac}) is the current address of client {label}")
    return found


# -- Windows options ---------------------------------------------------------------------------


def drivers_root(data_dir: Path) -> Path:
    return data_dir / "drivers"


def driver_folder(data_dir: Path, name: str) -> Path:
    """``DATA/drivers/NAME``, checked: a plain name, an existing folder inside ``DATA/drivers``."""
    if not DRIVER_NAME_RE.match(name):
        raise UsageError(
            f"driver folder name {name!r} is not valid: "
            "expected letters, digits, '.', '_' or '-' (at most 128)"
        )
    root = drivers_root(data_dir)
    path = root / name
    try:
        inside = path.resolve().relative_to(root.resolve())
    except (ValueError, OSError):
        inside = None
    if inside is None or not path.is_dir():
        raise UsageError(
            f"driver folder {name!r} does not exist on the server (expected the folder {path})",
            hint=f"copy the INF driver packages into {root}/NAME; GET /api/drivers lists them",
        )
    return path


def count_infs(folder: Path) -> int:
    return sum(
        1 for p in folder.rglob("*") if p.suffix.lower() == ".inf" and p.is_file() and not p.is_symlink()
    )


def check_unattend(text: str) -> str:
    """``auto``, ``none`` or a well-formed XML document (no DTD: no entity expansion), kept as given
    but for leading white space (an XML declaration must come first)."""
    if text.strip() in UNATTEND_MODES:
        return text.strip()
    value = text.lstrip()
    size = len(value.encode())
    if size > MAX_UNATTEND:
        raise UsageError(f"the unattend.xml has {size} bytes; at most {MAX_UNATTEND} are accepted")
    if not value.startswith("<"):
        raise UsageError(
            f"unattend {value[:40]!r} is not auto, none or an unattend.xml document",
            hint="auto: fleetcast writes one (name, IP); none: leave the image's; or paste the XML",
        )
    parser = expat.ParserCreate()

    def no_dtd(*_: object) -> None:
        raise UsageError("the unattend.xml has a DTD (<!DOCTYPE ...>): not accepted")

    parser.StartDoctypeDeclHandler = no_dtd
    try:
        parser.Parse(value.encode(), True)
    except expat.ExpatError as exc:
        raise UsageError(f"the unattend.xml is not well-formed XML: {expat.errors.messages[exc.code]} "
                         f"at line {exc.lineno}, column {exc.offset + 1}") from exc  # fmt: skip
    return value


def check_windows(
    options: WindowsOptions, *, os_hint: str | None, data_dir: Path
) -> tuple[WindowsOptions, int | None]:
    """The options checked against the image's OS and the server's driver folders: (options, INF count)."""
    unattend = check_unattend(options.unattend)
    options = WindowsOptions(options.new_sid, options.reset_ids, options.drivers or None, unattend)
    windows_only = [
        what
        for what, given in (("a driver folder", options.drivers), ("an unattend.xml", unattend != "auto"))
        if given
    ]
    if windows_only and os_hint not in (None, "windows"):
        raise UsageError(
            f"{' and '.join(windows_only)} only appl{'y' if len(windows_only) > 1 else 'ies'} to Windows "
            f"images, and this image holds {os_hint}",
            hint="leave the Windows options at their defaults for this image",
        )
    infs = None
    if options.drivers:
        infs = count_infs(driver_folder(data_dir, options.drivers))
        if infs == 0:
            raise UsageError(
                f"driver folder {options.drivers!r} holds no .inf file",
                hint="a driver package is a folder with its .inf, .sys and .cat files",
            )
    return options, infs


def list_driver_folders(data_dir: Path) -> list[dict[str, Any]]:
    root = drivers_root(data_dir)
    if not root.is_dir():
        return []
    found: list[dict[str, Any]] = []
    for path in sorted(root.iterdir()):
        if path.is_dir() and DRIVER_NAME_RE.match(path.name):
            files = [p for p in path.rglob("*") if p.is_file() and not p.is_symlink()]  # as sent
            found.append(
                {
                    "name": path.name,
                    "infs": sum(1 for p in files if p.suffix.lower() == ".inf"),
                    "files": len(files),
                    "bytes": sum(p.stat().st_size for p in files),
                }
            )
    return found


# -- the seam the orchestrator calls --------------------------------------------------------------


@dataclass(frozen=True)
class Presets:
    """A deployment's IP list and Windows options, as ``DeploymentRequest.presets`` carries them."""

    ip_list: str | None = None
    windows: WindowsOptions = WindowsOptions()

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> Presets:
        raw = raw or {}
        return cls(ip_list=raw.get("ip_list"), windows=WindowsOptions.from_dict(raw.get("windows") or {}))

    def range_args(
        self, ip: str | None, gateway: str | None, dns: Sequence[str]
    ) -> tuple[str | None, str | None, Sequence[str]]:
        """What the range planner gets: everything, or nothing when the IP list gives the addresses."""
        if self.ip_list is None:
            return ip, gateway, dns
        if ip:
            raise UsageError(
                f"both an IP range ({ip}) and an IP list are given", hint="use one of them: --ip or --ip-list"
            )
        return None, None, ()

    def apply(
        self,
        assignments: list[Assignment],
        network: Network,
        *,
        gateway: str | None,
        dns: Sequence[str],
        enrolled: Sequence[PlanClient],
        addresses: Mapping[int, str],
        planned: Sequence[tuple[str, int, str, int]] = (),
        os_hint: str | None,
        data_dir: Path,
        max_name_length: int,
    ) -> tuple[list[Assignment], Network, dict[str, Any], dict[str, Any]]:
        """(assignments, network, what the plan shows, what the deployment stores)."""
        notes: list[str] = []
        if self.ip_list is not None:
            entries = parse_ip_list(self.ip_list)
            gw = _one_address(gateway, "gateway") if gateway else None
            servers = tuple(_one_address(d, "DNS server") for d in dns if d.strip())
            if len(servers) > MAX_DNS:
                raise UsageError(f"at most {MAX_DNS} DNS servers can be given, found {len(servers)}")
            assignments = apply_ip_list(assignments, entries, gw)
            for a in assignments:
                if a.name and len(a.name) > max_name_length:
                    raise UsageError(
                        f"the IP list gives {a.mac} the name {a.name!r} ({len(a.name)} characters); "
                        f"this image's computer names may have at most {max_name_length}"
                    )
            network = Network(tuple(a.ip for a in assignments if a.ip), gw, servers)
            notes += unused_lines(entries, assignments)
        windows, infs = check_windows(self.windows, os_hint=os_hint, data_dir=data_dir)
        shown = {
            "ip_source": "list" if self.ip_list is not None else ("range" if network.addresses else None),
            "conflicts": conflicts(assignments, enrolled, addresses, planned),
            "notes": notes,
            "windows": windows.summary(infs),
        }
        stored = {} if windows.is_default else {"windows": windows.to_dict(), "drivers_infs": infs}
        return assignments, network, shown, stored


def _one_address(text: str, what: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError as exc:
        raise UsageError(f"{what} {text!r} is not an IP address") from exc


def planned_addresses(s: Session) -> list[tuple[str, int, str, int]]:
    """(address, client id, MAC, deployment id) of every static address that a queued or running
    target of a running deployment will write."""
    from fleetcast.server.db import Deployment, Target

    rows = s.execute(
        select(Target.ip, Target.client_id, Target.mac, Target.deployment_id)
        .join(Deployment)
        .where(Target.ip.is_not(None), Target.state.in_(("queued", "running")))
        .where(Deployment.state.in_(("running", "cancelling")))
    ).all()
    return [(str(r.ip).split("/", 1)[0], r.client_id, r.mac, r.deployment_id) for r in rows]


def store(s: Session, deployment_id: int, stored: Mapping[str, Any]) -> None:
    """Keep a deployment's options (nothing when they are all defaults)."""
    if stored:
        s.add(OptionsRow(deployment_id=deployment_id, options=dict(stored)))


def stored_options(s: Session | None, deployment_id: int) -> dict[str, Any]:
    row = s.get(OptionsRow, deployment_id) if s is not None else None
    return dict(row.options) if row is not None else {}


def task_fields(s: Session | None, deployment_id: int) -> dict[str, Any]:
    """The Windows options as the agent's Task carries them (protocol.Task)."""
    return WindowsOptions.from_dict(stored_options(s, deployment_id).get("windows") or {}).to_dict()


def view_fields(s: Session | None, deployment_id: int) -> dict[str, Any]:
    """What ``GET /api/deployments/ID`` shows of the options."""
    stored = stored_options(s, deployment_id)
    windows = WindowsOptions.from_dict(stored.get("windows") or {})
    return {"windows": windows.summary(stored.get("drivers_infs"))}
