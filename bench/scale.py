"""Image metadata at real disk sizes: format 2's binary index against format 1's JSON manifest.

Synthetic images (no data, only metadata): 64 KiB windows of a bare disk, 16 MiB packs (256 entries
each), one extent per entry, random hashes. For each size: index bytes (and % of the used bytes), time to
write it, and -- in a fresh process each, so the peak RSS is the step's own -- time and peak RSS to open
the image (``load_image``: hash + block headers), to plan a restore (pack -> blocks), and to walk every
pack's entries as a restore in any order does. Format 1's JSON manifest of the same 64 GB image is
measured in the same run as the baseline (its parse time and peak RSS), and the ratio printed.

    .venv/bin/python bench/scale.py [--sizes 64G,1T] [--used 1T=500G] [--no-v1] [--list 100] [--only-list]

``--list N``: a store of N synthetic images (half of each one's packs shared by all), listed the way
``fleetcast image list`` does (``ImageStore.list`` lazy, then ``usage`` for stored/unique bytes) and as
the whole CLI process; the eager listing (every index verified) beside it.

``--restore``: a whole restore of each size in a fresh process (``store.restore.restore``, every pack
verified and every entry's chunk checked, packs delivered in a random order by a synthetic source), onto a
sparse file whose data writes are counted and dropped (the disk cannot hold 500 GB; the page cache is not
the process's memory): time from the start of ``load_image`` to the first data byte written, total time
and peak RSS. Its packs are real zstd frames of 16 MiB built from RLE blocks (540 bytes stored each, no
compression cost), so the index's hashes are real and the restore does every check it does on real data.

The real-data part of issue 7 (a disk beside partclone + zstd) is ``bench/image_engine.py``.
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
from pathlib import Path

GiB = 1 << 30
CHUNK = 64 << 10
PER_PACK = 256  # 16 MiB packs of 64 KiB chunks


def _table() -> dict[str, object]:
    return {
        "label": "none",
        "id": "",
        "sector_size": 512,
        "first_lba": None,
        "last_lba": None,
        "table_length": None,
        "partitions": [],
    }


def _head(name: str, size: int, version: int) -> dict[str, object]:
    return {
        "format": "fleetcast-image",
        "version": version,
        "name": name,
        "created": "2026-12-02T21:00:00+00:00",
        "tool_version": "bench",
        "disk": {"size": size, "logical_sector_size": 512, "physical_sector_size": 512},
        "table": _table(),
        "chunking": {
            "hash": "blake3",
            "compression": "zstd",
            "chunk_size": CHUNK,
            "zero_block": 4096,
            "pack_size": 16 << 20,
        },
        "os_hint": None,
    }


def _block(last: bool, kind: int, size: int, payload: bytes) -> bytes:
    return ((size << 3) | (kind << 1) | int(last)).to_bytes(3, "little") + payload


_TAIL = b"\x5a" * (CHUNK - 8) + b"\xa5" * (CHUNK * (PER_PACK - 1))


def synthetic_pack(p: int) -> bytes:
    """Pack ``p`` as a zstd frame (content size in its header, single segment): its first chunk is ``p``
    (8 bytes) and 0x5a bytes, the 255 others 0xa5 bytes; raw and RLE blocks of at most 128 KiB."""
    out = [b"\x28\xb5\x2f\xfd\xe0", (CHUNK * PER_PACK).to_bytes(8, "little")]
    out += [_block(False, 0, 8, p.to_bytes(8, "little")), _block(False, 1, CHUNK - 8, b"\x5a")]
    rest = CHUNK * (PER_PACK - 1)
    while rest:
        k = min(rest, 128 << 10)
        rest -= k
        out.append(_block(not rest, 1, k, b"\xa5"))
    return b"".join(out)


def make_v2(
    d: Path,
    size: int,
    used: int,
    *,
    name: str = "scale",
    own: int = 0,
    real: int = 0,
    stride: int = 1,
    chunks: Path | None = None,
) -> tuple[float, int]:
    """A synthetic v2 image in ``d``; ``own`` > 0: the second half of its packs are its own (ids offset
    by ``own``), the first half shared with every image made with the same size. ``real`` > 0: its first
    ``real`` packs are ``synthetic_pack(p)`` with their true ids and hashes, and so are the index's entry
    hashes (a restore can verify everything it is given; the other packs have made-up ids). ``stride``:
    only every stride-th chunk of each pack is used (a pack ``1/stride`` live, for repacking); ``chunks``:
    write the real packs into this store's ``chunks/``."""
    import blake3

    from fleetcast.store.index import Entry, IndexWriter

    npacks = -(-(used // CHUNK) // PER_PACK)
    t = time.perf_counter()
    rest = blake3.blake3(b"\xa5" * CHUNK).digest()
    packs: list[dict[str, object]] = []
    n = 0
    with open(d / "index", "wb") as f:
        w = IndexWriter(f)
        for p in range(npacks):
            first = rest
            if p < real:
                head = p.to_bytes(8, "little")
                first = blake3.blake3(head + _TAIL[: CHUNK - 8]).digest()
                pid = blake3.blake3(head)
                pid.update(_TAIL)
                frame = synthetic_pack(p)
                packs.append(
                    {"id": pid.hexdigest(), "stored": len(frame), "hash": blake3.blake3(frame).hexdigest()}
                )
                if chunks is not None:
                    path = chunks / pid.hexdigest()[:2] / pid.hexdigest()
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(frame)
            else:
                q = p if not own or p < npacks // 2 else own * npacks + p
                packs.append({"id": f"{q:064x}", "stored": 9 << 20, "hash": f"{q + 1:064x}"})
            for k in range(0, PER_PACK, stride):
                i = p * PER_PACK + k
                h = (rest if k else first) if p < real else os.urandom(32)
                w.add(Entry(0, p, k * CHUNK, i * CHUNK, h, ((i * CHUNK, CHUNK),)))
                n += 1
        info = w.close()
    area: dict[str, object] = {
        "kind": "disk",
        "number": None,
        "start": 0,
        "size": size,
        "fstype": "raw",
        "os_hint": None,
        "used": n * CHUNK,
        "data": n * CHUNK,
        "skipped": 0,
        "entries": n,
        "zeros": [],
    }
    m = _head(name, size, 2) | {
        "packs": packs,
        "areas": [area],
        "index": {"hash": info.hash, "size": info.size, "entries": info.entries},
        "totals": {
            "used": n * CHUNK,
            "data": n * CHUNK,
            "stored": sum(p["stored"] for p in packs),  # type: ignore[misc]
            "entries": n,
            "packs": npacks,
        },
    }
    (d / "manifest.json").write_bytes(json.dumps(m, separators=(",", ":")).encode() + b"\n")
    return time.perf_counter() - t, info.size


def make_v1(d: Path, size: int, used: int) -> int:
    n = used // CHUNK
    npacks = -(-n // PER_PACK)
    packs = [{"id": f"{p:064x}", "stored": 9 << 20} for p in range(npacks)]
    with open(d / "manifest-v1.json", "w") as f:
        head = _head("scale", size, 1) | {"packs": packs}
        f.write(json.dumps(head, separators=(",", ":"))[:-1])
        f.write(f',"areas":[{{"kind":"disk","number":null,"start":0,"size":{size},"fstype":"raw",')
        f.write(f'"os_hint":null,"used":{n * CHUNK},"chunks":[')
        for i in range(n):
            if i:
                f.write(",")
            w = i * CHUNK
            f.write(
                f'{{"pack":{i // PER_PACK},"hash":"{os.urandom(32).hex()}","offset":{(i % PER_PACK) * CHUNK},'
                f'"window":{w},"extents":[[{w},{CHUNK}]]}}'
            )
        f.write('],"zeros":[]}]}\n')
    return (d / "manifest-v1.json").stat().st_size


_CHILD = r"""
import resource, sys, time
from pathlib import Path
d, step = Path(sys.argv[1]), sys.argv[2]
from fleetcast.store.manifest import Manifest, load_image  # imports are not the open's time
t = time.perf_counter()
if step == "v1":
    m = Manifest.from_json((d / "manifest-v1.json").read_bytes())
    opened = time.perf_counter() - t
    planned = walked = 0.0
else:
    m = load_image((d / "manifest.json").read_bytes(), d / "index")
    opened = time.perf_counter() - t
    blocks = m.index.blocks_of_pack()
    planned = time.perf_counter() - t - opened
    walked = 0.0
    if step == "walk":
        n = 0
        for p in range(len(m.packs)):
            for e in m.index.pack_entries(p, blocks.get(p, [])):
                n += 1
        assert n == m.entry_count, (n, m.entry_count)
        walked = time.perf_counter() - t - opened - planned
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"{opened:.3f} {planned:.3f} {walked:.3f} {rss:.0f}")
"""

_RESTORE = r"""
import os, random, resource, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[3])
d, target = Path(sys.argv[1]), Path(sys.argv[2])
from scale import synthetic_pack
from fleetcast.store.manifest import load_image
from fleetcast.store import restore as r

first, first_cpu = [0.0], [0.0]
dropped = [0]
real_pwrite = os.pwrite
ino = os.stat(target).st_ino
mine = {}

def pwrite(fd, data, offset):  # the target's writes are counted and dropped
    if mine.setdefault(fd, os.fstat(fd).st_ino == ino):
        if not first[0] and any(memoryview(data)[:4096]):
            first[0], first_cpu[0] = time.perf_counter(), time.process_time()
        dropped[0] += len(data)
        return len(data)
    return real_pwrite(fd, data, offset)

os.pwrite = pwrite

class Synthetic:  # delivers the wanted packs in a random order
    def __init__(self, number):
        self.number = number
    def packs(self, wanted):
        order = list(wanted)
        random.Random(1).shuffle(order)
        for pid in order:
            if pid in self.number:
                yield pid, synthetic_pack(self.number[pid])

class Counted:  # the restore's progress: packs written
    packs = 0

def progress(done, total):
    Counted.packs += 1

real = int(sys.argv[4])
t, c = time.perf_counter(), time.process_time()
m = load_image((d / "manifest.json").read_bytes(), d / "index")
number = {p.id: i for i, p in enumerate(m.pack_refs()) if i < real}
try:
    res = r.restore(m, Synthetic(number), target, progress=progress)
    assert res.chunks_written == m.entry_count, (res.chunks_written, m.entry_count)
    assert dropped[0] >= m.data_bytes, (dropped[0], m.data_bytes)
    whole = 1
except r.RestoreError as exc:  # a partial run: the source has no more packs
    assert "delivered none" in exc.message, exc.message
    whole = 0
took = time.perf_counter() - t
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"{first[0] - t:.3f} {took:.1f} {rss:.0f} {dropped[0]} {Counted.packs - 1} {whole}", end=" ")
print(f"{first_cpu[0] - c:.3f}")
"""


def bench_restore(text: str, size: int, used: int, base: Path, limit: int) -> None:
    """A restore of a synthetic image in a fresh process; ``limit`` > 0: the source has only that many
    packs (the others' ids are made up), so the restore stops there (a partial run of a huge image)."""
    with tempfile.TemporaryDirectory(prefix="fc-restore-", dir=base) as tmp:
        d = Path(tmp)
        npacks = used // CHUNK // PER_PACK
        real = min(limit, npacks) if limit else npacks
        made, isize = make_v2(d, size, used, real=real)
        target = d / "target.img"
        with open(target, "wb") as f:
            f.truncate(size)
        out = subprocess.run(
            [sys.executable, "-c", _RESTORE, str(d), str(target), str(Path(__file__).parent), str(real)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        n = used // CHUNK
        what = (
            "whole"
            if out[5] == "1"
            else f"partial: the source had {real:,} packs, the restore wrote {out[4]}"
        )
        print(
            f"restore {text} disk, {used / GiB:g} GiB used, {n:,} entries (index {isize:,} B), "
            f"{npacks:,} packs in a random order (made in {made:.0f} s), {what}: first data byte written "
            f"{float(out[0]):.2f} s (CPU {float(out[6]):.2f} s) after the start of load_image, {out[1]} s, "
            f"peak RSS {out[2]} MiB, {int(out[3]):,} bytes written; load average "
            + " ".join(f"{x:.1f}" for x in os.getloadavg())
        )


def child(d: Path, step: str) -> tuple[float, float, float, float]:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(d), step], check=True, capture_output=True, text=True
    ).stdout.split()
    return float(out[0]), float(out[1]), float(out[2]), float(out[3])


_LIST = r"""
import resource, sys, time
from pathlib import Path
from fleetcast.store.images import ImageStore
store = ImageStore(Path(sys.argv[1]))
t, c = time.perf_counter(), time.process_time()
if sys.argv[2] == "summaries":  # what image list and the server's listing read: the listing cache
    n = len(store.summaries())
else:
    images = store.list(lazy=sys.argv[2] == "lazy")
    usage = store.usage(images)
    n = len(usage)
took, cpu = time.perf_counter() - t, time.process_time() - c
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"{took:.3f} {rss:.0f} {n} {cpu:.3f}")
"""


def bench_list(count: int, used: int, base: Path) -> None:
    """``image list`` of ``count`` images: in-process (lazy vs eager), and the whole CLI process."""
    with tempfile.TemporaryDirectory(prefix="fc-list-", dir=base) as tmp:
        root = Path(tmp) / "store"
        t = time.perf_counter()
        isize = 0
        for i in range(count):
            d = root / "images" / f"img{i:03d}"
            d.mkdir(parents=True)
            isize += make_v2(d, 2 * used, used, name=f"img{i:03d}", own=i + 1)[1]
        made = time.perf_counter() - t
        print(
            f"image list: {count} images of {used / GiB:.0f} GiB used each "
            f"(index {isize // count:,} B each), made in {made:.1f} s"
        )
        # the listing cache: every image taken into the dedupe index (its packs; its chunk rows are not
        # needed by a listing and would take minutes to insert here), then `image list` reads summaries
        from fleetcast.store.dedupe import DedupeIndex
        from fleetcast.store.images import ImageStore

        store = ImageStore(root)
        with DedupeIndex.open(store, sync=False) as dx:
            for name in store.names():
                dx.add_image(store.open(name, lazy=True), chunks=False)
        for mode in ("summaries", "lazy", "eager"):
            runs = []
            for _ in range(3):
                out = subprocess.run(
                    [sys.executable, "-c", _LIST, str(root), mode], check=True, capture_output=True, text=True
                ).stdout.split()
                runs.append((float(out[0]), float(out[1]), float(out[3])))
            best = min(runs)
            what = "store.summaries()" if mode == "summaries" else f"store.list({mode}) + usage"
            print(
                f"  {what}: {best[0]:.3f} s, CPU {best[2]:.3f} s (best of 3), peak RSS {best[1]:.0f} MiB; "
                "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())
            )
        exe = Path(sys.executable).parent / "fleetcast"
        runs2 = []
        cpus = []
        for _ in range(3):
            t, c = time.perf_counter(), _children_cpu()
            proc = subprocess.run(
                [str(exe), "image", "list", "--json", "--store", str(root)],
                check=True,
                capture_output=True,
                text=True,
            )
            runs2.append(time.perf_counter() - t)
            cpus.append(_children_cpu() - c)
            listed = json.loads(proc.stdout)
            assert len(listed) == count and all("unique_bytes" in x for x in listed)
            if not runs2[1:]:
                print(f"  fleetcast image list --json, first run (fills the listing cache): {runs2[0]:.3f} s")
        t, c = time.perf_counter(), _children_cpu()
        subprocess.run([str(exe), "--help"], check=True, capture_output=True)
        startup, startup_cpu = time.perf_counter() - t, _children_cpu() - c
        print(
            f"  fleetcast image list --json (whole process, from the listing cache): {min(runs2[1:]):.3f} s "
            "best of 2 "
            f"(process start-up alone, fleetcast --help: {startup:.3f} s); CPU {min(cpus[1:]):.3f} s "
            f"(start-up {startup_cpu:.3f} s)"
        )


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def parse_size(text: str) -> int:
    units = {"G": GiB, "T": 1024 * GiB}
    return int(float(text[:-1]) * units[text[-1].upper()])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="64G,1T")
    ap.add_argument("--used", default="64G=48G,1T=500G", help="used bytes per size (SIZE=USED,...)")
    ap.add_argument("--no-v1", action="store_true", help="skip the format-1 baseline")
    ap.add_argument("--list", type=int, default=100, metavar="N", help="image list of N images (0: skip)")
    ap.add_argument("--list-used", default="8G", help="used bytes of each listed image")
    ap.add_argument("--only-list", action="store_true", help="only the image list part")
    ap.add_argument(
        "--restore", default="", metavar="SIZES", help="whole restores of these sizes (1G,64G,1T)"
    )
    ap.add_argument(
        "--restore-packs", type=int, default=0, metavar="N", help="restores: the source has only N packs"
    )
    args = ap.parse_args()
    used_of = dict(kv.split("=") for kv in args.used.split(","))
    base = Path(os.environ.get("TMPDIR", "/tmp"))
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus; 64 KiB entries, 16 MiB packs")
    if args.list:
        bench_list(args.list, parse_size(args.list_used), base)
    for text in [t for t in args.restore.split(",") if t]:
        bench_restore(text, parse_size(text), parse_size(used_of.get(text, text)), base, args.restore_packs)
    for text in [] if args.only_list else [t for t in args.sizes.split(",") if t]:
        size = parse_size(text)
        used = parse_size(used_of.get(text, text))
        with tempfile.TemporaryDirectory(prefix="fc-scale-", dir=base) as tmp:
            d = Path(tmp)
            wrote, isize = make_v2(d, size, used)
            n = used // CHUNK
            o, p, _, rss_plan = child(d, "plan")
            _, _, w, rss_walk = child(d, "walk")
            print(
                f"{text} disk, {used / GiB:.0f} GiB used, {n:,} entries: index {isize:,} B "
                f"({100 * isize / used:.3f} % of used), written in {wrote:.1f} s; "
                f"open {o:.2f} s, plan {p:.3f} s (peak RSS {rss_plan:.0f} MiB); "
                f"every pack's entries walked in {w:.1f} s (peak RSS {rss_walk:.0f} MiB)"
            )
            if not args.no_v1 and size <= 64 * GiB:
                jsize = make_v1(d, size, used)
                o1, _, _, rss1 = child(d, "v1")
                print(
                    f"  format 1 baseline, same image: manifest {jsize:,} B, parse {o1:.1f} s, "
                    f"peak RSS {rss1:.0f} MiB -> format 2 open {o / o1:.3f}x the time, "
                    f"{rss_plan / rss1:.2f}x the memory, {isize / jsize:.3f}x the bytes"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
