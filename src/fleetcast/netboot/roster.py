"""Clients registered by MAC before their first boot: one at a time or from a CSV (MAC, name, IP).

Pure parsing with exact messages; the server checks the result against what it already holds
(``fleetcast.server.boot``). A CSV is all or nothing: every bad line is reported with its line number
and nothing is imported while any line is bad.

CSV: ``MAC,name,IP`` per line; name and IP may be empty; an optional fourth column is the boot method
(``auto``, ``secureboot``); IP is ``A.B.C.D`` or ``A.B.C.D/PREFIX`` (default /24); a first line whose
first cell is ``mac`` (any case) is a header; blank
lines and lines starting with ``#`` are skipped.
"""

from __future__ import annotations

import csv
import io
import ipaddress
import re
from dataclasses import dataclass

from fleetcast.errors import UsageError
from fleetcast.server.plan import HOSTNAME_MAX, normalize_mac

MAX_CSV_BYTES = 4 << 20
MAX_LINES = 100_000
BOOT_CHOICES = ("auto", "secureboot")
_NAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?")


@dataclass(frozen=True)
class Registration:
    mac: str
    name: str | None = None
    ip: str | None = None
    boot: str = "auto"
    line: int = 0  # where it came from in a CSV (0: not from a file)

    def to_dict(self) -> dict[str, str | None]:
        return {"mac": self.mac, "name": self.name, "ip": self.ip, "boot": self.boot}


class RosterError(UsageError):
    """Bad registrations; ``problems`` lists every one (``line N: ...``)."""

    def __init__(self, problems: list[str], *, source: str = "") -> None:
        head = f"{source}: " if source else ""
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__(
            f"{head}{count}, nothing imported:\n" + "\n".join(problems),
            hint="fix the lines named and import the whole file again",
        )
        self.problems = problems


def check_mac(mac: str) -> str:
    if not mac.strip():
        raise UsageError("the MAC is empty: expected aa:bb:cc:dd:ee:ff")
    try:
        return normalize_mac(mac)
    except UsageError as exc:
        if "is not a MAC address" in exc.message:
            raise UsageError(f"{mac!r} is not a MAC address: expected aa:bb:cc:dd:ee:ff") from exc
        raise


def check_name(name: str) -> str:
    value = name.strip()
    if not _NAME_RE.fullmatch(value) or len(value) > HOSTNAME_MAX:
        raise UsageError(
            f"name {name!r} is not a valid computer name (letters, digits and '-', at most "
            f"{HOSTNAME_MAX}, not starting or ending with '-')"
        )
    return value


def check_ip(ip: str) -> str:
    """``A.B.C.D`` or ``A.B.C.D/PREFIX`` (a host address of its network)."""
    value = ip.strip()
    try:
        iface = ipaddress.IPv4Interface(value)
    except (ipaddress.AddressValueError, ipaddress.NetmaskValueError) as exc:
        raise UsageError(f"IP address {ip!r} is not an IPv4 address (A.B.C.D or A.B.C.D/PREFIX)") from exc
    addr, net = iface.ip, iface.network
    if (
        addr.is_unspecified
        or addr.is_multicast
        or addr.is_loopback
        or addr == ipaddress.IPv4Address("255.255.255.255")
    ):
        raise UsageError(f"IP address {ip!r} cannot be a client's address")
    if "/" in value:
        if net.prefixlen > 30:
            raise UsageError(
                f"IP address {ip!r}: prefix /{net.prefixlen} is too long, expected /30 or shorter"
            )
        if addr in (net.network_address, net.broadcast_address):
            raise UsageError(f"IP address {ip!r} is the network or broadcast address of {net}")
    return value


def check_boot(boot: str) -> str:
    value = boot.strip().lower() or "auto"
    if value not in BOOT_CHOICES:
        raise UsageError(f"boot method {boot!r} is not one of {', '.join(BOOT_CHOICES)}")
    return value


def registration(
    mac: str, name: str | None = None, ip: str | None = None, boot: str = "auto", *, line: int = 0
) -> Registration:
    """One checked registration (UsageError with the exact problem)."""
    return Registration(
        mac=check_mac(mac),
        name=check_name(name) if name and name.strip() else None,
        ip=check_ip(ip) if ip and ip.strip() else None,
        boot=check_boot(boot),
        line=line,
    )


def duplicates(entries: list[Registration]) -> list[str]:
    """``line N: MAC/name/IP X is also on line M`` for every repeat inside one batch."""
    problems: list[str] = []
    for what in ("mac", "name", "ip"):
        first: dict[str, int] = {}
        for e in entries:
            value = getattr(e, what)
            if value is None:
                continue
            key = value.lower()
            if key in first:
                label = "MAC" if what == "mac" else "IP" if what == "ip" else "name"
                problems.append(f"line {e.line}: {label} {value} is also on line {first[key]}")
            else:
                first[key] = e.line
    return problems


def parse_csv(text: str, *, source: str = "CSV") -> list[Registration]:
    """Every registration of a CSV text, or RosterError listing every bad line."""
    if len(text.encode()) > MAX_CSV_BYTES:
        raise UsageError(f"{source} is larger than {MAX_CSV_BYTES >> 20} MiB")
    if "\x00" in text:
        raise UsageError(f"{source} contains a NUL byte: is it a text file?")
    entries: list[Registration] = []
    problems: list[str] = []
    rows = csv.reader(io.StringIO(text.lstrip("\ufeff")))
    try:
        for number, row in enumerate(rows, start=1):
            if number > MAX_LINES:
                raise UsageError(f"{source} has more than {MAX_LINES} lines")
            cells = [c.strip() for c in row]
            if not cells or not any(cells) or cells[0].startswith("#"):
                continue
            if number == 1 and cells[0].lower() == "mac":
                continue
            if len(cells) > 4:
                problems.append(f"line {number}: {len(cells)} columns, expected MAC,name,IP")
                continue
            cells += [""] * (4 - len(cells))
            try:
                entries.append(registration(cells[0], cells[1], cells[2], cells[3], line=number))
            except UsageError as exc:
                problems.append(f"line {number}: {exc.message}")
    except csv.Error as exc:
        problems.append(f"line {rows.line_num}: {exc}")
    problems += duplicates(entries)
    if problems:
        problems.sort(key=lambda p: int(p.split(":", 1)[0].removeprefix("line ")))
        raise RosterError(problems, source=source)
    if not entries:
        raise UsageError(f"{source} holds no registrations", hint="one line per client: MAC,name,IP")
    return entries
