"""``fleetcast clients list``: the clients the server knows (inventory, online, what they are doing);
``fleetcast clients revoke ID``: forget a client's credential (its agent is refused; the machine may
enroll again, which is how an admin approves a re-enrollment)."""

from __future__ import annotations

import argparse
import logging

logger = logging.getLogger(__name__)


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], parent: argparse.ArgumentParser
) -> None:
    from fleetcast.cli.deploy import add_server_options

    p = sub.add_parser("clients", parents=[parent], help="enrolled clients")
    cmds = p.add_subparsers(dest="clients_command", metavar="COMMAND", required=True)
    ls = cmds.add_parser("list", parents=[parent], help="list the enrolled clients")
    add_server_options(ls)
    ls.add_argument("--json", action="store_true", help='print {"clients": [...]} on stdout')
    ls.set_defaults(func=_list)
    rv = cmds.add_parser(
        "revoke",
        parents=[parent],
        help="forget a client's credential: its agent is refused and the machine may enroll again",
    )
    add_server_options(rv)
    rv.add_argument("client_id", type=int, metavar="ID", help="the client's id (fleetcast clients list)")
    rv.set_defaults(func=_revoke)


def _revoke(args: argparse.Namespace) -> int:
    from fleetcast.cli.common import printable
    from fleetcast.cli.deploy import api_client

    with api_client(args) as api:
        c = api.post(f"/api/clients/{args.client_id}/revoke")
    print(printable(f"client {c['id']} ({c['mac']}): credential revoked; it may enroll again"))
    return 0


def _disks(disks: list[dict[str, object]]) -> str:
    from fleetcast.progress import human_bytes

    parts = []
    for d in disks:
        size = d.get("size")
        parts.append(f"{d.get('path')} {human_bytes(size) if isinstance(size, int) else '?'}")
    return ", ".join(parts) or "-"


def _sids(windows: list[dict[str, object]], shared: set[str]) -> str:
    """The machine SIDs of a client's Windows installations; "(shared)" when another has it too."""
    parts = []
    for w in windows:
        sid = str(w.get("machine_sid") or "")
        parts.append(f"{sid} (shared)" if sid.upper() in shared else sid or "unreadable")
    return ", ".join(parts) or "-"


def _list(args: argparse.Namespace) -> int:
    from fleetcast.cli.common import print_json, print_table
    from fleetcast.cli.deploy import api_client

    with api_client(args) as api:
        clients = api.get("/api/clients")["clients"]
    if args.json:
        print_json({"clients": clients})
        return 0
    from fleetcast.identity.windows.sidaudit import duplicate_groups, from_clients

    shared = {g.machine_sid for g in duplicate_groups(from_clients(clients)[0])}
    rows = [
        [
            str(c["id"]),
            c["mac"],
            c.get("hostname") or "-",
            c.get("address") or "-",
            "yes" if c.get("online") else "no",
            c["state"]
            if c.get("deployment_id") is None
            else f"{c['state']} (deployment {c['deployment_id']})",
            _disks(c.get("disks") or []),
            _sids(c.get("windows") or [], shared),
        ]
        for c in clients
    ]
    print_table(["id", "mac", "hostname", "address", "online", "state", "disks", "machine SID"], rows)
    return 0
