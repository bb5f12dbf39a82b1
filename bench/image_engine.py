"""Image engine benchmark (``make bench``): fleetcast capture/restore against partclone+zstd and a dd floor.

One run, one generated disk (about 2 GiB, GPT: 256 MiB FAT32 ESP, NTFS and ext4 each ~60 % full, via
``fleetcast.lab.sample_disk``):

1. fleetcast capture into an empty store, then restore onto a new file (fsync included);
2. the FOG/Clonezilla method: ``partclone.<fs> -c -s DEVpN | zstd -T0 -3 > file`` per partition, and
   ``zstd -dc file | partclone.<fs> -r -o DEVpN`` onto a disk with the same partition table;
3. ``dd`` of as many bytes as the filesystems use (sequential read, and read+write with fsync): the floor;
4. change 1 % of the files (new content, same size, in place) and capture again: new bytes stored as a
   percentage of the first capture -- for fleetcast's default and, with ``--sweep``, other chunk sizes and
   zstd levels.

Everything lives in one temporary directory that is removed at the end (loop devices detached, mounts
unmounted). Timings are wall clock on a shared 2-core machine: read them as ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fleetcast.disk import loop
from fleetcast.disk.partitions import read_table, write_table
from fleetcast.lab.sample_disk import FileSpec, build_sample_disk, mount_partition, write_file
from fleetcast.progress import human_bytes
from fleetcast.store.capture import CHUNK_SIZE, PACK_SIZE, CaptureStats, capture
from fleetcast.store.images import ImageStore
from fleetcast.store.restore import restore

GiB = 1 << 30
MiB = 1 << 20
PARTCLONE = {"fat": "partclone.vfat", "ntfs": "partclone.ntfs", "ext": "partclone.ext4"}


@contextmanager
def timed(results: dict[str, float], key: str) -> Iterator[None]:
    """Wall time in ``results[key]``, CPU time (user + system, this process's threads and its children's)
    in ``results[key + " cpu"]``: under load the CPU time is the fairer comparison."""
    Path("/proc/self/clear_refs").write_text("5")  # resets this process's peak RSS (VmHWM) to its RSS
    start = _status_mib("VmRSS")
    t, c = time.monotonic(), _cpu()
    yield
    results[key] = time.monotonic() - t
    results[key + " cpu"] = _cpu() - c
    results[key + " rss"] = peak = _status_mib("VmHWM")
    print(
        f"  {key:<28} {results[key]:7.2f} s  (CPU {results[key + ' cpu']:.2f} s; this process's peak RSS "
        f"{peak:.0f} MiB, {start:.0f} MiB at the start)",
        flush=True,
    )


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def _cpu() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def sh(cmd: str) -> None:
    subprocess.run(["bash", "-o", "pipefail", "-c", cmd], check=True, stderr=subprocess.DEVNULL)


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def partclone_capture(disk: Path, fstypes: dict[int, str], out: Path) -> None:
    with loop.attach(disk, read_only=True) as dev:
        parts = loop.partitions(dev, expected=len(fstypes))
        for number, fstype in fstypes.items():
            tool = PARTCLONE[fstype]
            sh(f"{tool} -c -s {parts[number - 1]} -o - | zstd -q -T0 -3 > {out / f'p{number}.pc.zst'}")


def partclone_restore(disk: Path, src: Path, fstypes: dict[int, str], target: Path) -> None:
    with open(target, "wb") as f:
        f.truncate(disk.stat().st_size)
    write_table(target, read_table(disk))
    with loop.attach(target) as dev:
        parts = loop.partitions(dev, expected=len(fstypes))
        for number, fstype in fstypes.items():
            tool = PARTCLONE[fstype]
            sh(f"zstd -q -dc {src / f'p{number}.pc.zst'} | {tool} -r -s - -o {parts[number - 1]}")
        sh(f"sync -f {target}")


KINDS = {"text": "text", "elf": "elf", "gzip": "gzip", "random": "random", "zeros": "zeros", "small": "small"}


def change_files(disk: Path, numbers: list[int], fraction: float, seed: int) -> tuple[int, int]:
    """Replace ``fraction`` of the files (by count) on these partitions with a new version: new content of
    the same kind (text stays text, executables stay executables, media stays random) and size, written
    the way an update writes it (truncate and rewrite)."""
    rng = random.Random(seed)
    files = bytes_changed = 0
    for number in numbers:
        with mount_partition(disk, number) as mnt:
            all_files = sorted(p for p in mnt.rglob("*") if p.is_file() and not p.is_symlink())
            picked = rng.sample(all_files, max(1, round(len(all_files) * fraction)))
            for p in picked:
                size = p.stat().st_size
                kind = next((k for k in KINDS if p.name.startswith(k)), "random")
                write_file(rng, p, FileSpec(str(p.relative_to(mnt)), kind, size))
                files += 1
                bytes_changed += size
    return files, bytes_changed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gib", type=float, default=2.0)
    ap.add_argument("--fill", type=float, default=0.6)
    ap.add_argument("--esp-mib", type=int, default=256)
    ap.add_argument("--sweep", action="store_true", help="also measure other chunk sizes and zstd levels")
    ap.add_argument("--workdir", type=Path, default=None, help="where to put the temporary files")
    args = ap.parse_args(argv)
    # a SIGTERM unwinds like an exception: mounts (ntfs-3g) unmounted, loop devices detached, files removed
    # (killed with the default action, a bench left an ntfs-3g holding a loop device)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if os.geteuid() != 0:
        print("bench: needs root (loop devices, mounts)", file=sys.stderr)
        return 2
    base = Path(tempfile.mkdtemp(prefix="fleetcast-bench-", dir=args.workdir))
    r: dict[str, float] = {}
    try:
        disk = base / "golden.img"
        print(f"building a {args.size_gib} GiB sample disk in {base} ...", flush=True)
        with timed(r, "build sample disk"):
            build_sample_disk(
                disk, size=int(args.size_gib * 1024) * MiB, esp_mib=args.esp_mib, fill=args.fill, seed=1
            )
        sh(f"cat {disk} > /dev/null")  # same page-cache state for every method
        store = ImageStore(base / "store")
        print("fleetcast:")
        stats = CaptureStats()
        with timed(r, "fleetcast capture"):
            m = capture(disk, "v1", store, stats=stats)
        fc_stored = dir_bytes(store.chunks.root)
        # onto a loop device over a new file, like partclone's restore below
        with open(base / "fc-restored.img", "wb") as f:
            f.truncate(disk.stat().st_size)
        with loop.attach(base / "fc-restored.img") as dev, timed(r, "fleetcast restore"):
            restore(m, store.source(), dev)
        (base / "fc-restored.img").unlink()
        fstypes = {a.number: a.fstype for a in m.areas if a.kind == "partition" and a.number is not None}
        used = m.used_bytes

        print("partclone + zstd -3:")
        pc = base / "pc"
        pc.mkdir()
        with timed(r, "partclone capture"):
            partclone_capture(disk, fstypes, pc)
        pc_stored = dir_bytes(pc)
        with timed(r, "partclone restore"):
            partclone_restore(disk, pc, fstypes, base / "pc-restored.img")
        (base / "pc-restored.img").unlink()
        shutil.rmtree(pc)

        print(f"dd floor ({human_bytes(used)} = the used bytes, sequential):")
        count = max(1, used // (4 * MiB))
        with timed(r, "dd read"):
            sh(f"dd if={disk} of=/dev/null bs=4M count={count}")
        with timed(r, "dd read+write"):
            sh(f"dd if={disk} of={base / 'dd.img'} bs=4M count={count} conv=fsync")
        (base / "dd.img").unlink()

        default = (CHUNK_SIZE, 3, PACK_SIZE)
        sweep: list[tuple[int, int, int]] = [default]
        if args.sweep:
            sweep += [
                (MiB, 3, MiB),  # one window per stored object: no packing
                (256 << 10, 3, PACK_SIZE),
                (32 << 10, 3, PACK_SIZE),
                (CHUNK_SIZE, 3, MiB),
                (CHUNK_SIZE, 3, 4 * MiB),
                (CHUNK_SIZE, 1, PACK_SIZE),
                (CHUNK_SIZE, 6, PACK_SIZE),
            ]
        sweep_first: dict[tuple[int, int, int], tuple[int, float]] = {}
        for cs, level, pack in sweep[1:]:
            s = ImageStore(base / f"store-{cs}-{level}-{pack}")
            st = CaptureStats()
            t = time.monotonic()
            capture(disk, "v1", s, stats=st, chunk_size=cs, level=level, pack_size=pack)
            sweep_first[(cs, level, pack)] = (st.new_bytes, time.monotonic() - t)

        print("change 1 % of the files on NTFS and ext4, capture again:")
        nfiles, nbytes = change_files(disk, [n for n, f in fstypes.items() if f in ("ntfs", "ext")], 0.01, 7)
        stats2 = CaptureStats()
        with timed(r, "fleetcast re-capture"):
            capture(disk, "v2", store, stats=stats2)
        sweep_rows = []
        for cs, level, pack in sweep:
            if (cs, level, pack) == default:
                first, secs, new = stats.new_bytes, r["fleetcast capture"], stats2.new_bytes
            else:
                s = ImageStore(base / f"store-{cs}-{level}-{pack}")
                st = CaptureStats()
                capture(disk, "v2", s, stats=st, chunk_size=cs, level=level, pack_size=pack)
                shutil.rmtree(s.root)
                first, secs = sweep_first[(cs, level, pack)]
                new = st.new_bytes
            sweep_rows.append((cs, level, pack, first, secs, new))

        print()
        print(f"disk {human_bytes(disk.stat().st_size)}, used by filesystems {human_bytes(used)}")
        print(f"{'method':<22}{'capture s':>10}{'restore s':>10}{'stored':>14}")
        print(
            f"{'fleetcast':<22}{r['fleetcast capture']:>10.2f}{r['fleetcast restore']:>10.2f}{fc_stored:>14,}"
        )
        pcc, pcr = r["partclone capture"], r["partclone restore"]
        print(f"{'partclone + zstd -3':<22}{pcc:>10.2f}{pcr:>10.2f}{pc_stored:>14,}")
        print(f"{'dd floor (used bytes)':<22}{r['dd read']:>10.2f}{r['dd read+write']:>10.2f}{used:>14,}")
        print(
            f"ratios fleetcast / partclone+zstd: capture {r['fleetcast capture'] / pcc:.2f}x, "
            f"restore {r['fleetcast restore'] / pcr:.2f}x, stored {fc_stored / pc_stored:.2f}x"
        )
        fcc, pccc = r["fleetcast capture cpu"], r["partclone capture cpu"]
        fcr, pcrc = r["fleetcast restore cpu"], r["partclone restore cpu"]
        print(
            f"CPU time (user + system): capture {fcc:.2f} s vs {pccc:.2f} s ({fcc / pccc:.2f}x), "
            f"restore {fcr:.2f} s vs {pcrc:.2f} s ({fcr / pcrc:.2f}x); load average "
            + " ".join(f"{x:.1f}" for x in os.getloadavg())
        )
        print(
            f"fleetcast peak RSS (the bench's own process, threads included): capture "
            f"{r['fleetcast capture rss']:.0f} MiB, restore {r['fleetcast restore rss']:.0f} MiB"
        )
        print(
            f"re-capture after changing {nfiles} files ({human_bytes(nbytes)}, 1 % of the files): "
            f"{stats2.new_bytes:,} new bytes = {100 * stats2.new_bytes / stats.new_bytes:.2f} % of the first "
            f"capture, in {r['fleetcast re-capture']:.2f} s"
        )
        if args.sweep:
            print()
            print(
                f"{'chunk':>8}{'level':>6}{'pack':>6}{'stored':>14}{'capture s':>10}"
                f"{'re-capture new':>16}{'%':>7}"
            )
            for cs, level, pack, first, secs, new in sweep_rows:
                print(
                    f"{cs >> 10:>7}K{level:>6}{pack >> 20:>5}M{first:>14,}{secs:>10.2f}{new:>16,}"
                    f"{100 * new / first:>7.2f}"
                )
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
