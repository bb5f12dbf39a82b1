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
   udp-sender runs with udpcast's defaults, as FOG and Clonezilla run it; ``--tuned-baseline`` adds
   the same method with fleetcast's ``--rexmit-hello-interval`` (transport/multicast.py), to show what
   that flag alone is worth.

Printed per N: seconds, link utilization of the multicast stream (stored bytes x 8 / stream seconds /
link rate), bytes the server's interface sent, the CPU seconds each client used (the agent with its
udp-receiver; the baseline's receiver pipeline) and the server, the ratios, and each multicast
deployment's timeline (where its seconds go, from the event log). Then an N=4 multicast run with 5 %
loss (nftables) on one receiver, in turn with a clean N=4 run (``--loss-pairs``, default 2 pairs): how
much the others' time grew (target <= 10 %; ``--no-loss`` skips it).

**Engines** (the issue's comparison of udpcast with uftp and NORM; ``--no-engines`` skips it): the same
random file (``--engine-mib``, default 48) sent to 4 receivers in the same namespaces on the same links,
receivers writing to a file: udpcast (``udp-sender --file`` -> ``udp-receiver``, with udpcast's defaults
and with fleetcast's hello interval), uftp at a fixed rate
(``uftp -R`` = the link rate) and with its TFMCC congestion control (``uftp -C tfmcc``) to ``uftpd``
daemons; NORM is reported as not measurable (Debian ships only the library, libnorm1, and no
sender/receiver programs). Needs the Debian packages udpcast, partclone, zstd, nftables (and uftp for
the engine comparison; it is skipped with a note when missing). Outside the venv it starts itself again
with the repository's ``.venv/bin/python``. About 10-15 minutes on this 2-core machine under load.

    sudo python bench/multicast.py [--rate 150mbit] [--data-mib 96] [--clients 1 4 8 16] [--no-loss]

Numbers are in docs/multicast.md (a shared 2-core machine: other jobs run beside it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

try:
    import fleetcast  # noqa: F401
except ImportError:  # ``python bench/multicast.py`` outside the venv: start again with the repository's
    _VENV = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "python"
    if _VENV.exists() and Path(sys.executable).absolute() != _VENV:
        os.execv(_VENV, [str(_VENV), *sys.argv])
    raise

from fleetcast.lab.deploy_demo import FleetLab, build_golden
from fleetcast.lab.netns import Node
from fleetcast.log import setup_logging
from fleetcast.transport.multicast import HELLO_INTERVAL_MS

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


def cpu_seconds(pid: int | None) -> float:
    """CPU time of a process and of its children it has waited for (utime+stime+cutime+cstime)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def deploy(lab: FleetLab, macs: list[str], *extra: str) -> dict[str, Any]:
    """One deployment to ``macs``; its times from the event log, the server's bytes sent, CPU used."""
    agents = [a for a in lab.agents if a.node.mac in macs]
    server_pid = lab.server_proc.pid if lab.server_proc is not None else None
    cpu0 = [cpu_seconds(a.proc.pid if a.proc else None) for a in agents], cpu_seconds(server_pid)
    before = tx_bytes(lab.net.server)
    proc = lab.cli(
        "deploy", IMAGE, "--server", lab.url, f"--token={lab.admin_token}", "--clients", ",".join(macs),
        "--disk", "0", "--batch", str(len(macs)), "--then", "none", "--wait", "--json", *extra,
    )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"deploy failed: {proc.stderr.decode()[-2000:]}")
    sent = tx_bytes(lab.net.server) - before
    cpu1 = [cpu_seconds(a.proc.pid if a.proc else None) for a in agents], cpu_seconds(server_pid)
    dep = json.loads(proc.stdout)["deployment"]
    events = lab.events(dep)
    first = {e["type"]: e for e in reversed(events)}
    created, finished = _ts(first["deployment-created"]), _ts(first["deployment-finished"])
    out: dict[str, Any] = {
        "seconds": finished - created, "sent": sent, "deployment": dep,
        "client_cpu": sum(b - a for a, b in zip(cpu0[0], cpu1[0], strict=True)) / max(1, len(agents)),
        "server_cpu": cpu1[1] - cpu0[1],
    }  # fmt: skip
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
    out["timeline"] = timeline(events)
    out["transports"] = [
        next((ch for ch in c["changes"] if ch.startswith("transport:")), "unicast") for c in view["clients"]
    ]
    return out


# the phases of one deployment, in the order they happen: (label, event type, phase of client-progress)
_MARKS = (
    ("task handed out (heartbeat)", "client-assigned", None),
    ("agent took it (manifest, index, disk)", "client-progress", "selecting-disk"),
    ("joined the session", "client-multicast-joined", None),
    ("udp-sender started", "multicast-started", None),
    ("restore writes", "client-progress", "writing"),
    ("stream ended", "multicast-finished", None),
    ("multicast part reported", "client-transport", None),
    ("personalizing", "client-progress", "personalizing"),
    ("finishing", "client-progress", "finishing"),
    ("client done", "client-done", None),
    ("deployment finished", "deployment-finished", None),
)


def timeline(events: list[dict[str, Any]]) -> list[tuple[str, float, float]]:
    """Where a deployment's seconds go: for each mark, the first and the last client's time, in
    seconds after ``deployment-created`` (from the event log; a mark no event reached is left out)."""
    created = next(_ts(e) for e in events if e["type"] == "deployment-created")
    out = []
    for label, kind, phase in _MARKS:
        times: dict[str, float] = {}
        for e in events:
            if e["type"] != kind or (phase is not None and e.get("data", e).get("phase") != phase):
                continue
            key = e.get("mac") or e.get("data", {}).get("mac") or "-"
            times.setdefault(key, _ts(e) - created)  # the first of each client
        if times:
            out.append((label, min(times.values()), max(times.values())))
    return out


def print_timeline(n: int, what: str, marks: list[tuple[str, float, float]]) -> None:
    print(f"timeline N={n} {what} (seconds after deployment-created: first client .. last client):")
    for label, first, last in marks:
        print(f"  {label:40} {first:6.2f} .. {last:6.2f}")


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


def partclone_run(lab: FleetLab, n: int, image: Path, offset: int, port: int, *extra: str) -> dict[str, Any]:
    """The FOG/Clonezilla method to the first ``n`` agents' disks; ``extra``: more udp-sender options."""
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
    cpu0 = _children_cpu()
    start = time.monotonic()
    sender = subprocess.Popen(
        lab.net.server.cmd(["timeout", "900", "udp-sender", "--nokbd", "--no-progress", "--file", str(image),
                            "--portbase", str(port), "--mcast-rdv-address", group,
                            "--mcast-data-address", group,
                            "--interface", "eth0", "--min-receivers", str(n), "--max-wait", "60", *extra]),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    codes = [r.wait(timeout=900) for r in receivers]
    seconds = time.monotonic() - start
    sender.wait(timeout=60)
    if any(codes) or sender.returncode:
        raise SystemExit(f"partclone baseline failed: receivers {codes}, sender {sender.returncode}")
    # the receivers' pipelines and the sender, all children of this process (the sender's share is small)
    return {"seconds": seconds, "sent": tx_bytes(lab.net.server) - before,
            "client_cpu": (_children_cpu() - cpu0) / n}  # fmt: skip


def _timed(
    receivers: list[subprocess.Popen[bytes]], sender: subprocess.Popen[bytes], start: float, what: str
) -> float:
    """Seconds from ``start`` until the sender and every receiver exited (SystemExit when one failed)."""
    codes = [r.wait(timeout=600) for r in receivers]
    rc = sender.wait(timeout=600)
    seconds = time.monotonic() - start
    if any(codes) or rc:
        raise SystemExit(f"{what} failed: receivers {codes}, sender {rc}")
    return seconds


def udpcast(
    server: Node,
    nodes: list[Node],
    data: Path,
    *,
    outs: list[str],
    port: int,
    group: str,
    extra: tuple[str, ...],
) -> float:
    """udp-sender --file -> one udp-receiver per node (started first, as the baseline does), each
    writing to its ``outs`` entry; ``extra``: more udp-sender options; seconds from the sender's start
    until every process exited."""
    receivers = [
        subprocess.Popen(node.cmd(["sh", "-c",
            f"udp-receiver --nokbd --no-progress --portbase {port} --mcast-rdv-address {group} "
            f"--interface eth0 --start-timeout 60 --file {out} 2>/dev/null"]))
        for node, out in zip(nodes, outs, strict=True)
    ]  # fmt: skip
    time.sleep(1.0)
    start = time.monotonic()
    sender = subprocess.Popen(server.cmd([
        "timeout", "600", "udp-sender", "--nokbd", "--no-progress", "--file", str(data), "--portbase",
        str(port), "--mcast-rdv-address", group, "--mcast-data-address", group, "--interface", "eth0",
        "--min-receivers", str(len(nodes)), "--max-wait", "60", *extra]), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return _timed(receivers, sender, start, f"udpcast probe ({len(nodes)} receivers)")


def engine_udpcast(lab: FleetLab, n: int, data: Path, work: Path, port: int, *extra: str) -> float:
    """udp-sender --file -> n udp-receivers writing to files; ``extra``: more udp-sender options."""
    nodes = [a.node for a in lab.agents[:n]]
    outs = [str(work / f"udpcast-{i}.bin") for i in range(n)]
    return udpcast(lab.net.server, nodes, data, outs=outs, port=port, group="239.255.44.1", extra=extra)


def engine_uftp(lab: FleetLab, n: int, data: Path, work: Path, rate: float, *, tfmcc: bool) -> float:
    """uftp to n ``uftpd -d`` daemons (each ended by its PID afterwards); time = uftp's run, which
    includes its announce/register phase and ends when every client has the file."""
    daemons = []
    try:
        for i, agent in enumerate(lab.agents[:n]):
            dest = work / f"uftp-{i}"
            dest.mkdir(exist_ok=True)
            daemons.append(subprocess.Popen(agent.node.cmd(
                ["uftpd", "-d", "-q", "-I", "eth0", "-M", "239.255.44.11", "-p", "1044", "-D", str(dest),
                 "-x", "0"]), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
        time.sleep(1.0)
        argv = ["timeout", "600", "uftp", "-I", "eth0", "-M", "239.255.44.11", "-P", "239.255.44.12",
                "-p", "1044", "-x", "0", "-Y", "none"]  # fmt: skip
        argv += ["-C", "tfmcc"] if tfmcc else ["-R", str(round(rate / 1000))]
        start = time.monotonic()
        sender = subprocess.run(lab.net.server.cmd([*argv, str(data)]), capture_output=True, check=False)
        seconds = time.monotonic() - start
        got = [p.stat().st_size for p in (work / f"uftp-{i}" / data.name for i in range(n)) if p.exists()]
        if sender.returncode != 0 or got != [data.stat().st_size] * n:
            raise SystemExit(f"uftp engine probe failed (status {sender.returncode}, files {got}): "
                             f"{sender.stderr.decode()[-800:]}")  # fmt: skip
        return seconds
    finally:
        for d in daemons:
            d.terminate()
        for d in daemons:
            try:
                d.wait(timeout=10)
            except subprocess.TimeoutExpired:
                d.kill()
                d.wait()


def engines(lab: FleetLab, work: Path, mib: int, rate: float, rate_text: str) -> None:
    """The issue's engine comparison: udpcast against uftp (fixed rate, TFMCC) and NORM, same links."""
    n = min(4, len(lab.agents))
    data = work / "engine.bin"
    with open(data, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(MiB))
    size = data.stat().st_size
    results: dict[str, float] = {"udpcast": engine_udpcast(lab, n, data, work, 9700)}
    # as fleetcast runs it (transport/multicast.py): the 2 s wait before the first byte gone
    results[f"udpcast hello {HELLO_INTERVAL_MS} ms"] = engine_udpcast(
        lab, n, data, work, 9702, "--rexmit-hello-interval", str(HELLO_INTERVAL_MS)
    )
    if shutil.which("uftp") and shutil.which("uftpd"):
        results["uftp -R (fixed rate)"] = engine_uftp(lab, n, data, work, rate, tfmcc=False)
        results["uftp -C tfmcc"] = engine_uftp(lab, n, data, work, rate, tfmcc=True)
    else:
        print("engines: uftp not installed (apt-get install uftp): not measured")
    print(f"engines, {n} receivers, {mib} MiB of random data, links {rate_text}:")
    base = results["udpcast"]
    for name, seconds in results.items():
        print(f"  {name:24} {seconds:6.2f} s  {size * 8 / seconds / 1e6:6.1f} Mbit/s  "
              f"({seconds / base:4.2f}x udpcast's time)")  # fmt: skip
    print(
        "  NORM (libnorm1)          not measured: Debian ships the library only, no sender/receiver"
        " programs (a binding of our own would be needed)",
        flush=True,
    )
    for path in work.glob("udpcast-*.bin"):
        path.unlink()
    for path in work.glob("uftp-*"):
        shutil.rmtree(path, ignore_errors=True)
    data.unlink()


def floor_run(lab: FleetLab, n: int, data: Path, work: Path, port: int, *, sink: str) -> float:
    """The floor: bare ``udp-sender --file`` (fleetcast's hello interval) -> ``n`` bare udp-receivers on
    the lab's client namespaces (no server, no agent, no verify/fsync), each writing to ``/dev/null``
    (``sink`` "null") or to a file on the work directory's disk (``sink`` "file")."""
    outs = ["/dev/null" if sink == "null" else str(work / f"floor-{i}.bin") for i in range(n)]
    hello = ("--rexmit-hello-interval", str(HELLO_INTERVAL_MS))
    nodes = lab.net.clients[:n]
    seconds = udpcast(lab.net.server, nodes, data, outs=outs, port=port, group="239.255.44.21", extra=hello)
    for path in work.glob("floor-*.bin"):
        path.unlink()
    return seconds


def floors(
    lab: FleetLab, work: Path, size: int, rates: list[str], clients: list[int]
) -> dict[tuple[str, str], dict[int, float]]:
    """The floor of T(N)/T(1) and utilization on this machine: ``size`` bytes of random data (the
    image's stored size) at each link rate in ``rates``, to ``/dev/null`` and to a file; printed with
    the load average beside each line. The links are left at the last rate (the caller resets them)."""
    data = work / "floor.bin"
    with open(data, "wb") as f:
        for left in range(size, 0, -MiB):
            f.write(os.urandom(min(MiB, left)))
    results: dict[tuple[str, str], dict[int, float]] = {}
    for rate_text in rates:
        limit_links(lab, rate_text)
        rate = parse_rate(rate_text)
        for sink in ("null", "file"):
            times = {n: floor_run(lab, n, data, work, 9800, sink=sink) for n in clients}
            results[(rate_text, sink)] = times
            t1 = times.get(1)
            parts = [f"floor {rate_text:>8} -> {sink:4}:"]
            for n, seconds in times.items():
                parts.append(f"N={n} {seconds:5.2f} s ({100 * size * 8 / seconds / rate:4.1f} % of link)")
            if t1:
                parts.append("T(N)/T(1) " + "/".join(f"{times[n] / t1:4.2f}" for n in times if n != 1))
            parts.append(f"load {os.getloadavg()[0]:.1f}")
            print("  ".join(parts), flush=True)
    data.unlink()
    return results


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


def loss_run(lab: FleetLab, nodes: list[Node], pairs: int) -> str:
    """The issue's loss target: N=4 multicast, clean then with 5 % loss on the first receiver, ``pairs``
    times in turn (one pair is a single sample of a noisy machine); the others' time (start of writing
    to done, the slowest of the three) compared, the means of the pairs."""
    macs = [n.mac for n in nodes]
    others = macs[1:]
    clean: list[dict[str, Any]] = []
    lost: list[dict[str, Any]] = []
    for _ in range(pairs):
        clean.append(deploy(lab, macs, "--transport", "multicast", "--min-clients", "4"))
        lossy(nodes[0], True)
        try:
            lost.append(deploy(lab, macs, "--transport", "multicast", "--min-clients", "4"))
        finally:
            lossy(nodes[0], False)

    def mean(runs: list[dict[str, Any]], key: str | None = None) -> float:
        values = [r["seconds"] if key is None else max(r["per_client"][m] for m in others) for r in runs]
        return float(sum(values)) / len(values)

    t_clean, t_lost = mean(clean, "others"), mean(lost, "others")
    grew = 100 * (t_lost / t_clean - 1)
    return (
        f"5 % loss on one of 4 receivers (target: the others' time grows <= 10 %; mean of {pairs} pairs): "
        f"the others' time {t_clean:.1f} s -> {t_lost:.1f} s ({grew:+.1f} %), all done {mean(clean):.1f} s "
        f"-> {mean(lost):.1f} s; the lossy one: {lost[-1]['transports'][0]}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", default="150mbit")
    parser.add_argument("--data-mib", type=int, default=96, help="incompressible data added to the image")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--no-loss", dest="loss", action="store_false",
                        help="skip the N=4 run with 5 %% loss on one receiver (run by default)")  # fmt: skip
    parser.add_argument("--no-unicast", action="store_true")
    parser.add_argument("--no-partclone", action="store_true")
    parser.add_argument("--tuned-baseline", action="store_true",
                        help="also the baseline with fleetcast's hello interval")  # fmt: skip
    parser.add_argument("--loss-pairs", type=int, default=2, help="clean/lossy N=4 runs in turn (2)")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--no-engines", action="store_true", help="skip the udpcast/uftp/NORM comparison")
    parser.add_argument("--engine-mib", type=int, default=48)
    parser.add_argument(
        "--floor-rates",
        nargs="*",
        default=["100mbit", "200mbit"],
        help="link rates of the bare-udpcast floor (also at --rate); none: no floor",
    )
    parser.add_argument(
        "--floor-only",
        action="store_true",
        help="only the floor (no server, agents or deploys; --floor-mib sets the size)",
    )
    parser.add_argument("--floor-mib", type=int, default=0, help="floor data size (default: the image's)")
    args = parser.parse_args()
    setup_logging(debug=False)
    rate = parse_rate(args.rate)
    work = Path(tempfile.mkdtemp(prefix="fleetcast-bench-mc-"))
    rows: list[dict[str, Any]] = []
    floor_rates = list(dict.fromkeys([args.rate, *args.floor_rates])) if args.floor_rates else []
    if args.floor_only:
        try:
            with FleetLab(work / "lab", max(args.clients), net_prefix="fc-mc-") as lab:
                floors(lab, work, (args.floor_mib or 120) * MiB, floor_rates, sorted({1, *args.clients}))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return 0
    floor: dict[tuple[str, str], dict[int, float]] = {}
    try:
        golden = work / "golden.img"
        build_golden(golden, size=512 * MiB, extra_mib=args.data_mib)
        image, offset = (None, 0) if args.no_partclone else partclone_image(golden, work)
        top = max(args.clients)
        with FleetLab(work / "lab", top, disk_size=512 * MiB, net_prefix="fc-mc-") as lab:
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
            if not args.no_engines:
                engines(lab, work, args.engine_mib, rate, args.rate)
            if floor_rates:
                size = args.floor_mib * MiB or stored
                floor = floors(lab, work, size, floor_rates, sorted({1, *args.clients}))
                limit_links(lab, args.rate)
            for n in args.clients:
                macs = [a.node.mac for a in agents[:n]]
                row: dict[str, Any] = {"n": n}
                row["multicast"] = deploy(lab, macs, "--transport", "multicast", "--min-clients", str(n))
                if not args.no_unicast:
                    row["unicast"] = deploy(lab, macs)
                if image is not None:
                    row["partclone"] = partclone_run(lab, n, image, offset, 9600)
                if image is not None and args.tuned_baseline:
                    row["partclone-tuned"] = partclone_run(
                        lab, n, image, offset, 9602, "--rexmit-hello-interval", str(HELLO_INTERVAL_MS)
                    )
                rows.append(row)
                print(_line(row, stored, rate), flush=True)
                print_timeline(n, "multicast", row["multicast"]["timeline"])
            if args.loss and len(agents) >= 4:
                loss = loss_run(lab, [a.node for a in agents[:4]], args.loss_pairs)
                print(loss, flush=True)
                if rows:
                    rows[-1]["loss"] = loss  # repeated in the summary
        _summary(rows, stored, rate, floor.get((args.rate, "null")))
        return 0
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _summary(
    rows: list[dict[str, Any]], stored: int, rate: float, floor: dict[int, float] | None = None
) -> None:
    """The ratios the issue's targets are stated in, one line each; ``floor``: bare udpcast's seconds
    per N at the same link rate (to /dev/null), printed beside ours."""
    if not rows:
        return
    print("ratios (targets: T(16)/T(1) <= 1.10, utilization >= 90 %, baseline/multicast > 1 at every N):")
    t1 = rows[0]["multicast"]["seconds"] if rows[0]["n"] == 1 else None
    for row in rows:
        mc = row["multicast"]
        parts = [f"  N={row['n']:>2}:"]
        if t1:
            parts.append(f"T(N)/T(1) {mc['seconds'] / t1:4.2f}")
        if floor and 1 in floor and row["n"] in floor:
            parts.append(f"(floor {floor[row['n']] / floor[1]:4.2f})")
        if mc.get("stream_seconds"):
            parts.append(f"utilization {100 * stored * 8 / mc['stream_seconds'] / rate:5.1f} %")
        for other in ("unicast", "partclone", "partclone-tuned"):
            if other in row:
                parts.append(f"{other}/multicast {row[other]['seconds'] / mc['seconds']:4.2f}")
        if "partclone" in row and mc.get("stream_seconds"):
            parts.append(f"partclone/stream {row['partclone']['seconds'] / mc['stream_seconds']:4.2f}")
        print(" ".join(parts))
    if "loss" in rows[-1]:
        print(f"  {rows[-1]['loss']}")
    print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)


def _line(row: dict[str, Any], stored: int, rate: float) -> str:
    mc = row["multicast"]
    parts = [f"N={row['n']:>2}: multicast {mc['seconds']:6.1f} s"]
    if "stream_seconds" in mc and mc["stream_seconds"] > 0:
        parts.append(
            f"stream {mc['stream_seconds']:5.1f} s "
            f"({100 * stored * 8 / mc['stream_seconds'] / rate:4.1f} % of link)"
        )
    parts.append(f"sent {mc['sent'] / stored:4.2f} copies")
    parts.append(f"CPU/client {mc['client_cpu']:5.1f} s, server {mc['server_cpu']:5.1f} s")
    for other in ("unicast", "partclone", "partclone-tuned"):
        if other in row:
            o = row[other]
            parts.append(
                f"{other} {o['seconds']:6.1f} s ({o['seconds'] / mc['seconds']:4.2f}x, "
                f"sent {o['sent'] / stored:4.2f} copies, CPU/client {o['client_cpu']:5.1f} s)"
            )
    return "; ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
