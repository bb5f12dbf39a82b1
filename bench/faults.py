"""The full fault campaign of issue 14 (the bounded one is tests/integration/store/test_store_faults.py).

On a real 160 MiB GPT disk (FAT32 ESP, NTFS, ext4 with files: tests/integration/store/store_disks.py):
random corruptions of packs (flip, truncate, append, delete, zero a range, swap two packs), of the index and
of the manifest (flip, truncate, append, delete), valid-looking index edits (an entry dropped or its extents
shifted, the manifest's index fields fixed up), captures and restores killed with SIGKILL at random
moments, and rm + gc racing list/check. Prints the counts per kind: detected, harmless (a change nothing
depends on), silent (damage called intact, or a restore with the task's image id writing other bytes),
tracebacks (an error that is not a FleetcastError), and loop devices leaked.

    .venv/bin/python bench/faults.py [--trials 200] [--kills 20] [--races 10] [--seed 1]
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "integration" / "store"))

from faults_kit import EDIT_KINDS, META_KINDS, PACK_KINDS, Campaign  # type: ignore[import-not-found,unused-ignore]  # noqa: E402
from store_disks import build_disk  # type: ignore[import-not-found,unused-ignore]  # noqa: E402


def _loops(path: Path) -> list[str]:
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=False).stdout
    return [line for line in out.splitlines() if str(path) in line]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=200, help="random corruptions")
    ap.add_argument("--kills", type=int, default=20, help="captures killed, and as many restores")
    ap.add_argument("--races", type=int, default=10, help="rounds of list/check/gc while rm runs")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    fleetcast = Path(sys.executable).parent / "fleetcast"
    rnd = random.Random(args.seed)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fc-faults-", dir=os.environ.get("TMPDIR", "/tmp")) as tmp:
        work = Path(tmp)
        disk = build_disk(work / "golden.img")
        (work / "c").mkdir()
        c = Campaign(work / "c", disk, seed=args.seed)
        kinds = (
            [("pack", k) for k in PACK_KINDS]
            + [("index", k) for k in META_KINDS]
            + [("manifest", k) for k in META_KINDS]
            + [("edit", k) for k in EDIT_KINDS]
        )
        for i in range(args.trials):
            target, kind = kinds[i % len(kinds)] if i < len(kinds) else rnd.choice(kinds)
            c.corruption(target, kind)
        for _ in range(args.kills):
            c.kill_capture(fleetcast, rnd.uniform(0.2, 4.0))
            c.kill_restore(fleetcast, rnd.uniform(0.2, 3.0))
        c.race(args.races)
        leaked = _loops(work)
    t = c.tally
    took = time.monotonic() - started
    print(f"fault campaign, seed {args.seed}, {took:.0f} s: {t.line()}, {len(leaked)} leaked loop devices")
    print(f"{'kind':<22}{'trials':>8}{'detected':>10}{'harmless':>10}")
    for label in sorted(t.trials):
        print(f"{label:<22}{t.trials[label]:>8}{t.detected[label]:>10}{t.harmless[label]:>10}")
    for line in t.silent:
        print(f"SILENT: {line}")
    for line in t.tracebacks:
        print(f"TRACEBACK: {line}")
    for line in sorted(set(t.notes)):
        print(f"note: {line}")
    return 1 if t.silent or t.tracebacks or leaked else 0


if __name__ == "__main__":
    raise SystemExit(main())
