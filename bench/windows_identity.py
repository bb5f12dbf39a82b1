"""What the issue-13 Windows work costs: log replay of real dirty hives (replay.py, Marvin32 in pure
Python), and the agent's read-only scan of a disk holding a Windows volume (loop device + ntfs-3g
mount + inspect), first read and cached. Needs root (loop devices) for the scan part.

    .venv/bin/python bench/windows_identity.py [--rounds 3] [--no-scan]
"""

from __future__ import annotations

import argparse
import lzma
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tests.fixtures.windows_tree import HIVES_DIR, build_windows_tree  # noqa: E402

from fleetcast.identity.windows import replay as rp  # noqa: E402

CASES = {
    "SYSTEM (Windows 10, 12 MB, 2 logs)": (
        "regipy/SYSTEM_B.xz",
        "regipy/SYSTEM_B.LOG1.xz",
        "regipy/SYSTEM_B.LOG2.xz",
    ),
    "NTUSER.DAT (1 MB, stale LOG2)": (
        "regipy/transactions_NTUSER.DAT.xz",
        "regipy/transactions_ntuser.dat.log1.xz",
        "regipy/transactions_ntuser.dat.log2.xz",
    ),
    "UsrClass.dat (2.8 MB, 2 logs)": (
        "regipy/UsrClass.dat.xz",
        "regipy/UsrClass.dat.LOG1.xz",
        "regipy/UsrClass.dat.LOG2.xz",
    ),
}


def _raw(rel: str) -> bytes:
    return lzma.decompress((HIVES_DIR / rel).read_bytes())


def bench_replay(rounds: int) -> None:
    for label, (hive, log1, log2) in CASES.items():
        h, l1, l2 = _raw(hive), _raw(log1), _raw(log2)
        times = []
        for _ in range(rounds):
            rp._CACHE.clear()
            t = time.perf_counter()
            r = rp.replay(h, [("LOG1", l1), ("LOG2", l2)])
            times.append(time.perf_counter() - t)
        print(
            f"replay {label}: {r.entries} entries, {r.pages} pages, median {statistics.median(times):.2f} s"
        )
    data = _raw("regipy/SYSTEM_B.LOG2.xz")
    t = time.perf_counter()
    rp.marvin32(data)
    dt = time.perf_counter() - t
    print(f"marvin32: {len(data) / dt / 1e6:.1f} MB/s")


def bench_scan(rounds: int) -> None:
    from fleetcast.identity.windows import scan
    from fleetcast.lab.sample_disk import MiB, build_sample_disk, mount_partition

    with tempfile.TemporaryDirectory() as tmp:
        disk = Path(tmp) / "win.img"
        build_sample_disk(disk, size=128 * MiB, fill=0.02, layout="gpt-esp-ntfs-ext4")
        with mount_partition(disk, 2) as root:
            build_windows_tree(root)
        first, cached = [], []
        for _ in range(rounds):
            scan.invalidate()
            t = time.perf_counter()
            (found,) = scan.scan_disk(disk)
            first.append(time.perf_counter() - t)
            t = time.perf_counter()
            scan.scan_disk(disk)
            cached.append(time.perf_counter() - t)
        print(
            f"scan of one Windows volume ({found.machine_sid}): first {statistics.median(first):.2f} s, "
            f"cached {statistics.median(cached) * 1000:.0f} ms (partition table read again)"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-scan", action="store_true")
    args = ap.parse_args()
    bench_replay(args.rounds)
    if not args.no_scan:
        bench_scan(args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
