"""``fleetcast clients list``: the clients the server knows (inventory, online, what they are doing);
``fleetcast clients revoke ID``: forget a client's credential (its agent is refused; the machine may
enroll again, which is how an admin approves a re-enrollment); ``fleetcast clients delete ID``: forget
the client entirely (not while it is in a running deployment);
``fleetcast clients register MAC [--name N] [--ip IP] [--boot auto|secureboot]`` and
``fleetcast clients import FILE`` (CSV MAC,name,IP): machines registered before their first network boot
(docs/boot-chain.md); ``clients registrations`` lists them, ``clients unregister MAC`` forgets one."""

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
    rm = cmds.add_parser(
        "delete",
        parents=[parent],
        help="forget a client entirely (refused while it is in a running deployment); it enrolls anew",
    )
    add_server_options(rm)
    rm.add_argument("client_id", type=int, metavar="ID", help="the client's id (fleetcast clients list)")
    rm.set_defaults(func=_delete)
    _register_registrations(cmds, parent)


def _register_registrations(
    cmds: argparse._SubParsersAction[argparse.ArgumentParser], parent: argparse.ArgumentParser
) -> None:
    from fleetcast.cli.deploy import add_server_options

    rg = cmds.add_parser(
        "register", parents=[parent], help="register a machine by MAC before its first network boot"
    )
    add_server_options(rg)
    rg.add_argument("mac", metavar="MAC", help="the MAC it network-boots from, e.g. 52:54:00:12:34:56")
    rg.add_argument("--name", help="computer name a deployment gives it (when the deployment has no --name)")
    rg.add_argument("--ip", help="its address, A.B.C.D[/PREFIX] (used when the deployment has no --ip)")
    rg.add_argument(
        "--boot",
        default="auto",
        choices=("auto", "secureboot"),
        help="secureboot: a UEFI machine with Secure Boot on gets shim + signed GRUB (DHCP cannot tell)",
    )
    rg.add_argument("--replace", action="store_true", help="replace this MAC's registration")
    rg.add_argument("--json", action="store_true", help="print the registration as JSON")
    rg.set_defaults(func=_register_one)
    im = cmds.add_parser(
        "import", parents=[parent], help="register machines from a CSV file: MAC,name,IP (all or nothing)"
    )
    add_server_options(im)
    im.add_argument("file", metavar="FILE", help="CSV: MAC,name,IP[,boot] per line; header line optional")
    im.add_argument("--json", action="store_true", help="print the registrations as JSON")
    im.set_defaults(func=_import)
    rl = cmds.add_parser("registrations", parents=[parent], help="list the registered MACs")
    add_server_options(rl)
    rl.add_argument("--json", action="store_true", help='print {"registrations": [...]}')
    rl.set_defaults(func=_registrations)
    ur = cmds.add_parser("unregister", parents=[parent], help="forget a registered MAC")
    add_server_options(ur)
    ur.add_argument("mac", metavar="MAC")
    ur.set_defaults(func=_unregister)


def _register_one(args: argparse.Namespace) -> int:
    from fleetcast.cli.common import print_json, printable
    from fleetcast.cli.deploy import api_client
    from fleetcast.netboot import roster

    entry = roster.registration(args.mac, args.name, args.ip, args.boot)  # exact errors before any request
    body = {**entry.to_dict(), "replace": bool(args.replace)}
    with api_client(args) as api:
        r = api.post("/api/registrations", body)
    if args.json:
        print_json(r)
    else:
        print(
            printable(
                f"registered {r['mac']}: name {r['name'] or '-'}, IP {r['ip'] or '-'}, boot {r['boot']}"
            )
        )
    return 0


def _import(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fleetcast.cli.common import print_json, printable
    from fleetcast.cli.deploy import api_client
    from fleetcast.errors import UsageError
    from fleetcast.netboot import roster

    path = Path(args.file)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path} is not UTF-8 text (byte {exc.start})") from exc
    roster.parse_csv(text, source=str(path))  # every bad line, before anything is sent
    with api_client(args) as api:
        r = api.post("/api/registrations/import", {"csv": text, "source": str(path)})
    if args.json:
        print_json(r)
    else:
        print(printable(f"{path}: registered {r['imported']} machine(s)"))
    return 0


def _registrations(args: argparse.Namespace) -> int:
    from fleetcast.cli.common import print_json, print_table
    from fleetcast.cli.deploy import api_client

    with api_client(args) as api:
        regs = api.get("/api/registrations")["registrations"]
    if args.json:
        print_json({"registrations": regs})
        return 0
    rows = [[r["mac"], r["name"] or "-", r["ip"] or "-", r["boot"]] for r in regs]
    print_table(["mac", "name", "ip", "boot"], rows)
    return 0


def _unregister(args: argparse.Namespace) -> int:
    from fleetcast.cli.common import printable
    from fleetcast.cli.deploy import api_client
    from fleetcast.server.plan import normalize_mac

    with api_client(args) as api:
        r = api.request("DELETE", f"/api/registrations/{normalize_mac(args.mac)}")
    print(printable(f"unregistered {r['mac']}"))
    return 0


def _revoke(args: argparse.Namespace) -> int:
    from fleetcast.cli.common import printable
    from fleetcast.cli.deploy import api_client

    with api_client(args) as api:
        c = api.post(f"/api/clients/{args.client_id}/revoke")
    print(printable(f"client {c['id']} ({c['mac']}): credential revoked; it may enroll again"))
    return 0


def _delete(args: argparse.Namespace) -> int:
    from fleetcast.cli.common import printable
    from fleetcast.cli.deploy import api_client

    with api_client(args) as api:
        c = api.delete(f"/api/clients/{args.client_id}")
    print(printable(f"client {c['id']} ({c['mac']}, {c['hostname'] or 'no hostname'}): deleted"))
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
