"""Transfer amplification after many re-captures, before and after ``store gc --repack`` (issue 7).

A raw disk of ``--size-mib`` (half random, half compressible text, 64 KiB windows), captured, then
``--generations`` times: 1 % of its windows rewritten with new content and captured again (dedupe stores
only the changed windows, in new packs). For the last generation's image: bytes a restore fetches ÷ bytes
of the slices it uses (``store.repack.amplification``) -- with every generation kept, after removing all
but the last (``image rm`` + ``gc``), and after ``gc --repack`` at each ``--thresholds`` value (on a copy of
the store each); the repack's bytes read, written and freed (its write amplification: written ÷ freed),
its time, and that the image still restores byte-identical.

    .venv/bin/python bench/repack.py [--size-mib 512] [--generations 10] [--change 0.01]
        [--thresholds 0.8,0.95]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fleetcast.store.capture import capture
from fleetcast.store.images import ImageStore
from fleetcast.store.repack import amplification, repack_store
from fleetcast.store.restore import restore

WINDOW = 64 << 10
MiB = 1 << 20


def _window(rnd: random.Random) -> bytes:
    if rnd.random() < 0.5:
        return rnd.randbytes(WINDOW)
    words = [b"fleetcast", b"image", b"pack", b"chunk", b"window", b"restore", b"capture", b"deploy"]
    return b" ".join(rnd.choice(words) for _ in range(WINDOW // 6))[:WINDOW].ljust(WINDOW, b".")


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(MiB):
            h.update(b)
    return h.hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--generations", type=int, default=10)
    ap.add_argument("--change", type=float, default=0.01, help="fraction of windows rewritten per generation")
    ap.add_argument("--thresholds", default="0.8,0.95")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    rnd = random.Random(args.seed)
    windows = args.size_mib * MiB // WINDOW
    with tempfile.TemporaryDirectory(prefix="fc-repack-", dir=os.environ.get("TMPDIR", "/tmp")) as tmp:
        work = Path(tmp)
        disk = work / "disk.img"
        with open(disk, "wb") as f:
            for _ in range(windows):
                f.write(_window(rnd))
        store = ImageStore(work / "store")
        t = time.perf_counter()
        capture(disk, "gen00", store)
        print(f"disk {args.size_mib} MiB ({windows} windows), first capture {time.perf_counter() - t:.1f} s")
        with open(disk, "r+b") as g_file:
            for g in range(1, args.generations + 1):
                for w in rnd.sample(range(windows), max(1, int(windows * args.change))):
                    g_file.seek(w * WINDOW)
                    g_file.write(_window(rnd))
                g_file.flush()
                capture(disk, f"gen{g:02d}", store)
        last = f"gen{args.generations:02d}"
        expected = _sha(disk)

        def amp(s: ImageStore) -> str:
            fetched, needed = amplification(s, s.open(last))
            return f"{fetched / needed:.3f}x ({fetched:,} B fetched for {needed:,.0f} B of slices)"

        print(f"after {args.generations} generations of {args.change:.0%} changes, all kept: {amp(store)}")
        for name in store.names():
            if name != last:
                store.remove(name)
        store.gc()
        print(f"  only {last} kept (rm + gc): {amp(store)}")
        for text in args.thresholds.split(","):
            threshold = float(text)
            copy = ImageStore(work / f"store-{text}")
            subprocess.run(["cp", "-a", os.fspath(store.root), os.fspath(copy.root)], check=True)
            t = time.perf_counter()
            r = repack_store(copy, threshold=threshold)
            took = time.perf_counter() - t
            copy.gc()
            out = work / "out.img"
            restore(copy.open(last), copy.source(), out)
            same = _sha(out) == expected
            out.unlink()
            wa = r.written_bytes / r.freed_bytes if r.freed_bytes else 0.0
            print(
                f"  gc --repack --threshold {threshold}: {amp(copy)}; {r.candidates} of {r.packs_before} "
                f"packs rewritten into {r.new_packs} in {took:.1f} s, read {r.read_bytes:,} B, wrote "
                f"{r.written_bytes:,} B, freed {r.freed_bytes:,} B (write amplification {wa:.2f}); "
                f"restores identical: {same}"
            )
            shutil.rmtree(copy.root)
            if not same:
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
