"""Network capture benchmark (issue 11): ``fleetcast capture`` through a tc-limited link, beside the
FOG/Clonezilla method over the same link.

One run, one generated disk (the image-engine bench's: about 2 GiB, GPT: FAT32 ESP, NTFS and ext4 each ~60 %
full, ``fleetcast.lab.sample_disk``) on the loop device of an agent in a network namespace; ``fleetcast
serve`` in another; the agent's uplink limited with ``tc tbf`` (default 500 Mbit/s):

1. ``fleetcast capture MAC v1 --wait --json`` into an empty store;
2. change 1 % of the files on NTFS and ext4 (bench/image_engine.py's ``change_files``), capture ``v2``;
3. the FOG/Clonezilla method: per partition ``partclone.<fs> -c -s DEVpN -o - | zstd -T0 -3 | curl -T -``
   to a plain HTTP receiver in the server's namespace that writes the stream to a file; it sends
   everything again for the re-capture, so its second run is its first.

Per run: wall seconds, bytes the server's interface received (``rx_bytes`` in its namespace), link
utilization (received bits / seconds / link rate) and CPU seconds (fleetcast: agent + server processes;
baseline: partclone, zstd, curl and the receiver) -- on a loaded shared machine CPU time is the fairer
comparison. Ratios fleetcast / baseline at the end; the issue's
targets are first capture <= 1.0x the baseline's time, re-capture <= 10 %. Timings are wall clock on a
shared 2-core machine: read them as ratios. Needs root; everything is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from fleetcast.disk import loop
from fleetcast.lab.deploy_demo import FleetLab
from fleetcast.run import run
from fleetcast.store.images import ImageStore

MiB = 1 << 20
PARTCLONE = {"fat": "partclone.vfat", "ntfs": "partclone.ntfs", "ext": "partclone.ext4"}
RECEIVER_PORT = 9099

_BUILD = """
import sys
from pathlib import Path
from fleetcast.lab.sample_disk import build_sample_disk
build_sample_disk(
    Path(sys.argv[1]), size=int(sys.argv[2]), esp_mib=int(sys.argv[3]), fill=float(sys.argv[4]), seed=1
)
"""
_CHANGE = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from image_engine import change_files
files, changed = change_files(Path(sys.argv[1]), [2, 3], 0.01, 7)
print(files, changed)
"""
# a plain HTTP PUT receiver (chunked or not) writing each upload to DIR/NAME: the baseline's server side
_RECEIVER = r"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
out = Path(sys.argv[2])
class H(BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_PUT(self):
        with open(out / Path(self.path).name, "wb") as f:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                while True:
                    n = int(self.rfile.readline().split(b";")[0], 16)
                    if n == 0:
                        self.rfile.readline()
                        break
                    left = n
                    while left:
                        b = self.rfile.read(min(left, 1 << 20))
                        f.write(b)
                        left -= len(b)
                    self.rfile.readline()
            else:
                left = int(self.headers.get("Content-Length", 0))
                while left:
                    b = self.rfile.read(min(left, 1 << 20))
                    f.write(b)
                    left -= len(b)
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()
ThreadingHTTPServer((sys.argv[1], int(sys.argv[3])), H).serve_forever()
"""


def private(script: str, *args: str) -> str:
    """A Python snippet with mounts private to it (other sessions create namespaces meanwhile)."""
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", sys.executable, "-c", script, *args],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"bench: helper failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def rx_bytes(lab: FleetLab) -> int:
    return int(lab.net.server.run(["cat", "/sys/class/net/eth0/statistics/rx_bytes"]).stdout)


def rate_bits(rate: str) -> float:
    units = {"kbit": 1e3, "mbit": 1e6, "gbit": 1e9}
    for unit, factor in units.items():
        if rate.endswith(unit):
            return float(rate.removesuffix(unit)) * factor
    raise SystemExit(f"bench: rate {rate!r}: expected NNNkbit, NNNmbit or NNNgbit")


def fleetcast_capture(lab: FleetLab, name: str) -> tuple[float, int, float, dict[str, object]]:
    mac = lab.agents[0].node.mac
    run(["blockdev", "--flushbufs", str(lab.agents[0].disk)])
    pids = [p.pid for p in (lab.agents[0].proc, lab.server_proc) if p is not None]
    cpu0 = sum(cpu_seconds(p) for p in pids)
    rx0, t0, t_wall = rx_bytes(lab), time.monotonic(), time.time()
    proc = lab.cli(
        "capture", mac, name, "--server", lab.url, f"--token={lab.admin_token}", "--disk", "0",
        "--wait", "--json", timeout=3600,
    )  # fmt: skip
    secs, rx = time.monotonic() - t0, rx_bytes(lab) - rx0
    cpu = sum(cpu_seconds(p) for p in pids) - cpu0
    if proc.returncode != 0:
        raise SystemExit(f"bench: capture {name} failed: {proc.stderr.decode()[-2000:]}")
    result: dict[str, object] = json.loads(proc.stdout)
    print(breakdown(lab, name, t_wall, secs), flush=True)
    return secs, rx, cpu, result


# the events that mark a capture's steps, in order, and what the time up to each one was spent on
STEPS = (
    ("deployment-created", "CLI start + POST /api/captures"),
    ("client-assigned", "task pick-up (the agent's next heartbeat)"),
    ("capture-published", "the agent: begin, previous image, read+hash+upload, publish"),
    ("client-done", "the agent's result"),
)


def breakdown(lab: FleetLab, name: str, t_wall: float, secs: float) -> str:
    """Where the capture's wall seconds went, from the server's event log (same clock as the bench)."""
    captures = [c for c in lab.get("/api/captures")["captures"] if c.get("image") == name]
    if not captures:
        return "  steps: capture not found in GET /api/captures"
    cid = max(int(c["capture"]) for c in captures)
    events = lab.get(f"/api/events/log?deployment_id={cid}")["events"]
    at = {}
    for ev in events:
        at.setdefault(ev["type"], datetime.fromisoformat(ev["ts"]).timestamp())
    parts, last = [], t_wall
    for kind, label in STEPS:
        if kind in at:
            parts.append(f"{at[kind] - last:.2f} s {label}")
            last = at[kind]
    parts.append(f"{t_wall + secs - last:.2f} s until the CLI's --wait saw it and exited")
    return "  steps: " + "; ".join(parts)


def agent_timing(log: Path) -> str:
    """The agent's last "capture timing" line (where its time went), or a note that there is none."""
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if "capture timing" in ln]
    return (
        f"  agent: {lines[-1].split('capture timing', 1)[1].strip()}" if lines else "  agent: no timing line"
    )


def baseline_capture(
    lab: FleetLab, fstypes: dict[int, str], tag: str, receiver: int
) -> tuple[float, int, float]:
    agent = lab.agents[0]
    url = f"http://{lab.net.server.ip}:{RECEIVER_PORT}"
    run(["blockdev", "--flushbufs", str(agent.disk)])
    parts = loop.partitions(agent.disk, expected=len(fstypes))
    cpu0 = children_cpu() + cpu_seconds(receiver)
    rx0, t0 = rx_bytes(lab), time.monotonic()
    try:
        for number, fstype in sorted(fstypes.items()):
            cmd = (
                f"{PARTCLONE[fstype]} -c -s {parts[number - 1]} -o - 2>/dev/null | zstd -q -T0 -3 | "
                f"curl -sS --fail -T - {url}/{tag}-p{number}.pc.zst"
            )
            agent.node.run(["bash", "-o", "pipefail", "-c", cmd])
    finally:
        run(["partx", "-d", str(agent.disk)], check=False)
    secs, rx = time.monotonic() - t0, rx_bytes(lab) - rx0
    return secs, rx, children_cpu() + cpu_seconds(receiver) - cpu0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gib", type=float, default=2.0)
    ap.add_argument("--fill", type=float, default=0.6)
    ap.add_argument("--esp-mib", type=int, default=256)
    ap.add_argument("--rate", default="500mbit", help="the agent's uplink (tc tbf rate), default 500mbit")
    ap.add_argument("--workdir", type=Path, default=None, help="where to put the temporary files")
    ap.add_argument(
        "--disk", type=Path, default=None,
        help="use (and keep) this sample disk, built there when missing (development: saves the build)",
    )  # fmt: skip
    ap.add_argument(
        "--no-baseline", action="store_true", help="skip the baseline (development only: no ratios)"
    )
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench: needs root (namespaces, loop devices, mounts)", file=sys.stderr)
        return 2
    link = rate_bits(args.rate)
    with tempfile.TemporaryDirectory(prefix="fleetcast-netbench-", dir=args.workdir) as tmp:
        base = Path(tmp)
        golden = args.disk or base / "golden.img"
        size = int(args.size_gib * 1024) * MiB
        if not golden.is_file():
            print(f"building a {args.size_gib} GiB sample disk ...", flush=True)
            private(_BUILD, str(golden), str(size), str(args.esp_mib), str(args.fill))
        with FleetLab(base / "lab", 1, disk_size=size) as lab:
            lab.start_server()
            lab.add_disks()
            agent = lab.agents[0]
            run(["dd", f"if={golden}", f"of={agent.disk}", "bs=4M", "conv=sparse,fsync", "status=none"])
            if args.disk is None:
                golden.unlink()
            lab.start_agents()
            lab.wait_enrolled(1)
            lab.net.limit(agent.node, args.rate)
            received = base / "received"
            received.mkdir()
            receiver = lab.net.server.spawn(
                [sys.executable, "-c", _RECEIVER, lab.net.server.ip, str(received), str(RECEIVER_PORT)],
                log=base / "receiver.log",
            )
            time.sleep(1.0)

            rows: list[tuple[str, float, int, float]] = []
            load0 = os.getloadavg()[0]
            print(f"fleetcast capture through {args.rate} (load average {load0:.1f}) ...", flush=True)
            s1, rx1, c1, r1 = fleetcast_capture(lab, "v1")
            rows.append(("fleetcast capture", s1, rx1, c1))
            print(agent_timing(agent.log), flush=True)
            areas = ImageStore(lab.data / "store").open("v1").areas
            fstypes = {a.number: a.fstype for a in areas if a.kind == "partition" and a.number is not None}
            baseline_stored = 0
            if not args.no_baseline:
                print("partclone + zstd -T0 -3 | curl -T - through the same link ...", flush=True)
                sb, rxb, cb = baseline_capture(lab, fstypes, "v1", receiver.pid)
                rows.append(("partclone+zstd+curl", sb, rxb, cb))
                baseline_stored = sum(p.stat().st_size for p in received.iterdir())
                for p in received.iterdir():
                    p.unlink()
            print("changing 1 % of the files on NTFS and ext4 ...", flush=True)
            changed = private(_CHANGE, str(agent.backing), str(Path(__file__).parent)).split()
            nfiles, nbytes = int(changed[0]), int(changed[1])
            print(f"fleetcast re-capture ({nfiles} files, {nbytes / MiB:.1f} MiB changed) ...", flush=True)
            s2, rx2, c2, r2 = fleetcast_capture(lab, "v2")
            rows.append(("fleetcast re-capture", s2, rx2, c2))
            print(agent_timing(agent.log), flush=True)
            if not args.no_baseline:
                sb2, rxb2, cb2 = baseline_capture(lab, fstypes, "v2", receiver.pid)
                rows.append(("baseline re-capture", sb2, rxb2, cb2))
            load = os.getloadavg()[0]

        print()
        print(
            f"disk {size / MiB:.0f} MiB, read by fleetcast {int(str(r1['bytes_read'])) / MiB:.1f} MiB, "
            f"link {args.rate}; baseline stored {baseline_stored / MiB:.1f} MiB"
        )
        print(f"{'run':<24}{'seconds':>9}{'received MiB':>14}{'link use':>10}{'CPU s':>9}")
        for label, secs, rx, cpu in rows:
            print(f"{label:<24}{secs:>9.2f}{rx / MiB:>14.1f}{100 * rx * 8 / secs / link:>9.1f}%{cpu:>9.1f}")
        if not args.no_baseline:
            print(
                f"ratios fleetcast / baseline: first capture {s1 / sb:.2f}x time, {rx1 / rxb:.2f}x bytes; "
                f"re-capture {100 * s2 / sb2:.1f} % of the time, {100 * rx2 / rxb2:.2f} % of the bytes "
                f"(targets: <= 1.0x, <= 10 %); re-capture / first capture: {100 * rx2 / rx1:.2f} % of the "
                "bytes received"
            )
            print(
                f"CPU seconds fleetcast / baseline: first capture {c1 / cb:.2f}x, re-capture {c2 / cb2:.2f}x "
                "(CPU s: agent + server processes; baseline: partclone, zstd, curl and the receiver)"
            )
        print(f"load average: {load0:.1f} at the start, {load:.1f} at the end")
        print(f"fleetcast --json: v1 {json.dumps(r1)}")
        print(f"fleetcast --json: v2 {json.dumps(r2)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
