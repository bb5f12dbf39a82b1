"""``fleetcast deployments list | show ID | cancel ID | multicast ID``: deployments already on the server."""

from __future__ import annotations

import argparse
import logging
from typing import Any

logger = logging.getLogger(__name__)


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], parent: argparse.ArgumentParser
) -> None:
    from fleetcast.cli.deploy import add_server_options

    p = sub.add_parser("deployments", parents=[parent], help="list, follow and cancel deployments")
    cmds = p.add_subparsers(dest="deployments_command", metavar="COMMAND", required=True)

    ls = cmds.add_parser("list", parents=[parent], help="every deployment, newest first")
    add_server_options(ls)
    ls.add_argument("--json", action="store_true", help='print {"deployments": [...]} on stdout')
    ls.set_defaults(func=_list)

    show = cmds.add_parser("show", parents=[parent], help="one deployment with a row per client")
    show.add_argument("id", metavar="ID", type=_deployment_id)
    add_server_options(show)
    show.add_argument(
        "--wait",
        action="store_true",
        help="follow it until every client has finished; exit 1 unless all are done",
    )
    show.add_argument("--json", action="store_true", help="print the same JSON as `deploy --wait --json`")
    show.set_defaults(func=_show)

    cancel = cmds.add_parser("cancel", parents=[parent], help="stop a deployment: queued clients never start")
    cancel.add_argument("id", metavar="ID", type=_deployment_id)
    add_server_options(cancel)
    cancel.add_argument("--json", action="store_true", help="print the deployment after the cancel")
    cancel.set_defaults(func=_cancel)

    mc = cmds.add_parser(
        "multicast", parents=[parent],
        help="show a deployment's multicast sessions; change its start rules while a session waits",
    )  # fmt: skip
    mc.add_argument("id", metavar="ID", type=_deployment_id)
    add_server_options(mc)
    mc.add_argument("--min-clients", type=int, metavar="N", help="start when N clients joined")
    mc.add_argument(
        "--max-wait", type=float, metavar="S", help="start after S seconds (since the first join)"
    )
    mc.add_argument("--json", action="store_true", help="print the multicast view as JSON")
    mc.set_defaults(func=_multicast)


def _multicast(args: argparse.Namespace) -> int:
    from fleetcast.cli.common import print_json, print_table
    from fleetcast.cli.deploy import api_client

    with api_client(args) as api:
        if args.min_clients is not None or args.max_wait is not None:
            body = {k: v for k, v in (("min_clients", args.min_clients), ("max_wait", args.max_wait))
                    if v is not None}  # fmt: skip
            view = api.post(f"/api/deployments/{args.id}/multicast", body)
        else:
            view = api.get(f"/api/deployments/{args.id}/multicast")
    if args.json:
        print_json(view)
        return 0
    print(f"deployment {view['deployment']}: transport {view['transport']}, rules {view['options']}")
    rows = [
        [s["session"][:8], s["state"], f"{s['group']}:{s['port']}", f"{len(s['members'])}/{s['min_clients']}",
         f"{s['max_wait']:.0f}", str(s["bytes_sent"]), str(s["sender_pid"] or "-")]
        for s in view["sessions"]
    ]  # fmt: skip
    print_table(["session", "state", "group", "joined", "max-wait", "bytes sent", "sender"], rows)
    return 0


def _deployment_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a deployment number, found {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a deployment number of at least 1, found {value}")
    return value


def _counts(d: dict[str, Any]) -> str:
    counts: dict[str, int] = d.get("counts") or {}
    return ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "-"


def _list(args: argparse.Namespace) -> int:
    from fleetcast.cli.common import print_json, print_table
    from fleetcast.cli.deploy import api_client

    with api_client(args) as api:
        deployments = api.get("/api/deployments")["deployments"]
    if args.json:
        print_json({"deployments": deployments})
        return 0
    rows = [
        [
            str(d["deployment"]),
            d["image"],
            d["state"],
            _counts(d),
            str(d.get("batch") or "-"),
            d.get("created_at") or "-",
            d.get("created_by") or "-",
        ]
        for d in deployments
    ]
    print_table(["id", "image", "state", "clients", "batch", "created", "by"], rows)
    return 0


def _show(args: argparse.Namespace) -> int:
    from fleetcast.cli.common import print_json
    from fleetcast.cli.deploy import api_client, follow, print_result, summary

    with api_client(args) as api:
        view = (
            follow(api, args.id, live=not args.json) if args.wait else api.get(f"/api/deployments/{args.id}")
        )
    if args.json:
        print_json(summary(view))
    else:
        print_result(view)
    if not args.wait:
        return 0
    # like `deploy --wait`: success only when every client ended done
    return 0 if all(c["state"] == "done" for c in view["clients"]) else 1


def _cancel(args: argparse.Namespace) -> int:
    from fleetcast.cli.common import print_json
    from fleetcast.cli.deploy import api_client, print_result, summary

    with api_client(args) as api:
        view = api.post(f"/api/deployments/{args.id}/cancel")
    if args.json:
        print_json(summary(view))
    else:
        print_result(view)
    return 0
