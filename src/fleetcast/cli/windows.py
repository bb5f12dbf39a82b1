"""``fleetcast windows``: inspect, personalize, unattend, doctor -- offline Windows identity."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fleetcast.identity.windows.unattend import StaticIp


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], parent: argparse.ArgumentParser
) -> None:
    group = sub.add_parser(
        "windows",
        parents=[parent],
        help="personalize and diagnose Windows volumes offline",
        description="Sysprep's job done offline: new machine SID, name, IDs, IP, drivers, unattend.xml.",
    )
    wsub = group.add_subparsers(dest="windows_command", metavar="SUBCOMMAND")
    group.set_defaults(func=lambda args: _help(group))

    p = wsub.add_parser(
        "inspect", parents=[parent], help="show version, names, SIDs, users, state of a volume"
    )
    p.add_argument(
        "root", type=Path, metavar="ROOT", help="mounted Windows volume (holds Windows/System32/config)"
    )
    p.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    p.set_defaults(func=cmd_inspect)

    p = wsub.add_parser(
        "personalize", parents=[parent], help="give a deployed Windows volume its own identity"
    )
    p.add_argument(
        "root", type=Path, metavar="ROOT", help="mounted Windows volume (holds Windows/System32/config)"
    )
    p.add_argument(
        "--name", required=True, help="computer name (NetBIOS: at most 15 letters, digits, hyphens)"
    )
    p.add_argument("--new-sid", action="store_true", help="give the machine a new random SID")
    p.add_argument("--sid-seed", metavar="S", help="new SID derived from S (reproducible; implies --new-sid)")
    p.add_argument(
        "--sid", metavar="SID", help="this exact new machine SID S-1-5-21-a-b-c (implies --new-sid)"
    )
    p.add_argument("--reset-ids", action="store_true", help="new MachineGuid; delete WSUS and SQM client IDs")
    p.add_argument("--ip", metavar="CIDR", help="static IPv4 address, e.g. 10.0.0.101/24 (needs --mac)")
    p.add_argument("--gateway", metavar="G", help="default gateway for --ip")
    p.add_argument(
        "--dns", metavar="D", action="append", default=[], help="DNS server (repeat or comma-list)"
    )
    p.add_argument("--mac", metavar="MAC", help="the adapter that gets --ip, e.g. 52:54:00:12:34:56")
    p.add_argument("--drivers", type=Path, metavar="DIR", help="folder of INF driver packages to add")
    p.add_argument(
        "--unattend",
        default="auto",
        metavar="auto|FILE|none",
        help="auto: write Windows/Panther/unattend.xml when the image is generalized (default); "
        "FILE: copy this answer file there; none: never",
    )
    p.add_argument("--json", action="store_true", help="print the changes as JSON")
    p.set_defaults(func=cmd_personalize)

    p = wsub.add_parser("unattend", parents=[parent], help="print an unattend.xml answer file")
    p.add_argument("--name", help="computer name")
    p.add_argument("--ip", metavar="CIDR", help="static IPv4 address (needs --mac)")
    p.add_argument("--gateway", metavar="G")
    p.add_argument("--dns", metavar="D", action="append", default=[])
    p.add_argument("--mac", metavar="MAC")
    p.add_argument("--timezone", metavar="TZ", help='Windows time zone name, e.g. "W. Europe Standard Time"')
    p.add_argument("--locale", metavar="LOCALE", help="e.g. en-US")
    p.add_argument(
        "--admin-password", metavar="PW", help="local Administrator password (stored in clear text)"
    )
    p.add_argument("--join-domain", metavar="DOMAIN", help="join this Active Directory domain")
    p.add_argument("--join-user", metavar="USER")
    p.add_argument("--join-password", metavar="PW")
    p.add_argument("--join-ou", metavar="OU")
    p.add_argument("--skip-oobe", action="store_true", help="hide the OOBE pages")
    p.add_argument("--arch", default="amd64", choices=["amd64", "x86", "arm64"])
    p.set_defaults(func=cmd_unattend)

    p = wsub.add_parser("doctor", parents=[parent], help="why Sysprep /generalize fails, and the fixes")
    p.add_argument("root", type=Path, metavar="ROOT", help="mounted Windows volume")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    p.set_defaults(func=cmd_doctor)


def _static_ip(args: argparse.Namespace) -> StaticIp | None:
    """--ip with its --gateway/--dns/--mac; those without --ip are a mistake, not ignored."""
    from fleetcast.errors import UsageError
    from fleetcast.identity.windows.unattend import StaticIp

    if args.ip:
        return StaticIp.parse(args.ip, args.gateway, args.dns, args.mac)
    if args.gateway or args.dns or args.mac:
        raise UsageError("--gateway, --dns and --mac go with --ip")
    return None


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def cmd_inspect(args: argparse.Namespace) -> int:
    from fleetcast.cli.common import print_json
    from fleetcast.identity.windows.inspect import inspect, render_text

    rep = inspect(args.root)
    if args.json:
        print_json(rep.to_dict())
    else:
        print(render_text(rep))
    return 0


def cmd_personalize(args: argparse.Namespace) -> int:
    from fleetcast.cli.common import print_json
    from fleetcast.identity.windows.personalizer import Options, personalize
    from fleetcast.identity.windows.sid import check_seed, parse_machine_sid

    sid = parse_machine_sid(args.sid) if args.sid else None
    if args.sid_seed is not None:
        check_seed(args.sid_seed)
    ip = _static_ip(args)
    opts = Options(
        name=args.name,
        new_sid=args.new_sid,
        sid=sid,
        sid_seed=args.sid_seed,
        reset_ids=args.reset_ids,
        ip=ip,
        drivers=args.drivers,
        unattend=args.unattend,
    )
    changes = personalize(args.root, opts)
    if args.json:
        print_json({"root": str(args.root), "changes": changes})
    else:
        for line in changes:
            print(line)
    return 0


def cmd_unattend(args: argparse.Namespace) -> int:
    from fleetcast.identity.windows.system import check_name
    from fleetcast.identity.windows.unattend import UnattendOptions, render

    if args.name:
        check_name(args.name)
    ip = _static_ip(args)
    opts = UnattendOptions(
        name=args.name,
        ip=ip,
        timezone=args.timezone,
        locale=args.locale,
        admin_password=args.admin_password,
        join_domain=args.join_domain,
        join_user=args.join_user,
        join_password=args.join_password,
        join_ou=args.join_ou,
        skip_oobe=args.skip_oobe,
        arch=args.arch,
    )
    sys.stdout.write(render(opts))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from fleetcast.cli.common import print_json
    from fleetcast.identity.windows.doctor import diagnose, render_text

    findings = diagnose(args.root)
    if args.json:
        print_json(
            {
                "root": str(args.root),
                "blockers": [f.to_dict() for f in findings if f.blocker],
                "findings": [f.to_dict() for f in findings],
            }
        )
    else:
        print(render_text(args.root, findings))
    return 1 if any(f.blocker for f in findings) else 0
