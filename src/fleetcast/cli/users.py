"""``fleetcast admin user add NAME --role admin|operator|viewer``: a console user.

The password is asked twice on a terminal, or read as one line from standard input (scripts).
"""

from __future__ import annotations

import argparse
import getpass
import sys

from fleetcast.errors import UsageError


def register(
    cmds: argparse._SubParsersAction[argparse.ArgumentParser], parent: argparse.ArgumentParser
) -> None:
    user = cmds.add_parser("user", parents=[parent], help="console users")
    ucmds = user.add_subparsers(dest="user_command", metavar="COMMAND", required=True)
    add = ucmds.add_parser(
        "add",
        parents=[parent],
        help="add a console user (password asked on the terminal, or one line on standard input)",
    )
    add.add_argument("name", metavar="NAME")
    add.add_argument("--role", required=True, choices=["admin", "operator", "viewer"])
    add.add_argument("--database", metavar="URL", help="the server's --database (default: DATA/fleetcast.db)")
    add.set_defaults(func=_add)


def _password() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("password: ")
        if getpass.getpass("the same password again: ") != first:
            raise UsageError("the two passwords are not the same")
        return first
    return sys.stdin.readline().rstrip("\n")


def _add(args: argparse.Namespace) -> int:
    from fleetcast.server import settings
    from fleetcast.server.db import AuditRow, Database
    from fleetcast.server.users import Users

    s = settings.build(
        data=getattr(args, "data", None),
        listen=None,
        database=args.database,
        config_file=getattr(args, "config", None),
    )
    password = _password()
    try:
        s.data_dir.mkdir(parents=True, exist_ok=True)  # as `fleetcast serve` does on its first start
    except OSError as exc:
        raise UsageError(
            f"cannot create the data directory {s.data_dir}: {exc.strerror}",
            hint="run as root or pick a writable --data directory",
        ) from exc
    db = Database(s.db_url)
    try:
        user = Users(db).add(args.name, args.role, password)
        with db.transaction() as session:  # the audit log names who ran it on the server
            session.add(AuditRow(actor=f"cli:{getpass.getuser()}"[:64], address="", action="user-add",
                                 target=f"user {user['name']}", detail={"role": user["role"]}))  # fmt: skip
    finally:
        db.close()
    print(f"user {user['name']} added with role {user['role']}")
    return 0
