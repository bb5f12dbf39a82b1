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
    .venv/bin/python bench/repack.py --memory 8G,64G [--baseline-rev REV]

``--memory``: the repack's peak RSS at scale. Per size, a store with one synthetic image of that many used
bytes whose packs are half live (every other 64 KiB chunk used; real zstd packs of RLE blocks, from
``bench/scale.py``), repacked at threshold 0.8 in a fresh process (every pack a candidate): time and peak
RSS; with ``--baseline-rev``, the same with ``store/repack.py`` as it was at that git revision, same run.
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


_REPACK = r"""
import importlib.util, resource, sys, time
from pathlib import Path
from fleetcast.store.images import ImageStore
if sys.argv[2]:
    spec = importlib.util.spec_from_file_location("repack_baseline", sys.argv[2])
    mod = sys.modules["repack_baseline"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
else:
    from fleetcast.store import repack as mod
t = time.perf_counter()
r = mod.repack_store(ImageStore(Path(sys.argv[1])), threshold=0.8)
took = time.perf_counter() - t
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"{took:.1f} {rss:.0f} {r.candidates} {r.new_packs}")
"""


def bench_memory(sizes: str, baseline_rev: str) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from scale import CHUNK, PER_PACK, make_v2, parse_size

    with tempfile.TemporaryDirectory(prefix="fc-repack-mem-", dir=os.environ.get("TMPDIR", "/tmp")) as tmp:
        work = Path(tmp)
        baseline = ""
        if baseline_rev:
            old = subprocess.run(
                ["git", "show", f"{baseline_rev}:src/fleetcast/store/repack.py"],
                check=True,
                capture_output=True,
                cwd=Path(__file__).parent,
            ).stdout
            (work / "repack_baseline.py").write_bytes(old)
            baseline = str(work / "repack_baseline.py")
        for text in sizes.split(","):
            used = parse_size(text)
            npacks = used // CHUNK // PER_PACK
            root = work / f"store-{text}"
            d = root / "images" / "half"
            d.mkdir(parents=True)
            made, isize = make_v2(
                d, 2 * used, used, name="half", real=npacks, stride=2, chunks=root / "chunks"
            )
            slices = npacks * PER_PACK // 2
            for label, module in (("baseline " + baseline_rev, baseline), ("this tree", "")):
                if label.startswith("baseline") and not baseline:
                    continue
                copy = work / "copy"
                subprocess.run(["cp", "-a", os.fspath(root), os.fspath(copy)], check=True)
                proc = subprocess.run(
                    [sys.executable, "-c", _REPACK, str(copy), module],
                    check=False,
                    capture_output=True,
                    text=True,
                )
                shutil.rmtree(copy)
                if proc.returncode:
                    raise SystemExit(f"repack ({label}) failed:\n{proc.stderr}")
                out = proc.stdout.split()
                print(
                    f"repack {text} of packs half live ({npacks:,} packs, {slices:,} live slices, index "
                    f"{isize:,} B, made in {made:.0f} s), {label}: {out[2]} candidates into {out[3]} packs "
                    f"in {out[0]} s, peak RSS {out[1]} MiB; load average "
                    + " ".join(f"{x:.1f}" for x in os.getloadavg()),
                    flush=True,
                )
            shutil.rmtree(root)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--generations", type=int, default=10)
    ap.add_argument("--change", type=float, default=0.01, help="fraction of windows rewritten per generation")
    ap.add_argument("--thresholds", default="0.8,0.95")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--memory", default="", metavar="SIZES", help="only the repack's memory at these sizes")
    ap.add_argument("--baseline-rev", default="", metavar="REV", help="--memory: also store/repack.py of REV")
    args = ap.parse_args()
    if args.memory:
        bench_memory(args.memory, args.baseline_rev)
        return 0
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
