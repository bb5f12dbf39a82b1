"""``make demo`` (image engine): build a sample disk on a loop device, capture it, restore it with --grow onto
a larger disk, verify, and print a summary table. Everything lives in one temporary directory; loop devices
are detached and mounts unmounted on every path out (success, error, Ctrl-C).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fleetcast.errors import FleetcastError
from fleetcast.progress import ProgressBar, human_bytes

logger = logging.getLogger(__name__)

MiB = 1 << 20
NTFS_ACL = "system.ntfs_acl"


@contextmanager
def _step(rows: list[list[str]], name: str) -> Iterator[list[str]]:
    print(f"==> {name}", flush=True)
    detail: list[str] = []
    started = time.monotonic()
    yield detail
    rows.append([name, f"{time.monotonic() - started:6.1f} s", "; ".join(detail)])


def run_demo(base: Path, *, size_mib: int = 512, grow_mib: int = 256) -> list[list[str]]:
    from fleetcast.disk import loop
    from fleetcast.disk.partitions import read_table
    from fleetcast.lab.sample_disk import build_sample_disk, mount_partition
    from fleetcast.lab.treecompare import compare_trees, count_files
    from fleetcast.store.capture import CaptureStats, capture
    from fleetcast.store.images import ImageStore
    from fleetcast.store.restore import restore

    rows: list[list[str]] = []
    golden = base / "golden.img"
    target = base / "target.img"
    store = ImageStore(base / "store")
    with _step(rows, "build sample disk") as d:
        sample = build_sample_disk(golden, size=size_mib * MiB, esp_mib=48, fill=0.5, seed=1)
        d.append(f"{human_bytes(golden.stat().st_size)} GPT: " + ", ".join(c.fstype for c in sample.contents))
        d.append(f"{sum(c.bytes for c in sample.contents) / MiB:.0f} MiB of files")
    with loop.attach(golden, read_only=True) as src_dev, _step(rows, f"capture {src_dev}") as d:
        stats = CaptureStats()
        with ProgressBar("capture") as bar:
            m = capture(src_dev, "demo", store, progress=bar, stats=stats)
        d.append(f"{human_bytes(m.used_bytes)} used -> {human_bytes(stats.new_bytes)} stored")
        d.append(f"{m.entry_count} chunks in {len(m.chunk_ids())} packs, os {m.os_hint or '-'}")
    with _step(rows, "capture again (dedupe)") as d:
        again = CaptureStats()
        capture(golden, "demo-again", store, stats=again)
        d.append(f"{again.new_chunks} new packs, {human_bytes(again.new_bytes)} new")
    with open(target, "wb") as f:
        f.truncate((size_mib + grow_mib) * MiB)
    with loop.attach(target) as dst_dev, _step(rows, f"restore --grow onto {dst_dev}") as d:
        with ProgressBar("restore") as bar:
            result = restore(m, store.source(), dst_dev, grow=True, progress=bar)
        d.append(f"{human_bytes(result.bytes_written)} in {result.chunks_written} verified chunks")
        d.append(f"disk {size_mib} -> {size_mib + grow_mib} MiB, grown: {result.grown}")
    with _step(rows, "verify image") as d:
        report = store.verify("demo")
        if not report.ok:
            raise FleetcastError(f"verify failed: {report.problems[0]}")
        d.append(f"{report.chunks} packs re-hashed")
    with _step(rows, "compare files") as d:
        src_table, dst_table = read_table(golden), read_table(target)
        same_ids = [p.uuid for p in src_table.partitions] == [p.uuid for p in dst_table.partitions]
        d.append(f"GUIDs kept: {same_ids}")
        last = src_table.partitions[-1].number
        grew = dst_table.partition(last).size > src_table.partition(last).size
        d.append(f"partition {last} grew: {grew}")
        for content in sample.contents:
            if content.fstype.value == "fat":
                continue
            xattrs = (NTFS_ACL,) if content.fstype.value == "ntfs" else ()
            with (
                mount_partition(golden, content.number, read_only=True) as a,
                mount_partition(target, content.number, read_only=True) as b,
            ):
                diffs = compare_trees(a, b, xattrs=xattrs)
                n = count_files(a)
            if diffs:
                raise FleetcastError(f"partition {content.number} differs after restore: {diffs[:3]}")
            d.append(f"p{content.number} {content.fstype.value}: {n} files identical")
        if not (same_ids and grew):
            raise FleetcastError("the restored partition table is not what it should be")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="fleetcast image engine demo")
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if os.geteuid() != 0:
        print("demo: needs root (loop devices, mounts)", file=sys.stderr)
        return 2
    from fleetcast.cli.common import print_table

    base = Path(tempfile.mkdtemp(prefix="fleetcast-demo-"))
    started = time.monotonic()
    try:
        rows = run_demo(base, size_mib=args.size_mib)
    except FleetcastError as exc:
        print(f"demo: FAILED: {exc.message}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    print()
    print_table(["STEP", "TIME", "RESULT"], rows)
    print(f"\ndemo passed in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
