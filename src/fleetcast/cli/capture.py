"""``fleetcast capture CLIENT NAME``: capture a network-booted client's disk into an image on the server."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from fleetcast.server.apiclient import ApiClient

logger = logging.getLogger(__name__)

# what `capture --wait --json` prints, exactly these keys (issue 11's acceptance checks read them)
RESULT_KEYS = ("image", "bytes_read", "bytes_sent", "chunks_new", "chunks_known", "seconds")
FINAL_STATES = ("done", "failed", "cancelled")
POLL_SECONDS = 0.5  # --wait without the event stream (it failed): the view is polled this often
# --wait follows the deployment's events (GET /api/events, Server-Sent Events) and reads the view when one
# arrives, so the end is seen at once, not at the next poll; with no event for STREAM_QUIET seconds the
# view is read anyway (a backstop) and the stream opened again after the last event seen
STREAM_QUIET = 5.0


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], parent: argparse.ArgumentParser
) -> None:
    from fleetcast.cli.deploy import add_server_options

    p = sub.add_parser(
        "capture",
        parents=[parent],
        help="capture a client's disk into an image on the server",
        description="Capture the disk of enrolled client CLIENT (a MAC or a client name) into image NAME "
        "on the server. The client's agent reads only used blocks, asks the server which chunks it already "
        "has and uploads only the others; the image appears when it is complete. The disk is never written.",
    )
    p.add_argument("client", metavar="CLIENT", help="the golden machine: its MAC or its client name")
    p.add_argument("name", metavar="NAME", help="name of the new image")
    add_server_options(p)
    p.add_argument(
        "--disk", required=True, metavar="RULE", help="source disk: 0, serial=..., model=..., size>=120G"
    )
    p.add_argument("--replace", action="store_true", help="replace an existing image NAME")
    p.add_argument("--wait", action="store_true", help="follow the capture until it ends")
    p.add_argument("--json", action="store_true", help="print JSON on stdout")
    p.set_defaults(func=_capture)


def summary(view: dict[str, Any]) -> dict[str, Any]:
    return {k: view.get(k) for k in RESULT_KEYS}


def _capture(args: argparse.Namespace) -> int:
    from fleetcast.cli.common import print_json
    from fleetcast.cli.deploy import api_client

    body = {"client": args.client, "name": args.name, "disk": args.disk, "replace": args.replace}
    with api_client(args) as api:
        view = api.post("/api/captures", body)
        cid = view["capture"]
        if not args.wait:
            if args.json:
                print_json({"capture": cid, "image": view["image"], "client": view["client"]})
            else:
                print(f"capture {cid} started: image {view['image']!r} from client {view['client']}")
            return 0
        try:
            view = follow(api, cid, live=not args.json)
        except KeyboardInterrupt:
            print(
                f"\nstopped waiting; capture {cid} continues on the server "
                f"(cancel: fleetcast deployments cancel {cid})",
                file=sys.stderr,
            )
            return 130
    if view["state"] != "done":
        from fleetcast.cli.common import printable

        print(
            f"fleetcast: error: capture {cid} of image {view['image']!r} {view['state']}: "
            f"{printable(view.get('error') or 'no reason given')}",
            file=sys.stderr,
        )
        if args.json:
            print_json(summary(view))
        return 1
    if args.json:
        print_json(summary(view))
    else:
        print(
            f"image {view['image']!r} captured from {view['client']} ({view.get('disk') or '-'}) in "
            f"{view.get('seconds') or 0:.1f} s: read {_mib(view['bytes_read'])}, "
            f"sent {_mib(view['bytes_sent'])}, "
            f"{view['chunks_new']} new chunks, {view['chunks_known']} the server had"
        )
    return 0


def _mib(n: float) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def follow(api: ApiClient, cid: int, *, live: bool, stream: TextIO | None = None) -> dict[str, Any]:
    """Follow the capture until it ends (its events, else polling); a progress bar (phase, bytes, rate,
    ETA) while ``live``."""
    out = stream or sys.stderr
    tty = live and out.isatty()
    last = ""
    for _ in _wakeups(api, cid):
        view: dict[str, Any] = api.get_patiently(f"/api/captures/{cid}")
        if live:
            line = progress_line(view)
            if tty:
                out.write(f"\r\x1b[2K{line}")
                out.flush()
            elif line.split("  ")[0] != last:
                last = line.split("  ")[0]
                print(line, file=out, flush=True)
        if view["state"] in FINAL_STATES:
            if tty:
                out.write("\n")
            return view
    raise AssertionError("unreachable: _wakeups never ends")


def _wakeups(api: ApiClient, cid: int) -> Iterator[None]:
    """Yields whenever the capture's view may have changed: at once, then at each of its deployment's
    events (or after ``STREAM_QUIET`` s without one); polls every ``POLL_SECONDS`` when the stream fails."""
    import httpx

    yield None
    since = 0
    timeout = httpx.Timeout(10.0, read=STREAM_QUIET)
    while True:
        try:
            params = {"deployment_id": cid, "since": since}
            with api.http.stream("GET", "/api/events", params=params, timeout=timeout) as response:
                if response.status_code != 200:
                    raise httpx.HTTPError(f"status {response.status_code}")
                for line in response.iter_lines():
                    if line.startswith("id: ") and line[4:].strip().isdigit():
                        since = int(line[4:])
                    elif line.startswith("data: "):
                        yield None
        except httpx.ReadTimeout:
            yield None  # quiet for a while: look anyway
            continue
        except httpx.HTTPError as exc:
            logger.debug("capture %d: event stream failed (%s); polling", cid, exc)
            while True:
                time.sleep(POLL_SECONDS)
                yield None
        yield None  # the stream ended: look, then open it again after the last event


def progress_line(view: dict[str, Any], width: int = 30) -> str:
    from fleetcast.cli.common import printable
    from fleetcast.progress import human_duration

    state = view["state"]
    phase = view.get("phase") or state
    if state != "running":
        return printable(f"{state}  {view.get('error') or ''}".rstrip())
    done, total = int(view.get("bytes_done") or 0), int(view.get("bytes_total") or 0)
    frac = done / total if total else 0.0
    bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
    eta = view.get("eta_seconds")
    return printable(
        f"{phase:<14}  [{bar}] {100 * frac:5.1f}% {_mib(done)}/{_mib(total)} "
        f"{_mib(view.get('rate_bps') or 0)}/s ETA {human_duration(eta) if eta is not None else '--:--'} "
        f"sent {_mib(view.get('bytes_sent') or 0)}"
    )
