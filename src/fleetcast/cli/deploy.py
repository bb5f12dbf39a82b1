"""``fleetcast deploy IMAGE``: plan, start and follow a deployment through the server's API."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from fleetcast.cli.presets import add_preset_options, plan_lines, presets_body

if TYPE_CHECKING:
    from fleetcast.server.apiclient import ApiClient

logger = logging.getLogger(__name__)

SERVER_ENV = "FLEETCAST_SERVER"
TOKEN_ENV = "FLEETCAST_TOKEN"
# what `deploy --wait --json` prints per client, exactly these keys
CLIENT_KEYS = ("mac", "name", "ip", "disk", "state", "bytes", "started_at", "finished_at", "error")
FINAL_DEPLOYMENT_STATES = ("done", "failed", "cancelled")
POLL_SECONDS = 1.0


def add_server_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--server", metavar="URL", help=f"server URL, e.g. http://10.0.0.1:8080 (or ${SERVER_ENV})"
    )
    p.add_argument(
        "--token",
        metavar="T",
        help=f"admin token: `fleetcast admin token`; a command line is readable by every local user "
        f"in /proc, so prefer --token-file or ${TOKEN_ENV}",
    )
    p.add_argument(
        "--token-file", metavar="FILE", help="read the admin token from FILE (e.g. DATA/secrets/admin-token)"
    )


def api_client(args: argparse.Namespace) -> ApiClient:
    from fleetcast.errors import UsageError
    from fleetcast.server.apiclient import ApiClient

    if not getattr(args, "debug", False):  # one line per HTTP request is noise on a technician's terminal
        logging.getLogger("httpx").setLevel(logging.WARNING)
    server = args.server or os.environ.get(SERVER_ENV)
    token = args.token or os.environ.get(TOKEN_ENV)
    token_file = getattr(args, "token_file", None)
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise UsageError(f"cannot read the token file {token_file}: {exc.strerror}") from exc
    if not server:
        raise UsageError("no server given", hint=f"pass --server URL or set ${SERVER_ENV}")
    if not token:
        raise UsageError(
            "no admin token given", hint=f"pass --token T (from `fleetcast admin token`) or set ${TOKEN_ENV}"
        )
    return ApiClient(server, token)


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], parent: argparse.ArgumentParser
) -> None:
    p = sub.add_parser(
        "deploy",
        parents=[parent],
        help="deploy an image to enrolled clients",
        description="Deploy IMAGE to clients through the server: names and addresses are assigned in a "
        "stable client order (all: by MAC; a list: in its order) and shown by --plan before anything starts.",
    )
    p.add_argument("image", metavar="IMAGE", help="image name in the server's store")
    add_server_options(p)
    p.add_argument("--clients", required=True, metavar="all|MAC[,MAC...]", help="which enrolled clients")
    p.add_argument(
        "--disk", required=True, metavar="RULE", help="target disk: 0, serial=..., model=..., size>=120G"
    )
    p.add_argument(
        "--batch", type=int, default=1, metavar="N", help="at most N clients write at once (default 1)"
    )
    p.add_argument("--name", metavar="PATTERN", help="computer names, e.g. 'LAB-{n:02}' (n counts from 1)")
    p.add_argument(
        "--ip", metavar="START/PREFIX", help="static addresses from START upwards, e.g. 10.0.0.101/24"
    )
    p.add_argument("--gateway", metavar="G", help="default gateway for the static addresses")
    p.add_argument(
        "--dns", action="append", default=[], metavar="D", help="DNS server (repeat or comma-separate)"
    )
    p.add_argument("--grow", action="store_true", help="grow the last partition to fill larger disks")
    p.add_argument("--then", choices=("reboot", "shutdown", "none"), default="reboot", help="after deploying")
    add_transport_options(p)
    add_preset_options(p)  # --ip-list, --keep-sid, --keep-ids, --drivers, --unattend (cli/presets.py)
    p.add_argument("--plan", action="store_true", help="show the assignments and stop (nothing is started)")
    p.add_argument("--wait", action="store_true", help="follow the deployment until every client finished")
    p.add_argument("--json", action="store_true", help="print JSON on stdout")
    p.set_defaults(func=_deploy)


def add_transport_options(p: argparse.ArgumentParser) -> None:
    """``--transport`` and the multicast start rules (docs/multicast.md)."""
    p.add_argument(
        "--transport", choices=("unicast", "multicast", "auto"), default="unicast",
        help="how the packs travel: unicast (HTTP per client), multicast (one stream per batch, missing "
        "packs by HTTP), auto (multicast when a batch has at least --multicast-from clients)",
    )  # fmt: skip
    p.add_argument(
        "--min-clients",
        type=int,
        metavar="N",
        help="multicast: start when N clients joined "
        "(default: the batch's size); changeable while waiting: fleetcast deployments multicast",
    )
    p.add_argument("--max-wait", type=float, metavar="S", help="multicast: start after S seconds even "
                   "with fewer clients (default 60)")  # fmt: skip
    p.add_argument(
        "--multicast-from", type=int, metavar="K", help="auto: multicast from K clients (default 4)"
    )
    p.add_argument("--drop-below", type=float, metavar="MBIT", help="multicast: a receiver that holds the "
                   "session below MBIT Mbit/s finishes by unicast (default: never)")  # fmt: skip


def transport_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"transport": args.transport}
    for key in ("min_clients", "max_wait", "multicast_from"):
        if getattr(args, key, None) is not None:
            body[key] = getattr(args, key)
    if getattr(args, "drop_below", None) is not None:
        body["drop_below"] = args.drop_below * 1e6 / 8  # Mbit/s -> bytes/s
    return body


def _body(args: argparse.Namespace) -> dict[str, Any]:
    dns = [d.strip() for item in args.dns for d in item.split(",") if d.strip()]
    return {
        "image": args.image,
        "clients": args.clients,
        "disk": args.disk,
        "batch": args.batch,
        "name": args.name,
        "ip": args.ip,
        "gateway": args.gateway,
        "dns": dns,
        "grow": args.grow,
        "then": args.then,
        **transport_body(args),
        **presets_body(args),
    }


def summary(view: dict[str, Any]) -> dict[str, Any]:
    """Exactly ``{"deployment": ID, "clients": [{CLIENT_KEYS}]}``."""
    return {
        "deployment": view["deployment"],
        "clients": [{k: c.get(k) for k in CLIENT_KEYS} for c in view["clients"]],
    }


def _deploy(args: argparse.Namespace) -> int:
    from fleetcast.cli.common import print_json, print_table

    with api_client(args) as api:
        if args.plan:
            plan = api.post("/api/deployments/plan", _body(args))
            if args.json:
                print_json(plan)
            else:
                rows = [[str(c["n"]), c["mac"], c["name"] or "-", c["ip"] or "dhcp"] for c in plan["clients"]]
                print(f"image {plan['image']} -> {len(rows)} client(s), disk rule {plan['disk']!r}")
                if plan.get("transport"):
                    print(f"transport {plan['transport']}: {plan.get('transport_reason') or ''}")
                print_table(["n", "mac", "name", "ip"], rows)
                if plan.get("gateway") or plan.get("dns"):
                    print(
                        f"gateway {plan.get('gateway') or '-'}, dns {', '.join(plan.get('dns') or []) or '-'}"
                    )
                for line in plan_lines(plan):
                    print(line)
            return 0
        view = api.post("/api/deployments", _body(args))
        dep = view["deployment"]
        if not args.wait:
            if args.json:
                print_json(summary(view))
            else:
                print(f"deployment {dep} started: {len(view['clients'])} client(s), batch {view['batch']}")
            return 0
        try:
            view = follow(api, dep, live=not args.json)
        except KeyboardInterrupt:
            print(
                f"\nstopped waiting; deployment {dep} continues on the server "
                f"(cancel: fleetcast deployments cancel {dep})",
                file=sys.stderr,
            )
            return 130
    if args.json:
        print_json(summary(view))
    else:
        print_result(view)
    states = [c["state"] for c in view["clients"]]
    return 0 if all(s == "done" for s in states) else 1


def follow(api: ApiClient, dep: int, *, live: bool, stream: TextIO | None = None) -> dict[str, Any]:
    """Poll the deployment until it is finished; draw per-client progress while ``live``."""
    out = stream or sys.stderr
    tty = live and out.isatty()
    drawn = 0
    last_states: dict[str, str] = {}
    while True:
        view: dict[str, Any] = api.get_patiently(f"/api/deployments/{dep}")
        if tty:
            lines = [progress_line(c) for c in view["clients"]]
            if drawn:
                out.write(f"\x1b[{drawn}F")
            out.write("".join(f"\x1b[2K{line}\n" for line in lines))
            out.flush()
            drawn = len(lines)
        elif live:
            for c in view["clients"]:
                state = f"{c['state']}/{c.get('phase') or ''}"
                if last_states.get(c["mac"]) != state:
                    last_states[c["mac"]] = state
                    print(progress_line(c), file=out, flush=True)
        if view["state"] in FINAL_DEPLOYMENT_STATES:
            return view
        time.sleep(POLL_SECONDS)


def _mib(n: float) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def progress_line(c: dict[str, Any]) -> str:
    from fleetcast.cli.common import printable

    return printable(_progress_line(c))


def _progress_line(c: dict[str, Any]) -> str:
    from fleetcast.progress import human_duration

    who = f"{c.get('name') or '-':<12} {c['mac']}"
    state = c["state"]
    if state == "running":
        total = c.get("bytes_total") or 0
        pct = f"{100 * c['bytes'] / total:5.1f}%" if total else "  -  "
        eta = c.get("eta_seconds")
        return (
            f"{who}  {c.get('phase') or 'starting':<14} {pct} {_mib(c['bytes'])}/{_mib(total)} "
            f"{_mib(c.get('rate_bps') or 0)}/s ETA {human_duration(eta) if eta is not None else '--:--'}"
        )
    if state in ("done", "failed", "cancelled"):
        extra = f": {c['error']}" if c.get("error") else ""
        return f"{who}  {state}{extra}"
    return f"{who}  {state}"


def seconds(c: dict[str, Any]) -> float | None:
    if not c.get("started_at") or not c.get("finished_at"):
        return None
    return (
        datetime.fromisoformat(c["finished_at"]) - datetime.fromisoformat(c["started_at"])
    ).total_seconds()


def print_result(view: dict[str, Any]) -> None:
    from fleetcast.cli.common import print_table

    rows = []
    for c in view["clients"]:
        secs = seconds(c)
        rate = f"{c['bytes'] / secs / 1e6:.1f}" if secs else "-"
        rows.append(
            [
                c.get("name") or "-",
                c["mac"],
                c.get("ip") or "dhcp",
                c.get("disk") or "-",
                c["state"],
                f"{secs:.1f}" if secs is not None else "-",
                rate,
                c.get("error") or "",
            ]
        )
    print(f"deployment {view['deployment']}: {view['state']}")
    print_table(["name", "mac", "ip", "disk", "state", "seconds", "MB/s", "error"], rows)
