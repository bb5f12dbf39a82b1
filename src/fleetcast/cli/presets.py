"""``fleetcast deploy``'s IP list and Windows options (server/presets.py; the console's wizard sends
the same body keys): ``--ip-list FILE``, ``--keep-sid``, ``--keep-ids``, ``--drivers NAME``,
``--unattend auto|none|FILE``; and the plan lines ``deploy --plan`` prints for them."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fleetcast.errors import UsageError


def add_preset_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ip-list",
        type=Path,
        metavar="FILE",
        help="static addresses from a CSV file, one line per client: MAC,NAME,IP/PREFIX "
        "(NAME may be empty; the columns of `fleetcast clients import`); instead of --ip",
    )
    p.add_argument("--keep-sid", action="store_true", help="Windows: keep the image's machine SID")
    p.add_argument(
        "--keep-ids", action="store_true", help="keep the machine IDs (MachineGuid, machine-id, ...)"
    )
    p.add_argument(
        "--drivers", metavar="NAME", help="Windows: add the INF drivers of the server's DATA/drivers/NAME"
    )
    p.add_argument(
        "--unattend",
        default="auto",
        metavar="auto|none|FILE",
        help="Windows: unattend.xml made by fleetcast (auto, the default), none, or this file",
    )


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the {what} {path}: {exc}") from exc


def presets_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {
        "new_sid": not args.keep_sid,
        "reset_ids": not args.keep_ids,
        "drivers": args.drivers,
        "unattend": args.unattend
        if args.unattend in ("auto", "none")
        else _read(Path(args.unattend), "unattend file"),
    }
    if args.ip_list is not None:
        body["ip_list"] = _read(args.ip_list, "IP list")
    return body


def plan_lines(plan: dict[str, Any]) -> list[str]:
    """What ``deploy --plan`` prints about addressing, Windows options and conflicts (the console's
    review step shows the same)."""
    lines: list[str] = []
    w = plan.get("windows")
    if w:
        unattend = {"auto": "unattend.xml by fleetcast", "none": "no unattend.xml"}.get(
            w.get("unattend"), f"unattend.xml given ({w.get('unattend_bytes', 0)} B)"
        )
        drivers = (
            f"drivers from {w['drivers']} ({w.get('drivers_infs')} INF)"
            if w.get("drivers")
            else "no drivers added"
        )
        lines.append(
            f"windows: {'new machine SID' if w.get('new_sid') else 'machine SID kept'}, "
            f"{'machine IDs reset' if w.get('reset_ids') else 'machine IDs kept'}, {drivers}, {unattend}"
        )
    if plan.get("ip_source") == "list":
        lines.append("addresses from the IP list")
    lines += [f"conflict: {c}" for c in plan.get("conflicts") or []]
    lines += [f"note: {n}" for n in plan.get("notes") or []]
    return lines
