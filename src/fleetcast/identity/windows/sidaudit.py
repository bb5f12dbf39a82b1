"""The duplicate-SID audit: which Windows installations of the fleet share a machine SID.

``inventory(root)`` is what the agent reports for one Windows volume (read-only, from ``inspect``);
``duplicate_groups`` groups the fleet's reports by machine SID; ``render_text`` spells out the
consequence and the fix for each group (``fleetcast audit sids``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CONSEQUENCE = (
    "Windows 11 24H2+ and Server 2025 (updates of August/September 2025, KB5064081, KB5065426) refuse "
    "Kerberos and NTLM logons between machines that share a machine SID (LsaSrv event 6167)"
)
FIX = (
    "give each machine its own SID without re-imaging: `fleetcast personalize CLIENTS --new-sid` (the "
    "agents, booted from the network, rewrite the SID offline), or deploy them again (the agent writes "
    "a new random SID); on one machine by hand: `fleetcast windows personalize ROOT --new-sid` from the "
    "boot environment"
)


@dataclass(frozen=True)
class Installation:
    client: str
    partition: str
    machine_sid: str
    computer_name: str
    version: str
    domain: str | None
    mac: str = ""  # the client's MAC (GET /api/clients), for the fix command
    online: bool = True  # False: what the client reported when it was last seen


def inventory(root: Path) -> dict[str, Any]:
    """One Windows volume as the agent reports it: machine SID, computer name, version, domain."""
    from fleetcast.identity.windows.inspect import inspect  # hivex: only where volumes are read

    rep = inspect(root)
    current = rep.names[0] if rep.names else {}
    return {
        "machine_sid": rep.machine_sid_sam,
        "computer_name": current.get("computer_name") or rep.account_domain or "",
        "version": str(rep.version.get("description", "")),
        "domain": rep.domain.get("name") if rep.domain.get("joined") else None,
    }


@dataclass(frozen=True)
class Group:
    machine_sid: str
    installations: list[Installation]

    @property
    def command(self) -> str | None:
        """The personalize-only task that gives every machine of the group its own SID."""
        macs = sorted({i.mac for i in self.installations if i.mac})
        return f"fleetcast personalize {','.join(macs)} --new-sid" if macs else None


def duplicate_groups(installs: Iterable[Installation]) -> list[Group]:
    """Groups of two or more installations with the same machine SID, largest first."""
    by_sid: dict[str, list[Installation]] = {}
    for inst in installs:
        by_sid.setdefault(inst.machine_sid.upper(), []).append(inst)
    groups = [
        Group(sid, sorted(members, key=lambda i: (i.client, i.partition)))
        for sid, members in by_sid.items()
        if len(members) > 1
    ]
    return sorted(groups, key=lambda g: (-len(g.installations), g.machine_sid))


def to_json(
    groups: list[Group], seen: int | None = None, unreadable: Iterable[Unreadable] = ()
) -> dict[str, Any]:
    return {
        "installations": seen,
        "groups": [
            {
                "machine_sid": g.machine_sid,
                "installations": [asdict(i) for i in g.installations],
                "command": g.command,
            }
            for g in groups
        ],
        "consequence": CONSEQUENCE,
        "fix": FIX,
        "not_checked": [asdict(u) for u in unreadable],
    }


@dataclass(frozen=True)
class Unreadable:
    client: str
    partition: str
    error: str


def client_label(client: dict[str, Any]) -> str:
    """How the audit names a client of ``GET /api/clients``: id, hostname and MAC."""
    host = client.get("hostname") or "-"
    return f"client {client.get('id')} {host} ({client.get('mac')})"


def from_clients(clients: Iterable[dict[str, Any]]) -> tuple[list[Installation], list[Unreadable]]:
    """The installations the clients' inventories report (``windows`` of ``GET /api/clients``), and
    the Windows volumes an agent could not read."""
    installs: list[Installation] = []
    unreadable: list[Unreadable] = []
    for c in clients:
        for w in c.get("windows") or []:
            where = f"{w.get('disk')} partition {w.get('partition')}"
            if w.get("machine_sid"):
                installs.append(
                    Installation(
                        client_label(c), where, str(w["machine_sid"]), str(w.get("computer_name") or ""),
                        str(w.get("version") or ""), w.get("domain"), str(c.get("mac") or ""),
                        c.get("online") is not False,
                    )
                )  # fmt: skip
            else:
                unreadable.append(Unreadable(client_label(c), where, str(w.get("error") or "no machine SID")))
    return installs, unreadable


def render_text(groups: list[Group], seen: int, unreadable: Iterable[Unreadable] = ()) -> str:
    tail = [f"not checked: {u.client} {u.partition}: {u.error}" for u in unreadable]
    if not groups:
        return "\n".join([f"no shared machine SID among {seen} Windows installation(s)", *tail]) + "\n"
    out = [f"{len(groups)} machine SID(s) shared among {seen} Windows installation(s):"]
    for g in groups:
        out.append(f"{g.machine_sid}: {len(g.installations)} installations")
        for i in g.installations:
            dom = f", domain {i.domain}" if i.domain else ", workgroup"
            stale = "" if i.online else " [offline: as last reported]"
            out.append(f"  {i.client} {i.partition}: {i.computer_name} ({i.version}{dom}){stale}")
        if g.command:
            out.append(f"  fix: {g.command}")
    out += [f"consequence: {CONSEQUENCE}", f"fix: {FIX}", *tail]
    return "\n".join(out) + "\n"
