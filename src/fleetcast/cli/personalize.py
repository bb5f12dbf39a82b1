"""``fleetcast personalize CLIENTS --new-sid``: give machines that are already deployed a new identity
(machine SID, machine IDs, name) from the network boot environment, without writing an image --
the fix ``fleetcast audit sids`` names for clones that share a machine SID (issue 13)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

FINAL_STATES = ("done", "failed", "cancelled")
POLL_SECONDS = 1.0
# what `personalize --wait --json` prints per client, exactly these keys
CLIENT_KEYS = ("mac", "name", "disk", "state", "error", "changes")


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], parent: argparse.ArgumentParser
) -> None:
    from fleetcast.cli.deploy import add_server_options

    p = sub.add_parser(
        "personalize",
        parents=[parent],
        help="give deployed clients a new identity (machine SID, IDs, name) without re-imaging",
        description="Each client's agent (booted from the network) personalizes the operating system "
        "already on the disk RULE picks, offline, as after a deployment: --new-sid gives Windows a new "
        "random machine SID (what clones sharing one need: fleetcast audit sids). No image is written.",
    )
    p.add_argument("clients", metavar="CLIENTS", help="'all' or MAC[,MAC...] (fleetcast clients list)")
    add_server_options(p)
    p.add_argument("--new-sid", action="store_true", help="a new random machine SID (Windows)")
    p.add_argument("--reset-ids", action="store_true", help="new MachineGuid, WSUS/SQM ids deleted (Windows)")
    p.add_argument("--name", metavar="PATTERN", help="computer names, e.g. 'LAB-{n:02}' (n counts from 1)")
    p.add_argument("--disk", default="0", metavar="RULE", help="the disk holding the OS (default 0)")
    p.add_argument("--batch", type=int, default=5, metavar="N", help="at most N clients at once (default 5)")
    p.add_argument("--then", choices=("reboot", "shutdown", "none"), default="none", help="afterwards")
    p.add_argument("--wait", action="store_true", help="follow it until every client finished")
    p.add_argument("--json", action="store_true", help="print JSON on stdout")
    p.set_defaults(func=_personalize)


SID_LINE = "SAM SAM\\Domains\\Account: V: "


def sid_change(changes: list[str]) -> str | None:
    """ "machine SID OLD -> NEW" from a personalize task's change lines (the SAM Account V line)."""
    for line in changes:
        _, found, rest = line.partition(SID_LINE)
        if found:
            return f"machine SID {rest}"
    return None


def _clients(spec: str) -> str | list[str]:
    return "all" if spec.strip().lower() == "all" else [m.strip() for m in spec.split(",") if m.strip()]


def _personalize(args: argparse.Namespace) -> int:
    from fleetcast.cli.common import print_json, printable
    from fleetcast.cli.deploy import api_client

    body: dict[str, Any] = {
        "clients": _clients(args.clients), "disk": args.disk, "name": args.name,
        "new_sid": args.new_sid, "reset_ids": args.reset_ids, "batch": args.batch, "then": args.then,
    }  # fmt: skip
    with api_client(args) as api:
        view = api.post("/api/personalizations", body)
        dep = view["deployment"]
        if not args.wait:
            if args.json:
                print_json({"deployment": dep, "clients": [c["mac"] for c in view["clients"]]})
            else:
                print(f"personalize {dep} started for {len(view['clients'])} client(s)")
            return 0
        try:
            while view["state"] in ("running", "cancelling"):
                time.sleep(POLL_SECONDS)
                view = api.get(f"/api/deployments/{dep}")
        except KeyboardInterrupt:
            print(f"\nstopped waiting; personalize {dep} continues (cancel: fleetcast deployments cancel "
                  f"{dep})", file=sys.stderr)  # fmt: skip
            return 130
    clients = [{k: c.get(k) for k in CLIENT_KEYS} for c in view["clients"]]
    if args.json:
        print_json({"deployment": dep, "state": view["state"], "clients": clients})
    else:
        for c in clients:
            what = c["error"] or sid_change(c["changes"] or []) or f"{len(c['changes'] or [])} change(s)"
            print(printable(f"{c['mac']} {c['name'] or '-'} {c['disk'] or '-'}: {c['state']}: {what}"))
    return 0 if all(c["state"] == "done" for c in clients) else 1
