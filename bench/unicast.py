"""Unicast deployment benchmark: aggregate throughput of N agents as a share of the server's link.

One lab network (``fleetcast.lab.netns``): the server in one namespace, 8 agents in 8 others, each with
a loop-device disk. The server's link (its eth0 egress, which carries every chunk) is limited with
``tc qdisc ... tbf rate 500mbit burst 512kb latency 20ms``. For N = 4 and N = 8:

1. fleetcast: ``deploy --batch N`` of the sample Linux image (GPT + ext4, plus incompressible files so
   the link, not zstd, is the limit) to N agents; aggregate = N x stored image bytes / (last finish -
   first start), from the deployment's own started_at/finished_at;
2. baseline in the same run and namespaces: N concurrent plain HTTP downloads (curl from
   ``python3 -m http.server``) of a file of the same size; aggregate = N x size / wall time.

Printed: both aggregates in Mbit/s, as a share of the link, and fleetcast / baseline. The target is
fleetcast >= 90 % of the link. Timings come from a shared 2-core machine.

    .venv/bin/python bench/unicast.py [--rate 500mbit] [--data-mib 96] [--clients 4 8]

Measured on the shared 2-core lab machine (2026-11-24, 101 MB stored per client, 16 MiB packs):
quiet machine: 4 agents 93.3-93.5 % of the link, 8 agents 93.4-94.4 % (curl: 94.8-95.3 %, ratio
0.98-0.99x); under load from other jobs (load average ~5) 85-90 %; with --data-mib 192, 94.6 % and 90.7 %
under load. The steady state is ~96 % (480 Mbit/s); what is lost is the first half second (all agents
starting at once) and CPU contention on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from fleetcast.lab.deploy_demo import FleetLab, build_golden
from fleetcast.log import setup_logging

MiB = 1 << 20


def parse_rate(text: str) -> float:
    units = {"kbit": 1e3, "mbit": 1e6, "gbit": 1e9}
    for unit, factor in units.items():
        if text.lower().endswith(unit):
            return float(text[: -len(unit)]) * factor
    raise SystemExit(f"rate {text!r}: use e.g. 500mbit")


def fleetcast_run(lab: FleetLab, macs: list[str], stored: int) -> tuple[float, float, float]:
    """Deploy to ``macs`` at once. Returns (aggregate bits/s while delivering, delivery seconds, seconds
    from the first client's start to the last one's finish including personalizing).

    Delivery ends, per client, when it leaves the ``writing`` phase (its next progress report, sent at
    once, says ``personalizing`` or ``finishing``); the event log has both instants."""
    proc = lab.cli(
        "deploy", "bench", "--server", lab.url, f"--token={lab.admin_token}", "--clients", ",".join(macs),
        "--disk", "0", "--batch", str(len(macs)), "--then", "none", "--wait", "--json",
    )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"deploy failed: {proc.stderr.decode(errors='replace')[-2000:]}")
    result = json.loads(proc.stdout)
    clients = result["clients"]
    bad = [c for c in clients if c["state"] != "done"]
    if bad:
        raise SystemExit(f"deploy failed for {bad}")
    start = min(datetime.fromisoformat(c["started_at"]) for c in clients)
    end = max(datetime.fromisoformat(c["finished_at"]) for c in clients)
    delivered: dict[str, datetime] = {}
    for ev in lab.events(result["deployment"]):
        if ev["type"] == "client-progress" and ev.get("phase") in ("personalizing", "finishing"):
            delivered.setdefault(ev["mac"], datetime.fromisoformat(ev["ts"]))
    if len(delivered) != len(macs):
        raise SystemExit(
            f"the event log shows the end of writing for {len(delivered)} of {len(macs)} clients"
        )
    window = (max(delivered.values()) - start).total_seconds()
    return len(macs) * stored * 8 / window, window, (end - start).total_seconds()


def baseline_run(lab: FleetLab, n: int, size: int, port: int) -> tuple[float, float]:
    """N concurrent curl downloads of a ``size``-byte file; return (aggregate bits/s, seconds)."""
    url = f"http://{lab.net.server.ip}:{port}/blob.bin"
    procs = []
    t0 = time.monotonic()
    for node in lab.net.clients[:n]:
        procs.append(node.spawn(["curl", "-sS", "--fail", "-o", "/dev/null", url]))
    for p in procs:
        if p.wait(timeout=600) != 0:
            raise SystemExit("baseline download failed")
    seconds = time.monotonic() - t0
    for node in lab.net.clients[:n]:
        node.procs[:] = [p for p in node.procs if p not in procs]
    return n * size * 8 / seconds, seconds


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", default="500mbit")
    parser.add_argument("--data-mib", type=int, default=96, help="incompressible MiB added to the image")
    parser.add_argument("--clients", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    setup_logging(quiet=True)
    if os.geteuid() != 0:
        print("needs root (network namespaces, loop devices)", file=sys.stderr)
        return 2
    link = parse_rate(args.rate)
    most = max(args.clients)
    work = Path(tempfile.mkdtemp(prefix="fleetcast-bench-"))
    rows = []
    try:
        golden = work / "golden.img"
        build_golden(golden, size=(args.data_mib + 160) * MiB, extra_mib=args.data_mib)
        with FleetLab(work, most, disk_size=(args.data_mib + 160) * MiB, net_prefix="fc-mc-") as lab:
            manifest = lab.capture_image(golden, "bench")
            stored = manifest.stored_bytes
            lab.start_server()
            lab.add_disks()
            lab.start_agents()
            clients = lab.wait_enrolled(most)
            macs = sorted(c["mac"] for c in clients)
            lab.net.limit(lab.net.server, args.rate)
            www = work / "www"
            www.mkdir()
            with open(www / "blob.bin", "wb") as f:
                f.write(os.urandom(stored))
            port = 8099
            lab.net.server.spawn(
                [
                    "/usr/bin/python3",
                    "-m",
                    "http.server",
                    "--bind",
                    lab.net.server.ip,
                    str(port),
                    "--directory",
                    www,
                ]
            )
            time.sleep(1.0)
            print(
                f"link {args.rate} (tbf on the server's eth0); image: {stored / 1e6:.1f} MB stored per client"
            )
            for n in sorted(args.clients):
                base_bps, base_s = baseline_run(lab, n, stored, port)
                fc_bps, fc_s, total_s = fleetcast_run(lab, macs[:n], stored)
                rows.append((n, fc_bps, fc_s, total_s, base_bps, base_s))
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(
        f"{'agents':>6}  {'fleetcast (delivery)':>27}  {'plain HTTP (curl)':>27}  {'ratio':>6}  "
        f"{'fleetcast incl. personalize':>27}"
    )
    for n, fc_bps, fc_s, total_s, base_bps, base_s in rows:
        whole = n * (fc_bps * fc_s / n) / total_s
        print(
            f"{n:>6}  {fc_bps / 1e6:7.1f} Mbit/s {100 * fc_bps / link:5.1f}% {fc_s:6.1f} s  "
            f"{base_bps / 1e6:7.1f} Mbit/s {100 * base_bps / link:5.1f}% {base_s:6.1f} s  "
            f"{fc_bps / base_bps:5.2f}x  "
            f"{whole / 1e6:7.1f} Mbit/s {100 * whole / link:5.1f}% {total_s:6.1f} s"
        )
    met = all(fc / link >= 0.9 for _, fc, _, _, _, _ in rows)
    print(f"target >= 90 % of the link in aggregate (delivery): {'met' if met else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
