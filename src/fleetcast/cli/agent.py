"""``fleetcast agent``: the client side -- enroll with the server, heartbeat, run deploy tasks."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], parent: argparse.ArgumentParser
) -> None:
    p = sub.add_parser(
        "agent",
        parents=[parent],
        help="run the client agent (enroll, wait for tasks, deploy)",
        description="Run the fleetcast agent on a client: it enrolls with the server, reports its inventory, "
        "heartbeats and runs the deploy tasks it is given.",
    )
    p.add_argument(
        "--server", metavar="URL", help="server URL, e.g. http://10.0.0.1:8080 (default: fleetcast.server=)"
    )
    p.add_argument(
        "--enroll-token",
        metavar="TOKEN",
        help="from 'fleetcast --data DIR admin enroll-token' (default: $FLEETCAST_ENROLL_TOKEN, then "
        "fleetcast.token=); a command line is readable by every local user in /proc: prefer "
        "--enroll-token-file or the environment",
    )
    p.add_argument("--enroll-token-file", metavar="FILE", help="read the enrollment token from FILE")
    p.add_argument(
        "--tls-fingerprint",
        metavar="SHA256",
        help="pin the server's certificate: sha256:<64 hex> as `fleetcast serve --tls-cert` prints it "
        "(default: fleetcast.tls= on the kernel command line; without either, https:// is verified "
        "with the system's authorities)",
    )
    p.add_argument(
        "--cmdline",
        default="/proc/cmdline",
        metavar="FILE",
        help="kernel command line read when --server/--enroll-token are absent (default: /proc/cmdline)",
    )
    p.add_argument(
        "--allow-disk",
        action="append",
        default=[],
        metavar="PATH",
        help="only report and touch this disk (repeatable); without it every fixed disk is reported",
    )
    p.add_argument(
        "--state-dir",
        default="/var/lib/fleetcast-agent",
        metavar="DIR",
        help="where the agent keeps what it needs to resume a task (default: /var/lib/fleetcast-agent)",
    )
    p.add_argument("--once", action="store_true", help="exit after one task (status 0 when it is done)")
    p.add_argument(
        "--outage-limit",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="how long a task waits for an unreachable server before failing (default: 600)",
    )
    p.add_argument(
        "--checkpoint-mib",
        type=int,
        default=16,
        metavar="MIB",
        help="fsync and record a resume point every MIB MiB written (default: 16)",
    )
    p.add_argument(
        "--workers", type=int, default=4, metavar="N", help="parallel chunk downloads (default: 4)"
    )
    p.add_argument(
        "--post-action",
        choices=("run", "report"),
        default="run",
        help="'report' only reports the reboot/shutdown a task asks for (labs and tests); default: run",
    )
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    import logging
    import math
    import os

    from fleetcast.agent.loop import Agent, AgentSettings
    from fleetcast.errors import UsageError

    if not getattr(args, "debug", False):
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise

    if args.enroll_token is None and getattr(args, "enroll_token_file", None):
        try:
            args.enroll_token = Path(args.enroll_token_file).read_text().strip() or None
        except OSError as exc:
            raise UsageError(
                f"cannot read the enrollment token file {args.enroll_token_file}: {exc.strerror}"
            ) from exc
    if args.enroll_token is None:
        args.enroll_token = os.environ.get("FLEETCAST_ENROLL_TOKEN") or None
    from fleetcast.agent.cmdline import CmdlineSettings, read
    from fleetcast.errors import AgentError

    found = None
    if args.server is None or args.enroll_token is None:
        found = read(Path(args.cmdline))
        args.server = args.server or found.server
        args.enroll_token = args.enroll_token or found.enroll_token
    if args.tls_fingerprint is None and args.server:
        if found is None:  # --server given too (the boot environment passes it): the line may still pin
            try:
                found = read(Path(args.cmdline))
            except AgentError as exc:
                logging.getLogger(__name__).debug("no pin from %s: %s", args.cmdline, exc.message)
                found = CmdlineSettings()
        if found.tls_fingerprint and (found.server or "").rstrip("/") == args.server.rstrip("/"):
            args.tls_fingerprint = found.tls_fingerprint  # the server that wrote the line pins itself
    if args.server is None or args.enroll_token is None:
        raise UsageError(
            f"agent: no server URL or enrollment token: neither --server/--enroll-token nor "
            f"fleetcast.server=/fleetcast.token= in {args.cmdline}"
        )
    if args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    if args.checkpoint_mib < 1:
        raise UsageError(f"--checkpoint-mib must be at least 1, got {args.checkpoint_mib}")
    if args.outage_limit < 0:
        raise UsageError(f"--outage-limit must not be negative, got {args.outage_limit}")
    if not math.isfinite(args.outage_limit):  # nan compares false with everything: retry forever
        raise UsageError(f"--outage-limit must be a number of seconds, got {args.outage_limit}")
    settings = AgentSettings(
        server=args.server,
        enroll_token=args.enroll_token,
        allow=tuple(Path(p) for p in args.allow_disk),
        state_dir=Path(args.state_dir),
        once=args.once,
        outage_limit=args.outage_limit,
        workers=args.workers,
        prefetch=max(4, args.workers),
        execute_post_action=args.post_action == "run",
        checkpoint_bytes=args.checkpoint_mib << 20,
        cmdline=Path(args.cmdline),
        tls_fingerprint=args.tls_fingerprint,
    )
    agent = Agent(settings)
    agent.install_signal_handlers()
    try:
        return agent.run()
    finally:
        agent.api.close()
