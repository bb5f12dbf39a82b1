"""``fleetcast admin``: the server's tokens (printed, made on first use)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], parent: argparse.ArgumentParser
) -> None:
    p = sub.add_parser("admin", parents=[parent], help="server administration: tokens")
    cmds = p.add_subparsers(dest="admin_command", metavar="COMMAND", required=True)
    token = cmds.add_parser(
        "token",
        parents=[parent],
        help="print the admin API token (made on first use, DATA/secrets/admin-token)",
    )
    token.set_defaults(func=_print_token, token_file="admin-token")
    enroll = cmds.add_parser(
        "enroll-token",
        parents=[parent],
        help="print the agents' enrollment token (made on first use, DATA/secrets/enroll-token)",
    )
    enroll.set_defaults(func=_print_token, token_file="enroll-token")
    rotate = cmds.add_parser(
        "rotate-enroll-token",
        parents=[parent],
        help="replace the enrollment token and print the new one; a running server uses it at once "
        "(enrolled agents keep their credentials; new agents need the new token)",
    )
    rotate.set_defaults(func=_print_token, token_file="enroll-token", rotate=True)
    fp = cmds.add_parser(
        "tls-fingerprint",
        parents=[parent],
        help="print the SHA-256 fingerprint of a serve --tls-cert certificate, for the agents' "
        "fleetcast.tls=",
    )
    fp.add_argument("--tls-cert", type=Path, required=True, metavar="FILE", help="the PEM certificate")
    fp.set_defaults(func=_print_fingerprint)
    from fleetcast.cli import users

    users.register(cmds, parent)


def _print_fingerprint(args: argparse.Namespace) -> int:
    from fleetcast.server.tls import fingerprint

    print(fingerprint(args.tls_cert))
    return 0


def _print_token(args: argparse.Namespace) -> int:
    from fleetcast import config
    from fleetcast.server.auth import read_or_create, rotate

    config_file = getattr(args, "config", None)
    file_values = config.load_config_file(Path(config_file) if config_file else None)
    data = Path(config.resolve("data", getattr(args, "data", None), file_values))
    make = rotate if getattr(args, "rotate", False) else read_or_create
    print(make(data / "secrets", args.token_file))
    return 0
