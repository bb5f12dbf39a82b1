"""``fleetcast audit sids [--json]``: the groups of clients whose Windows installations share a
machine SID (from the agents' inventories), with the consequence and the fix (issue 13).

Exit status 1 when a SID is shared, so a script or a monitoring check can act on it.
"""

from __future__ import annotations

import argparse
import logging

logger = logging.getLogger(__name__)


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], parent: argparse.ArgumentParser
) -> None:
    from fleetcast.cli.deploy import add_server_options

    p = sub.add_parser("audit", parents=[parent], help="fleet-wide checks")
    cmds = p.add_subparsers(dest="audit_command", metavar="COMMAND", required=True)
    sids = cmds.add_parser(
        "sids",
        parents=[parent],
        help="clients whose Windows installations share a machine SID (exit status 1 when any do)",
        description="Lists the groups of Windows installations, on the disks the agents reported, that "
        "share a machine SID: Windows 11 24H2+ and Server 2025 refuse Kerberos/NTLM between them.",
    )
    add_server_options(sids)
    sids.add_argument(
        "--json",
        action="store_true",
        help='print {"installations", "groups", "consequence", "fix", "not_checked"} on stdout',
    )
    sids.set_defaults(func=_sids)


def _sids(args: argparse.Namespace) -> int:
    from fleetcast.cli.common import print_json, printable
    from fleetcast.cli.deploy import api_client
    from fleetcast.identity.windows.sidaudit import duplicate_groups, from_clients, render_text, to_json

    with api_client(args) as api:
        clients = api.get("/api/clients")["clients"]
    installs, unreadable = from_clients(clients)
    groups = duplicate_groups(installs)
    if args.json:
        print_json(to_json(groups, len(installs), unreadable))
    else:
        print(printable(render_text(groups, len(installs), unreadable), newlines=True), end="")
    return 1 if groups else 0
