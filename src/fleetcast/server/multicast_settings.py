"""Server-wide multicast settings: the config file's ``[multicast]`` table (docs/multicast.md#settings).

    [multicast]
    multicast_from = 4          # --transport auto: multicast when a batch has at least K clients
    min_clients = 0             # default --min-clients (0: the batch's size)
    max_wait = 60               # default --max-wait, seconds
    drop_below_mbit = 0         # default --drop-below, Mbit/s (0: never drop)
    group_base = "239.255.42.0" # sessions use groups group_base+1 ... group_base+sessions
    port_base = 9000            # ... and udpcast port pairs port_base, port_base+2, ...
    sessions = 250              # how many groups/port pairs are handed out before they are reused
    repair = "sooner"           # late joiners / missing packs: next cycle or HTTP, whichever is sooner
                                # (by estimate); "cycle" or "http" force one
    max_cycles = 3              # cycles per batch (the first stream included); after that HTTP

A deployment's own options (``--min-clients`` …) win over these defaults.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fleetcast.errors import UsageError
from fleetcast.server.configtables import check_table
from fleetcast.server.multicast_repair import REPAIR_MODES

TABLE_KEYS = (
    "multicast_from", "min_clients", "max_wait", "drop_below_mbit", "group_base", "port_base", "sessions",
    "repair", "max_cycles",
)  # fmt: skip


@dataclass(frozen=True)
class MulticastSettings:
    multicast_from: int = 4
    min_clients: int | None = None  # None: the batch's size
    max_wait: float = 60.0
    drop_below: float = 0.0  # bytes/s
    group_base: str = "239.255.42.0"
    port_base: int = 9000
    sessions: int = 250
    repair: str = "sooner"  # sooner | cycle | http (server/multicast_repair.py)
    max_cycles: int = 3

    def group(self, slot: int) -> str:
        """The multicast group of session slot ``slot`` (0 ... sessions-1)."""
        return str(ipaddress.IPv4Address(self.group_base) + 1 + slot % self.sessions)

    def port(self, slot: int) -> int:
        """udpcast's port base of session slot ``slot`` (it uses this port and the next)."""
        return self.port_base + 2 * (slot % self.sessions)


def _number(table: Mapping[str, Any], key: str, source: str, *, low: float, high: float) -> float | None:
    if key not in table:
        return None
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise UsageError(
            f"{source}: multicast.{key} must be a number from {low:g} to {high:g}, found {value!r}"
        )
    return float(value)


def _integer(table: Mapping[str, Any], key: str, source: str, *, low: int, high: int) -> int | None:
    value = _number(table, key, source, low=low, high=high)
    if value is not None and value != int(value):
        raise UsageError(f"{source}: multicast.{key} must be a whole number, found {table[key]!r}")
    return None if value is None else int(value)


def from_table(table: Mapping[str, Any] | None, source: str = "config file") -> MulticastSettings:
    """The ``[multicast]`` table as settings; UsageError naming the key for anything not understood."""
    if table is None:
        return MulticastSettings()
    table = check_table("multicast", table, TABLE_KEYS, source)
    d = MulticastSettings()
    group = table.get("group_base", d.group_base)
    try:
        base = ipaddress.IPv4Address(group) if isinstance(group, str) else None
    except ValueError:
        base = None
    sessions = _integer(table, "sessions", source, low=1, high=4096) or d.sessions
    if base is None or not base.is_multicast or not (base + sessions).is_multicast:
        raise UsageError(
            f"{source}: multicast.group_base must be an IPv4 multicast address with room for {sessions} "
            f"groups after it, found {group!r}",
            hint='for example group_base = "239.255.42.0" (administratively scoped, RFC 2365)',
        )
    port_base = _integer(table, "port_base", source, low=1024, high=65535 - 2 * sessions)
    min_clients = _integer(table, "min_clients", source, low=0, high=100_000)
    max_wait = _number(table, "max_wait", source, low=0, high=86_400)
    drop = _number(table, "drop_below_mbit", source, low=0, high=1e6)
    repair = table.get("repair", d.repair)
    if repair not in REPAIR_MODES:
        raise UsageError(
            f"{source}: multicast.repair must be one of {', '.join(REPAIR_MODES)}, found {repair!r}"
        )
    cycles = _integer(table, "max_cycles", source, low=1, high=100)
    return MulticastSettings(
        multicast_from=_integer(table, "multicast_from", source, low=1, high=100_000) or d.multicast_from,
        min_clients=min_clients or None,
        max_wait=d.max_wait if max_wait is None else max_wait,
        drop_below=0.0 if drop is None else drop * 1e6 / 8,
        group_base=str(base),
        port_base=d.port_base if port_base is None else port_base,
        sessions=sessions,
        repair=str(repair),
        max_cycles=d.max_cycles if cycles is None else cycles,
    )
