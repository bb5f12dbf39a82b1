"""Pure planning of a deployment: which clients, in which order, with which name and address.

Order: ``--clients all`` takes the enrolled clients sorted by primary MAC (the same room gives the
same plan every time); an explicit MAC list keeps the technician's order. Client number ``n``
counts from 1 in that order; names come from a pattern like ``LAB-{n:02}``; addresses are handed
out upwards from ``START/PREFIX``. Every check raises UsageError / ClientNotFound with an exact text.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fleetcast.errors import ClientNotFound, DiskError, FleetcastError, UsageError
from fleetcast.protocol import MAX_DNS, THEN_ACTIONS

logger = logging.getLogger(__name__)

HOSTNAME_MAX = 63
MAX_BATCH = 100_000
WINDOWS_NAME_MAX = 15
_MAC_RE = re.compile(r"[0-9a-f]{2}([:-]?)[0-9a-f]{2}(\1[0-9a-f]{2}){4}")
_NAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?")
_EXAMPLE_PATTERN = "--name 'LAB-{n:02}'"
_EXAMPLE_RANGE = "START/PREFIX such as 10.0.0.101/24"


@dataclass(frozen=True)
class PlanClient:
    """An enrolled client as the planner sees it. ``macs`` are all its MACs, primary first."""

    client_id: int
    mac: str
    macs: tuple[str, ...] = ()
    hostname: str = ""


@dataclass(frozen=True)
class Assignment:
    n: int
    client_id: int
    mac: str
    name: str | None
    ip: str | None


@dataclass(frozen=True)
class Network:
    addresses: tuple[str, ...]
    gateway: str | None
    dns: tuple[str, ...]


def normalize_mac(text: str) -> str:
    """``AA-BB-CC-DD-EE-FF`` / ``aabbccddeeff`` / ``aa:bb:..`` -> ``aa:bb:cc:dd:ee:ff``."""
    value = text.strip().lower()
    if not _MAC_RE.fullmatch(value):
        raise UsageError(f"client {text!r} is not a MAC address: expected aa:bb:cc:dd:ee:ff")
    digits = value.replace(":", "").replace("-", "")
    mac = ":".join(digits[i : i + 2] for i in range(0, 12, 2))
    if digits in ("000000000000", "ffffffffffff"):
        raise UsageError(f"MAC address {mac} cannot identify a machine (all-zero or broadcast)")
    if int(digits[:2], 16) & 1:
        raise UsageError(f"MAC address {mac} is a multicast address and cannot identify a machine")
    return mac


def parse_clients(spec: str | Sequence[str]) -> list[str] | None:
    """``all`` -> None; ``MAC[,MAC...]`` (or a list of MACs) -> normalized MACs, no repeats."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    items = [i.strip() for i in items if i.strip()]
    if items == ["all"]:
        return None
    if not items:
        raise UsageError("no clients selected", hint="use --clients all or --clients MAC[,MAC...]")
    macs: list[str] = []
    for item in items:
        mac = normalize_mac(item)
        if mac in macs:
            raise UsageError(f"client {mac} is listed twice")
        macs.append(mac)
    return macs


def select_clients(spec: str | Sequence[str], enrolled: Sequence[PlanClient]) -> list[PlanClient]:
    """The clients a deployment targets, in plan order."""
    macs = parse_clients(spec)
    if macs is None:
        if not enrolled:
            raise UsageError(
                "no clients are enrolled", hint="start the agents first; `fleetcast clients list` shows them"
            )
        return sorted(enrolled, key=lambda c: c.mac)
    # primary MACs first: a secondary MAC never shadows another client's identity
    by_mac: dict[str, PlanClient] = {c.mac: c for c in enrolled}
    for client in enrolled:
        for mac in client.macs:
            by_mac.setdefault(mac, client)
    chosen: list[PlanClient] = []
    for mac in macs:
        found = by_mac.get(mac)
        if found is None:
            raise ClientNotFound(
                f"client {mac} is not enrolled", hint="`fleetcast clients list` shows the enrolled clients"
            )
        if found in chosen:
            raise UsageError(f"client {mac} is listed twice (it is client {found.mac})")
        chosen.append(found)
    return chosen


MAX_WIDTH = 15
_FIELD = "only {n} or {n:0W} (W = 1-15) is allowed"
_WIDTH_RE = re.compile(r"n(?::0([1-9][0-9]?))?")


def parse_pattern(pattern: str) -> list[str | int]:
    """A name pattern as pieces: literal text (str) and client-number fields (int: the zero-padded
    width, 0 for none). Parsed by hand, never with ``str.format``: a width is at most 15 digits and
    nothing inside braces is ever evaluated."""
    pieces: list[str | int] = []
    text: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "}":
            raise UsageError(
                f"name pattern {pattern!r} is not valid: '}}' at position {i} has no '{{'",
                hint=_EXAMPLE_PATTERN,
            )
        if ch != "{":
            text.append(ch)
            i += 1
            continue
        end = pattern.find("}", i + 1)
        if end < 0:
            raise UsageError(
                f"name pattern {pattern!r} is not valid: '{{' at position {i} is not closed",
                hint=_EXAMPLE_PATTERN,
            )
        inner = pattern[i + 1 : end]
        m = _WIDTH_RE.fullmatch(inner)
        width = int(m.group(1)) if m is not None and m.group(1) else 0
        if m is None or width > MAX_WIDTH:
            raise UsageError(f"name pattern {pattern!r} uses {{{inner}}}; {_FIELD}", hint=_EXAMPLE_PATTERN)
        if text:
            pieces.append("".join(text))
            text = []
        pieces.append(width)
        i = end + 1
    if text:
        pieces.append("".join(text))
    return pieces


def render_names(pattern: str, count: int, *, max_length: int = HOSTNAME_MAX) -> list[str]:
    """Names 1..count from ``pattern``: literal text and ``{n}`` / ``{n:0W}`` (parse_pattern)."""
    pieces = parse_pattern(pattern)
    if not any(isinstance(p, int) for p in pieces) and count > 1:
        raise UsageError(
            f"name pattern {pattern!r} has no {{n}}: all {count} clients would get the same name",
            hint=_EXAMPLE_PATTERN,
        )
    names: list[str] = []
    seen: set[str] = set()
    for n in range(1, count + 1):
        name = "".join(p if isinstance(p, str) else str(n).zfill(p) for p in pieces)
        if not _NAME_RE.fullmatch(name) or len(name) > HOSTNAME_MAX:
            raise UsageError(
                f"name pattern {pattern!r} gives {name!r}, which is not a valid computer name",
                hint="use letters, digits and '-', at most 63 characters, not starting or ending with '-'",
            )
        if len(name) > max_length:
            raise UsageError(
                f"name pattern {pattern!r} gives {name!r} ({len(name)} characters); "
                f"this image's computer names may have at most {max_length}"
            )
        if name in seen:
            raise UsageError(f"name pattern {pattern!r} gives the name {name!r} to more than one client")
        seen.add(name)
        names.append(name)
    return names


def _address(text: str, what: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError as exc:
        raise UsageError(f"{what} {text!r} is not an IP address") from exc


def allocate_ips(ip_range: str | None, count: int, gateway: str | None, dns: Sequence[str]) -> Network:
    """``count`` addresses upwards from ``START/PREFIX``, checked against the network's bounds and
    the gateway; ``gateway`` and ``dns`` need a range (they configure static addressing)."""
    given = [d for d in dns if d.strip()]
    if len(given) > MAX_DNS:
        raise UsageError(f"at most {MAX_DNS} DNS servers can be given, found {len(given)}")
    dns_servers = tuple(str(_address(d, "DNS server")) for d in given)
    if ip_range is None or not ip_range.strip():
        if gateway:
            raise UsageError(
                f"a gateway ({gateway}) only applies to static addresses", hint=f"give --ip {_EXAMPLE_RANGE}"
            )
        if dns_servers:
            raise UsageError(
                f"DNS servers ({', '.join(dns_servers)}) only apply to static addresses",
                hint=f"give --ip {_EXAMPLE_RANGE}",
            )
        return Network((), None, ())
    text = ip_range.strip()
    if "/" not in text:
        raise UsageError(f"IP range {ip_range!r} has no prefix length: expected {_EXAMPLE_RANGE}")
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError as exc:
        raise UsageError(f"IP range {ip_range!r} is not valid: expected {_EXAMPLE_RANGE}") from exc
    net, start = iface.network, iface.ip
    v4 = isinstance(start, ipaddress.IPv4Address)
    check_network(text, net, start)
    if v4 and net.prefixlen > 30:
        raise UsageError(f"IP range {text}: prefix /{net.prefixlen} is too long, expected /30 or shorter")
    if v4 and start == net.network_address:
        raise UsageError(
            f"IP range {text} starts at the network address {start}",
            hint=f"start at {start + 1}/{net.prefixlen}",
        )
    last_usable = net.broadcast_address - 1 if v4 else net.broadcast_address
    if v4 and start == net.broadcast_address:
        raise UsageError(f"IP range {text} starts at the broadcast address {start}")
    room = int(last_usable) - int(start) + 1
    if room < count:
        raise UsageError(
            f"IP range {text} has room for {room} client{'s' if room != 1 else ''} "
            f"({start}-{last_usable}) but {count} are selected",
            hint="start lower or use a shorter prefix",
        )
    addresses = [start + i for i in range(count)]
    gw = None
    if gateway:
        gw_addr = _address(gateway, "gateway")
        if gw_addr not in net:
            raise UsageError(f"gateway {gw_addr} is not in the network {net} of the IP range")
        if gw_addr in addresses:
            raise UsageError(
                f"IP range {text} for {count} clients ({addresses[0]}-{addresses[-1]}) "
                f"includes the gateway {gw_addr}",
                hint="start after the gateway or give another --gateway",
            )
        gw = str(gw_addr)
    return Network(tuple(f"{a}/{net.prefixlen}" for a in addresses), gw, dns_servers)


_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")


def check_network(
    text: str,
    net: ipaddress.IPv4Network | ipaddress.IPv6Network,
    start: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    """Refuse ranges no machine can be given statically (issue 12 item 12): the zone of a scoped
    address would be lost, and ``::/0``, multicast, loopback, "this network", link-local and
    reserved ranges are not a LAN's addresses."""
    zone = text.partition("%")[2].partition("/")[0] or (
        start.scope_id if isinstance(start, ipaddress.IPv6Address) else None
    )
    if zone:
        raise UsageError(
            f"IP range {text} has a zone (%{zone}); a static address is set without one",
            hint="give the address without %ZONE, and not a link-local (fe80::/10) one",
        )
    if net.prefixlen == 0:
        raise UsageError(f"IP range {text} is the whole address space (/0): give the LAN's prefix")
    kinds = (
        ("a multicast", net.is_multicast),
        ("the loopback", net.is_loopback),
        ("a link-local", net.is_link_local),
        ("the unspecified", net.is_unspecified),
        ('the "this network"', isinstance(net, ipaddress.IPv4Network) and net.subnet_of(_THIS_NETWORK)),
        ("a reserved", net.is_reserved),
    )
    for kind, found in kinds:
        if found:
            raise UsageError(
                f"IP range {text} is in {kind} range ({net}); clients cannot be given those addresses",
                hint=f"give an address of the clients' LAN, e.g. {_EXAMPLE_RANGE}",
            )


def check_assignments(assignments: Sequence[Assignment], network: Network, os_hint: str | None) -> None:
    """The final plan, whatever gave its names and addresses (pattern, IP list, registrations):
    every name passes the image's own personalizer check (what the agent would refuse after the
    disk is written), no address twice, every address a usable one."""
    check = _name_check(os_hint)
    seen_ips: dict[str, str] = {}
    for a in assignments:
        if a.name is not None:
            try:
                check(a.name)
            except FleetcastError as exc:
                raise UsageError(
                    f"client {a.mac} would be named {a.name!r}, which the image's personalizer refuses: "
                    f"{exc.message}",
                    hint=exc.hint,
                ) from exc
        if a.ip is not None:
            address = a.ip.partition("/")[0]
            if address in seen_ips:
                raise UsageError(
                    f"clients {seen_ips[address]} and {a.mac} would both get the address {address}"
                )
            seen_ips[address] = a.mac
            try:
                iface = ipaddress.ip_interface(a.ip)
            except ValueError as exc:
                raise UsageError(
                    f"client {a.mac} would get {a.ip!r}, which is not an address/prefix"
                ) from exc
            check_network(a.ip, iface.network, iface.ip)
    for dns in network.dns:
        addr = ipaddress.ip_address(dns)
        if addr.is_multicast or addr.is_unspecified or addr.is_reserved:
            raise UsageError(f"DNS server {dns} is not a usable address")


NETWORK_STACKS = ("netplan", "networkmanager", "systemd-networkd", "ifupdown")  # identity.linux.network


def check_request(batch: int, then: str, disk: str) -> None:
    """What every deployment-like request checks first: its batch, post action and disk rule."""
    from fleetcast.disk.rules import parse_rule

    check_batch(batch)
    check_then(then)
    try:
        parse_rule(disk)
    except DiskError as exc:
        raise UsageError(exc.message, hint=exc.hint) from exc


def check_static_ip(
    assignments: Sequence[Assignment], image: str, os_info: Sequence[Mapping[str, Any]]
) -> None:
    """Refuse static addresses for an image whose network stack cannot take one -- what the agent's
    personalizer would refuse after the whole disk is written (identity.linux.network.require_stack).
    ``os_info``: what capture recorded per partition; a Linux root records ``network_stack`` (one of
    NETWORK_STACKS, or None: none fleetcast can configure). Images that recorded nothing (captured
    before fleetcast recorded it, or Windows, whose personalizer always can) are not refused here."""
    given = [a for a in assignments if a.ip is not None]
    linux = [i for i in os_info if i.get("os") == "linux" and "network_stack" in i]
    if not given or not linux or any(i["network_stack"] in NETWORK_STACKS for i in linux):
        return
    raise UsageError(
        f"image {image!r} uses no network stack fleetcast can configure (netplan, NetworkManager, "
        f"systemd-networkd, ifupdown), so client {given[0].mac} cannot get the static IP {given[0].ip}",
        hint="deploy without --ip or an IP list (DHCP), or install one of them in the golden image "
        "and capture it again",
    )


def _name_check(os_hint: str | None) -> Callable[[str], object]:
    """The computer-name check of the image's personalizer (lazily imported: identity code)."""
    if os_hint == "windows":
        from fleetcast.identity.windows.system import check_name

        return check_name
    from fleetcast.identity.linux.personalizer import check_hostname

    return check_hostname


def check_batch(batch: int) -> int:
    if batch < 1:
        raise UsageError(f"batch must be at least 1, found {batch}")
    if batch > MAX_BATCH:  # more than any room holds; also keeps it inside the database's integer column
        raise UsageError(f"batch must be at most {MAX_BATCH}, found {batch}")
    return batch


def check_then(then: str) -> str:
    if then not in THEN_ACTIONS:
        raise UsageError(f"post action {then!r} is not one of {', '.join(THEN_ACTIONS)}")
    return then


def make_plan(
    clients: Sequence[PlanClient],
    *,
    name_pattern: str | None,
    ip_range: str | None,
    gateway: str | None,
    dns: Sequence[str],
    max_name_length: int = HOSTNAME_MAX,
) -> tuple[list[Assignment], Network]:
    """Assign names and addresses to ``clients`` (already in plan order)."""
    names: list[str | None] = (
        list(render_names(name_pattern, len(clients), max_length=max_name_length))
        if name_pattern
        else [None] * len(clients)
    )
    network = allocate_ips(ip_range, len(clients), gateway, dns)
    ips: list[str | None] = list(network.addresses) if network.addresses else [None] * len(clients)
    plan = [
        Assignment(n=i + 1, client_id=c.client_id, mac=c.mac, name=names[i], ip=ips[i])
        for i, c in enumerate(clients)
    ]
    return plan, network
