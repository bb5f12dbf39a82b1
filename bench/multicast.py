"""Multicast deployment benchmark: time to all-done for N agents, fleetcast multicast against two baselines.

One lab network (``fleetcast.lab.netns``): the server and up to 16 agents in network namespaces on a
bridge, each agent writing to a loop device over a sparse file. Every link is limited with tc tbf (the
server's egress and each agent's downlink, ``--rate``, default 150mbit), so that the link and not these
2 cores is the limit as far as possible. For each N (default 1 4 8 16), in the same run:

1. **fleetcast multicast**: ``deploy --transport multicast --batch N --min-clients N``; time = the
   deployment's ``deployment-created`` to ``deployment-finished`` events (agents join, stream, verify,
   personalize); stream = ``multicast-started`` to ``multicast-finished``;
2. **fleetcast unicast**: ``deploy --batch N`` (every agent its own HTTP copy);
3. **FOG/Clonezilla method**: the root partition cloned once with ``partclone.ext4 -c | zstd -3``, then
   ``udp-sender --file IMG`` -> N x (``udp-receiver | zstd -dc | partclone.ext4 -r``) onto the agents'
   disks; time = sender start to the last restore's exit. (Only the root partition, which holds all
   the data; the partition table and the 100 MiB ESP are not sent: this favours the baseline.)

Printed per N: seconds, link utilization of the multicast stream (stored bytes x 8 / stream seconds /
link rate), bytes the server's interface sent, and the ratios. ``--loss`` adds an N=4 multicast run with
5 % loss (nftables) on one receiver and prints how much the others' time grew.

    .venv/bin/python bench/multicast.py [--rate 150mbit] [--data-mib 96] [--clients 1 4 8 16] [--loss]

Numbers are in docs/multicast.md (a shared 2-core machine: other jobs run beside it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from fleetcast.lab.deploy_demo import FleetLab, build_golden
from fleetcast.lab.netns import Node
from fleetcast.log import setup_logging

MiB = 1 << 20
IMAGE = "bench"


def parse_rate(text: str) -> float:
    units = {"kbit": 1e3, "mbit": 1e6, "gbit": 1e9}
    for unit, factor in units.items():
        if text.lower().endswith(unit):
            return float(text[: -len(unit)]) * factor
    raise SystemExit(f"rate {text!r}: use e.g. 150mbit")


def tx_bytes(node: Node) -> int:
    return int(node.run(["cat", "/sys/class/net/eth0/statistics/tx_bytes"]).stdout.decode().strip())


def _ts(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(event["ts"])).timestamp()


def deploy(lab: FleetLab, macs: list[str], *extra: str) -> dict[str, Any]:
    """One deployment to ``macs``; its times from the event log and the server's bytes sent."""
    before = tx_bytes(lab.net.server)
    proc = lab.cli(
        "deploy", IMAGE, "--server", lab.url, f"--token={lab.admin_token}", "--clients", ",".join(macs),
        "--disk", "0", "--batch", str(len(macs)), "--then", "none", "--wait", "--json", *extra,
    )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"deploy failed: {proc.stderr.decode()[-2000:]}")
    sent = tx_bytes(lab.net.server) - before
    dep = json.loads(proc.stdout)["deployment"]
    events = lab.events(dep)
    first = {e["type"]: e for e in reversed(events)}
    created, finished = _ts(first["deployment-created"]), _ts(first["deployment-finished"])
    out: dict[str, Any] = {"seconds": finished - created, "sent": sent, "deployment": dep}
    if "multicast-started" in first and "multicast-finished" in first:
        out["stream_seconds"] = _ts(first["multicast-finished"]) - _ts(first["multicast-started"])
    view = lab.get(f"/api/deployments/{dep}")
    out["per_client"] = {
        c["mac"]: (
            datetime.fromisoformat(c["finished_at"]) - datetime.fromisoformat(c["started_at"])
        ).total_seconds()
        for c in view["clients"]
        if c["started_at"] and c["finished_at"]
    }
    out["transports"] = [
        next((ch for ch in c["changes"] if ch.startswith("transport:")), "unicast") for c in view["clients"]
    ]
    return out


def partclone_image(golden: Path, work: Path) -> tuple[Path, int]:
    """The golden's root partition as a zstd-compressed partclone image; returns it and the partition's
    byte offset on the disk."""
    from fleetcast.disk.partitions import read_table

    table = read_table(golden)
    root = table.partition(2)
    offset = root.start * table.sector_size
    image = work / "root.pcl.zst"
    dev = subprocess.run(["losetup", "-f", "--show", "-r", "-o", str(offset),
                          "--sizelimit", str(root.size * table.sector_size), str(golden)],
                         check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    try:
        with open(image, "wb") as out:
            clone = subprocess.Popen(["partclone.ext4", "-c", "-q", "-s", dev, "-o", "-"],
                                     stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL)  # fmt: skip
            subprocess.run(["zstd", "-3", "-q", "-c"], stdin=clone.stdout, stdout=out, check=True)
            if clone.wait() != 0:
                raise SystemExit("partclone.ext4 -c failed")
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)
    return image, offset


def partclone_run(lab: FleetLab, n: int, image: Path, offset: int, port: int) -> dict[str, Any]:
    group = "239.255.43.1"
    before = tx_bytes(lab.net.server)
    receivers = []
    for agent in lab.agents[:n]:
        pipeline = (
            f"udp-receiver --nokbd --no-progress --portbase {port} --mcast-rdv-address {group} "
            "--interface eth0 --start-timeout 60 2>/dev/null | zstd -dc | "
            f"partclone.ext4 -r -q -C -s - -o {agent.disk} -E {offset}"
            " >/dev/null 2>&1"
        )
        receivers.append(subprocess.Popen(agent.node.cmd(["sh", "-c", pipeline])))
    time.sleep(1.0)
    start = time.monotonic()
    sender = subprocess.Popen(
        lab.net.server.cmd(["timeout", "900", "udp-sender", "--nokbd", "--no-progress", "--file", str(image),
                            "--portbase", str(port), "--mcast-rdv-address", group,
                            "--mcast-data-address", group,
                            "--interface", "eth0", "--min-receivers", str(n), "--max-wait", "60"]),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    codes = [r.wait(timeout=900) for r in receivers]
    seconds = time.monotonic() - start
    sender.wait(timeout=60)
    if any(codes) or sender.returncode:
        raise SystemExit(f"partclone baseline failed: receivers {codes}, sender {sender.returncode}")
    return {"seconds": seconds, "sent": tx_bytes(lab.net.server) - before}


def limit_links(lab: FleetLab, rate: str) -> None:
    lab.net.limit(lab.net.server, rate)
    for node in lab.net.clients:  # each agent's downlink: the hub's port towards it
        subprocess.run(["ip", "netns", "exec", lab.net.hub, "tc", "qdisc", "replace", "dev", node.hub_port,
                        "root", "tbf", "rate", rate, "burst", "512kb", "latency", "20ms"],
                       check=True)  # fmt: skip


def lossy(node: Node, on: bool) -> None:
    if on:
        node.run(["nft", "add", "table", "inet", "fcbench"])
        node.run(["nft", "add", "chain", "inet", "fcbench", "c", "{ type filter hook input priority 0; }"])
        node.run(["nft", "add", "rule", "inet", "fcbench", "c", "udp", "dport", "9000-9999",
                  "numgen", "random", "mod", "100", "<", "5", "drop"])  # fmt: skip
    else:
        node.run(["nft", "delete", "table", "inet", "fcbench"], check=False)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", default="150mbit")
    parser.add_argument("--data-mib", type=int, default=96, help="incompressible data added to the image")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--loss", action="store_true", help="also N=4 with 5 %% loss on one receiver")
    parser.add_argument("--no-unicast", action="store_true")
    parser.add_argument("--no-partclone", action="store_true")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    setup_logging(debug=False)
    rate = parse_rate(args.rate)
    work = Path(tempfile.mkdtemp(prefix="fleetcast-bench-mc-"))
    rows: list[dict[str, Any]] = []
    try:
        golden = work / "golden.img"
        build_golden(golden, size=512 * MiB, extra_mib=args.data_mib)
        image, offset = (None, 0) if args.no_partclone else partclone_image(golden, work)
        top = max(args.clients)
        with FleetLab(work / "lab", top, disk_size=512 * MiB) as lab:
            lab.capture_image(golden, IMAGE)
            lab.start_server()
            lab.add_disks()
            lab.start_agents()
            lab.wait_enrolled(top, timeout=180)
            limit_links(lab, args.rate)
            stored = sum(p.stat().st_size for p in (lab.data / "store" / "chunks").rglob("*") if p.is_file())
            agents = sorted(lab.agents, key=lambda a: a.node.mac)
            lab.agents[:] = agents
            print(f"image: {stored / 1e6:.1f} MB stored; links {args.rate}; partclone image "
                  f"{image.stat().st_size / 1e6 if image else 0:.1f} MB", flush=True)  # fmt: skip
            for n in args.clients:
                macs = [a.node.mac for a in agents[:n]]
                row: dict[str, Any] = {"n": n}
                row["multicast"] = deploy(lab, macs, "--transport", "multicast", "--min-clients", str(n))
                if not args.no_unicast:
                    row["unicast"] = deploy(lab, macs)
                if image is not None:
                    row["partclone"] = partclone_run(lab, n, image, offset, 9600)
                rows.append(row)
                print(_line(row, stored, rate), flush=True)
            if args.loss and len(agents) >= 4:
                macs = [a.node.mac for a in agents[:4]]
                clean = deploy(lab, macs, "--transport", "multicast", "--min-clients", "4")
                lossy(agents[0].node, True)
                try:
                    lost = deploy(lab, macs, "--transport", "multicast", "--min-clients", "4")
                finally:
                    lossy(agents[0].node, False)
                others = macs[1:]
                t_clean = max(clean["per_client"][m] for m in others)
                t_lost = max(lost["per_client"][m] for m in others)
                print(f"5 % loss on one of 4 receivers: the others' time {t_clean:.1f} s -> {t_lost:.1f} s "
                      f"({100 * (t_lost / t_clean - 1):+.1f} %); the lossy one: "
                      f"{lost['transports'][0]}")  # fmt: skip
        if rows and rows[0]["n"] == 1:
            t1 = rows[0]["multicast"]["seconds"]
            for row in rows[1:]:
                print(f"T({row['n']}) / T(1) = {row['multicast']['seconds'] / t1:.2f}")
        return 0
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _line(row: dict[str, Any], stored: int, rate: float) -> str:
    mc = row["multicast"]
    parts = [f"N={row['n']:>2}: multicast {mc['seconds']:6.1f} s"]
    if "stream_seconds" in mc and mc["stream_seconds"] > 0:
        parts.append(
            f"stream {mc['stream_seconds']:5.1f} s "
            f"({100 * stored * 8 / mc['stream_seconds'] / rate:4.1f} % of link)"
        )
    parts.append(f"sent {mc['sent'] / stored:4.2f} copies")
    for other in ("unicast", "partclone"):
        if other in row:
            o = row[other]
            parts.append(
                f"{other} {o['seconds']:6.1f} s ({o['seconds'] / mc['seconds']:4.2f}x, "
                f"sent {o['sent'] / stored:4.2f} copies)"
            )
    return "; ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
