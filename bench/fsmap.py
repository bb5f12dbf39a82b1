"""Benchmark: fleetcast's own allocation-map parsers vs partclone's ``--domain`` map on the same volumes.

    .venv/bin/python bench/fsmap.py [--size-mib 2048] [--disk IMG] [--repeat 3] [--xfs-mib N] [--btrfs-mib N]

Builds a sample disk (GPT: FAT32 ESP, NTFS, ext4, about 60 % full) unless --disk is given, then for
each partition times ``disk.filesystems.used_extents`` (reading the image file at the partition's
offset) and ``partclone.<fs> -D`` (on a read-only loop device of the partition), and prints the used
bytes each found and the time ratio. Timings are printed, never asserted.

``--xfs-mib N`` / ``--btrfs-mib N`` also build a bare N MiB XFS / btrfs (mkfs defaults, filled
through a mount in a private mount namespace with about 45 % of files, a third of them deleted again)
and measure it the same way.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

from fleetcast.disk import loop
from fleetcast.disk.filesystems import FsType, detect, total, used_extents
from fleetcast.disk.partitions import read_table
from fleetcast.lab.sample_disk import build_sample_disk

PARTCLONE = {
    FsType.EXT: "partclone.extfs",
    FsType.NTFS: "partclone.ntfs",
    FsType.FAT: "partclone.fat",
    FsType.XFS: "partclone.xfs",
    FsType.BTRFS: "partclone.btrfs",
}
MKFS = {"xfs": ["mkfs.xfs", "-q", "-f"], "btrfs": ["mkfs.btrfs", "-q", "-f"]}
XFS_FILL = """
mount -o loop "$1" "$2"
i=0
while [ $i -lt "$3" ]; do
  mkdir -p "$2/d$((i % 50))"
  head -c $(( (i % 97 + 1) * 40000 )) /dev/urandom > "$2/d$((i % 50))/f$i"
  i=$((i + 1))
done
sync
rm -f "$2"/d*/f*[147]
umount "$2"
"""
MiB = 1 << 20


def _partclone_used(tool: str, dev: Path, mapfile: Path) -> int:
    mapfile.unlink(missing_ok=True)  # partclone refuses to overwrite its output
    subprocess.run([tool, "-D", "-s", dev, "-o", mapfile, "-q"], check=True, capture_output=True)
    used = 0
    for line in mapfile.read_text().splitlines():
        parts = line.split()
        if line.startswith("0x") and len(parts) == 3 and parts[2] == "+":
            used += int(parts[1], 16)
    return used


def _evict(*paths: Path) -> None:
    """Drop these files'/devices' pages from the page cache (only theirs: POSIX_FADV_DONTNEED)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _best(fn: object, repeat: int, cold: tuple[Path, ...] = ()) -> tuple[float, object]:
    assert callable(fn)
    best = float("inf")
    result: object = None
    for _ in range(repeat):
        _evict(*cold)
        t = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t)
    return best, result


def _build_fs(kind: str, path: Path, size_mib: int, work: Path) -> None:
    with open(path, "wb") as f:
        f.truncate(size_mib * MiB)
    subprocess.run([*MKFS[kind], path], check=True, capture_output=True)
    mnt = work / f"{kind}-mnt"
    mnt.mkdir()
    files = int(size_mib * MiB * 0.45 / (49 * 40000))
    subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-euc", XFS_FILL, "sh", path, mnt, str(files)],
        check=True,
        capture_output=True,
    )


def _areas(disk: Path) -> list[tuple[int, int, int]]:
    """(partition number, byte offset, size) of each partition; (0, 0, disk size) for a bare filesystem."""
    table = read_table(disk)
    if table.label == "none":
        return [(0, 0, disk.stat().st_size)]
    ss = table.sector_size
    return [(p.number, p.start * ss, p.size * ss) for p in table.partitions]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--size-mib", type=int, default=2048)
    ap.add_argument("--disk", type=Path, help="an existing disk image to measure instead of building one")
    ap.add_argument("--keep", type=Path, help="build the sample disk here (or reuse it if it exists)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--xfs-mib", type=int, default=0, help="also measure a bare XFS of this size")
    ap.add_argument("--btrfs-mib", type=int, default=0, help="also measure a bare btrfs of this size")
    ap.add_argument(
        "--cold", action="store_true", help="evict the image (and loop device) from the page cache"
    )
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fleetcast-fsmap-"))
    try:
        disk = args.disk
        if args.keep and disk is None:
            disk = args.keep
        if disk is None or not disk.exists():
            disk = disk or work / "sample.img"
            t = time.perf_counter()
            build_sample_disk(disk, size=args.size_mib * MiB, fill=0.6, seed=1)
            print(f"built {args.size_mib} MiB sample disk in {time.perf_counter() - t:.1f} s")
        disks = [disk]
        for kind, mib in (("xfs", args.xfs_mib), ("btrfs", args.btrfs_mib)):
            if mib:
                img = work / f"{kind}.img"
                t = time.perf_counter()
                _build_fs(kind, img, mib, work)
                print(f"built {mib} MiB {kind} in {time.perf_counter() - t:.1f} s")
                disks.append(img)
        rows = []
        for img in disks:
            with open(img, "rb") as f:
                for number, offset, size in _areas(img):
                    fstype = detect(f, offset, size)
                    if fstype not in PARTCLONE:
                        continue
                    cold = (img,) if args.cold else ()
                    ours_t, ours = _best(partial(used_extents, fstype, f, offset, size), args.repeat, cold)
                    assert isinstance(ours, list)
                    with loop.attach(img, read_only=True, offset=offset, sizelimit=size) as dev:
                        mapfile = work / f"p{number}.map"
                        cold_dev = (img, dev) if args.cold else ()
                        pc_t, pc_used = _best(
                            partial(_partclone_used, PARTCLONE[fstype], dev, mapfile), args.repeat, cold_dev
                        )
                    assert isinstance(pc_used, int)
                    rows.append((number, str(fstype), size, total(ours), len(ours), pc_used, ours_t, pc_t))
        print(f"page cache: {'evicted before every run' if args.cold else 'warm (best of runs)'}")
        print(
            f"{'part':>4} {'fs':>5} {'size MiB':>9} {'used MiB':>9} {'extents':>8} {'partclone MiB':>14} "
            f"{'ours ms':>8} {'partclone ms':>13} {'speed-up':>9}"
        )
        for number, fs, size, used, n, pc_used, ours_t, pc_t in rows:
            print(
                f"{number:>4} {fs:>5} {size / MiB:>9.1f} {used / MiB:>9.1f} {n:>8} {pc_used / MiB:>14.1f} "
                f"{ours_t * 1000:>8.1f} {pc_t * 1000:>13.1f} {pc_t / max(ours_t, 1e-9):>8.1f}x"
            )
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
