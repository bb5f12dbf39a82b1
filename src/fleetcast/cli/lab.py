"""``fleetcast lab up | status | console | power | down | demo``: the virtual lab of QEMU machines."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from fleetcast.cli.common import add_json

FIRMWARE_HELP = "bios, uefi, secureboot, mixed (alternates bios and uefi) or a list like bios,secureboot"


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], parent: argparse.ArgumentParser
) -> None:
    p = sub.add_parser(
        "lab",
        parents=[parent],
        help="a virtual lab of QEMU machines that network-boot from fleetcast",
        description="A network namespace with a bridge, the fleetcast server inside it (full DHCP on the "
        "bridge only) and QEMU machines with blank disks that network-boot from it (docs/lab.md).",
    )
    lsub = p.add_subparsers(dest="lab_command", metavar="SUBCOMMAND", required=True)

    def state_option(q: argparse.ArgumentParser) -> None:
        q.add_argument(
            "--state-dir",
            metavar="DIR",
            default="/var/lib/fleetcast-lab",
            help="the lab's state folder (default: /var/lib/fleetcast-lab)",
        )

    def machine_options(q: argparse.ArgumentParser) -> None:
        q.add_argument("--clients", type=int, required=True, metavar="N", help="how many machines")
        q.add_argument("--firmware", default="mixed", metavar="KIND", help=FIRMWARE_HELP)
        q.add_argument("--disk-size", default="4G", metavar="SIZE", help="each blank disk (default 4G)")
        q.add_argument(
            "--accel",
            choices=("auto", "tcg", "kvm"),
            default="auto",
            help="KVM when /dev/kvm really works (auto), else TCG",
        )
        state_option(q)

    up = lsub.add_parser("up", parents=[parent], help="start the lab: namespace, server, N machines")
    machine_options(up)
    add_json(up)
    up.set_defaults(func=handle_up)

    st = lsub.add_parser("status", parents=[parent], help="the lab's server and machines")
    state_option(st)
    add_json(st)
    st.set_defaults(func=handle_status)

    con = lsub.add_parser(
        "console",
        parents=[parent],
        help="follow a machine's serial console (--attach: type into it)",
        description="Print the last lines of CLIENT's serial console and follow it (Ctrl-C ends). "
        "CLIENT: client1, 1 or its MAC.",
    )
    con.add_argument("client", metavar="CLIENT")
    con.add_argument("--lines", type=int, default=40, help="how many past lines (default 40)")
    con.add_argument("--no-follow", action="store_true", help="print and stop")
    con.add_argument("--attach", action="store_true", help="interactive (socat; Ctrl-] detaches)")
    state_option(con)
    con.set_defaults(func=handle_console)

    pw = lsub.add_parser("power", parents=[parent], help="power a machine on, off or cycle it")
    pw.add_argument("client", metavar="CLIENT")
    pw.add_argument("action", choices=("on", "off", "cycle"))
    state_option(pw)
    pw.set_defaults(func=handle_power)

    dn = lsub.add_parser("down", parents=[parent], help="remove the lab: machines, server, namespace")
    state_option(dn)
    dn.set_defaults(func=handle_down)

    demo = lsub.add_parser(
        "demo",
        parents=[parent],
        help="up, deploy lab-debian with names LAB-01.. and static IPs, and watch every client boot it",
        description="Start the lab, deploy the golden image lab-debian (names LAB-01.., static IPs), "
        "wait until every client restarted from its disk into the deployed Debian and reported back, "
        "and print one row per client. The lab stays up (fleetcast lab down) unless --once.",
    )
    machine_options(demo)
    demo.add_argument("--once", action="store_true", help="remove the lab at the end")
    demo.add_argument(
        "--timeout", type=float, default=2400, metavar="S", help="give up after S seconds (default 2400)"
    )
    add_json(demo)
    demo.set_defaults(func=handle_demo)


def _progress(args: argparse.Namespace) -> Callable[[str], None]:
    out = sys.stderr if getattr(args, "json", False) else sys.stdout

    def say(line: str) -> None:
        print(line, file=out, flush=True)

    return say


def handle_up(args: argparse.Namespace) -> int:
    from fleetcast.cli.common import print_json
    from fleetcast.lab import vlab
    from fleetcast.lab.qemu import Accel

    state = vlab.up(
        args.clients,
        args.firmware,
        disk_size=args.disk_size,
        state_dir=Path(args.state_dir),
        accel=Accel(args.accel),
        progress=_progress(args),
    )
    if args.json:
        print_json(vlab.status(Path(state.state_dir)))
    else:
        print(f"lab up: server {state.server_url} in namespace {state.netns}")
        print("next: fleetcast lab status | fleetcast lab console client1 | fleetcast lab down")
    return 0


def handle_status(args: argparse.Namespace) -> int:
    from fleetcast.cli.common import print_json, print_table
    from fleetcast.lab import vlab

    st = vlab.status(Path(args.state_dir))
    if args.json:
        print_json(st)
        return 0
    running = "running" if st["server_running"] else "NOT running"
    print(
        f"server {st['server']} ({running}, pid {st['server_pid']}) in namespace {st['netns']}; {st['accel']}"
    )
    rows = [
        [c["client"], c["firmware"], c["mac"], c["power"], c["state"], c["hostname"] or "-", c["ip"] or "-"]
        for c in st["clients"]
    ]
    print_table(["client", "firmware", "mac", "power", "state", "hostname", "ip"], rows)
    return 0


def handle_console(args: argparse.Namespace) -> int:
    from fleetcast.lab import vlab
    from fleetcast.lab.qemu import console_attach

    state = vlab.LabState.load(Path(args.state_dir))
    machine = state.machine(state.find(args.client))
    if args.attach:
        console_attach(machine.serial_socket)
        return 0
    if args.no_follow:
        for line in machine.serial_text().splitlines()[-args.lines :]:
            print(line)
        return 0
    for line in vlab.follow(machine.serial_log, lines=args.lines):
        sys.stdout.write(line)
        sys.stdout.flush()
    return 0


def handle_power(args: argparse.Namespace) -> int:
    from fleetcast.lab import vlab

    state = vlab.LabState.load(Path(args.state_dir))
    record = state.find(args.client)
    if args.action in ("off", "cycle"):
        vlab.power_off(state, record)
    if args.action in ("on", "cycle"):
        pid = vlab.power_on(state, record)
        print(f"{record.name}: powered on (qemu pid {pid})")
    else:
        print(f"{record.name}: powered off")
    return 0


def handle_down(args: argparse.Namespace) -> int:
    from fleetcast.lab import vlab

    removed = vlab.down(Path(args.state_dir))
    print("lab down: " + (", ".join(removed) if removed else "nothing was up"))
    return 0


def handle_demo(args: argparse.Namespace) -> int:
    from fleetcast.cli.common import print_json, print_table
    from fleetcast.lab import labdemo, vlab
    from fleetcast.lab.qemu import Accel

    runs = labdemo.demo(
        args.clients,
        args.firmware,
        state_dir=Path(args.state_dir),
        once=args.once,
        disk_size=args.disk_size,
        accel=Accel(args.accel),
        timeout=args.timeout,
        progress=_progress(args),
    )
    ok = all(r.state == labdemo.BOOTED for r in runs)
    if args.json:
        print_json({"clients": [r.as_json() for r in runs]})
        return 0 if ok else 1
    print_table(labdemo.HEADERS, labdemo.rows(runs))
    if args.once:
        print("lab removed (--once)")
    else:
        st = vlab.LabState.load(Path(args.state_dir))
        print(f"console: {st.server_url}/ (inside namespace {st.netns}: ip netns exec {st.netns} ...)")
        print("the lab stays up: fleetcast lab status | console CLIENT | down")
    return 0 if ok else 1
