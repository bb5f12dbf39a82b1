"""Virtual-lab benchmark: a QEMU machine from power-on to registered, deployed and booted from its disk.

For each firmware (BIOS, UEFI, UEFI Secure Boot) one lab (``fleetcast.lab.vlab``, TCG) with one
machine runs the ``lab demo`` flow: network boot (iPXE, or OVMF's PXE -> shim -> GRUB for Secure Boot)
into fleetcast's boot environment -> agent registered -> ``lab-debian`` deployed (HTTP) -> reboot ->
the server's script exits to the disk -> the deployed Debian reports. Seconds from power-on to each.

Baseline, the "just boot something" floor: the same QEMU machine network-booting Debian's netboot
installer (package debian-installer-12-netboot-amd64: ``linux`` + ``initrd.gz``, 41 MB) through the
same DHCP, iPXE and HTTP server, until the installer's first screen on the serial console. Printed
beside it: fleetcast's seconds to registered / the installer's seconds to its first screen.

    .venv/bin/python bench/lab.py [--firmware bios uefi secureboot] [--skip-baseline] [--json]
    .venv/bin/python bench/lab.py --timeline [--firmware bios uefi]

``--timeline``: power-on -> registered only, printing every serial-console line with its second since
power-on (iPXE's DHCP and downloads, the kernel, the init's steps, the agent's log), the breakdown
docs/boot-environment.md records.

Machines run one at a time (a 2-core machine shared with other jobs; the load average is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from fleetcast.lab import labdemo, vlab
from fleetcast.lab.qemu import Accel
from fleetcast.log import setup_logging

DI = Path("/usr/lib/debian-installer/images/12/amd64/text/debian-installer/amd64")
DI_PACKAGE = "debian-installer-12-netboot-amd64"
# The installer's first dialog on the serial console (newt, text frontend).
DI_FIRST_SCREEN = r"Select a language|Choose the language|Language:"


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def fleetcast_run(firmware: str, work: Path, timeout: float) -> dict[str, Any]:
    load_before = _load()
    runs = labdemo.demo(
        1, firmware, state_dir=work / f"lab-{firmware}", once=True, accel=Accel.TCG, timeout=timeout,
        progress=lambda line: print(f"    {line}", flush=True),
    )  # fmt: skip
    r = runs[0]
    return {
        "firmware": firmware,
        "state": r.state,
        "registered": r.since_power_on(r.registered_at),
        "done": r.since_power_on(r.done_at),
        "booted": r.since_power_on(r.booted_at),
        "secure_boot": r.secure_boot,
        "error": r.error,
        "load": f"{load_before} -> {_load()}",
    }


def baseline_run(firmware: str, work: Path, timeout: float) -> dict[str, Any]:
    """The same machine booting Debian's installer through the same server: seconds to its first screen."""
    env = work / f"di-{firmware}"
    env.mkdir(parents=True)
    shutil.copyfile(DI / "linux", env / "vmlinuz")
    shutil.copyfile(DI / "initrd.gz", env / "initrd.img")
    state_dir = work / f"lab-di-{firmware}"
    load_before = _load()
    state = vlab.up(1, firmware, state_dir=state_dir, accel=Accel.TCG, bootenv=env, start=False)
    try:
        record = state.machines[0]
        machine = state.machine(record)
        vlab.power_on(state, record)
        started = record.powered_on_at or time.time()
        machine.wait_serial(DI_FIRST_SCREEN, timeout)
        seconds = round(time.time() - started, 1)
        return {"firmware": firmware, "first_screen": seconds, "load": f"{load_before} -> {_load()}"}
    finally:
        vlab.down(state_dir)


class SerialTimeline:
    """Polls a machine's serial log and stamps each new line with seconds since ``t0`` (a thread)."""

    def __init__(self, path: Path, t0: float, poll: float = 0.05) -> None:
        self.path, self.t0, self.poll = path, t0, poll
        self.lines: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        offset, partial = 0, ""
        while not self._stop.is_set():
            try:
                with open(self.path, "rb") as f:
                    f.seek(offset)
                    chunk = f.read()
            except OSError:
                chunk = b""
            if chunk:
                offset += len(chunk)
                now = round(time.time() - self.t0, 2)
                text = partial + chunk.decode(errors="replace")
                parts = re.split(r"[\r\n]+", text)
                partial = parts.pop()
                self.lines += [(now, ANSI.sub("", p).strip()) for p in parts if ANSI.sub("", p).strip()]
            self._stop.wait(self.poll)

    def stop(self) -> list[tuple[float, str]]:
        self._stop.set()
        self._thread.join()
        return self.lines


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|[\x00-\x08\x0b-\x1f]")


def timeline_run(firmware: str, work: Path, timeout: float) -> dict[str, Any]:
    """Power-on -> registered with the serial console's lines stamped (seconds since power-on)."""
    state_dir = work / f"lab-tl-{firmware}"
    load_before = _load()
    state = vlab.up(1, firmware, state_dir=state_dir, accel=Accel.TCG, start=False)
    try:
        record = state.machines[0]
        machine = state.machine(record)
        vlab.power_on(state, record)
        started = record.powered_on_at or time.time()
        follower = SerialTimeline(machine.serial_log, started)
        runs = labdemo.runs_for(state)
        try:
            labdemo.wait_registered(state, runs, timeout, lambda line: None)
        finally:
            lines = follower.stop()
        return {
            "firmware": firmware,
            "registered": runs[0].since_power_on(runs[0].registered_at),
            "lines": lines,
            "load": f"{load_before} -> {_load()}",
        }
    finally:
        vlab.down(state_dir)


def print_timeline(result: dict[str, Any]) -> None:
    print(f"{result['firmware']}: registered after {result['registered']} s (load {result['load']})")
    last = None
    for at, line in result["lines"]:
        if line == last:
            continue
        last = line
        print(f"  {at:7.2f}  {line[:150]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--firmware", nargs="+", default=["bios", "uefi", "secureboot"])
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--timeout", type=float, default=2400)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--timeline", action="store_true", help="to registered only, serial lines stamped")
    args = parser.parse_args()
    setup_logging(debug=False, quiet=True)
    if os.geteuid() != 0:
        print("bench/lab.py needs root (network namespaces, taps)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="fleetcast-bench-lab-"))
    if args.timeline:
        try:
            timelines = [timeline_run(fw, work, args.timeout) for fw in args.firmware]
        finally:
            shutil.rmtree(work, ignore_errors=True)
        if args.json:
            print(json.dumps(timelines, indent=2))
        for t in timelines:
            print_timeline(t)
        return 0
    results: dict[str, Any] = {"fleetcast": [], "baseline": [], "baseline_note": None}
    try:
        for fw in args.firmware:
            print(f"fleetcast, {fw} (load {_load()}):", flush=True)
            results["fleetcast"].append(fleetcast_run(fw, work, args.timeout))
        if args.skip_baseline:
            results["baseline_note"] = "skipped (--skip-baseline)"
        elif not (DI / "linux").is_file():
            results["baseline_note"] = (
                f"Debian's netboot installer is not installed (apt-get install {DI_PACKAGE})"
            )
        else:
            # Secure Boot: Debian's installer kernel is signed too, but the lab's SB chain loads the
            # server's boot environment through GRUB; BIOS and UEFI iPXE are the comparable floor.
            for fw in [f for f in args.firmware if f != "secureboot"]:
                print(f"baseline (Debian installer), {fw} (load {_load()}):", flush=True)
                results["baseline"].append(baseline_run(fw, work, args.timeout))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    floor = {b["firmware"]: b["first_screen"] for b in results["baseline"]}
    floor_load = {b["firmware"]: b["load"] for b in results["baseline"]}
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print()
    print(f"{'firmware':<11} {'state':<17} {'registered':>10} {'done':>7} {'booted':>7}  {'d-i':>9}  ratio")
    for r in results["fleetcast"]:
        fw = r["firmware"] if r["firmware"] in floor else "uefi" if r["firmware"] == "secureboot" else ""
        base = floor.get(fw)
        ratio = f"{r['registered'] / base:.2f}x" if base and r["registered"] else "-"
        cells = [r["registered"], r["done"], r["booted"]]
        shown = ["-" if c is None else f"{c:.0f}" for c in cells]
        print(
            f"{r['firmware']:<11} {r['state']:<17} {shown[0]:>10} {shown[1]:>7} {shown[2]:>7}  "
            f"{base if base else '-':>9}  {ratio}   (load {r['load']}; d-i: {floor_load.get(fw, '-')})"
        )
    if results["baseline_note"]:
        print(f"baseline: {results['baseline_note']}")
    print("seconds from power-on; ratio = fleetcast to registered / Debian installer to its first screen")
    print("load = 1/5/15-min load average before -> after each run: compare ratios only at similar loads")
    return 0


if __name__ == "__main__":
    sys.exit(main())
