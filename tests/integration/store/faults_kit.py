"""A fault campaign against the image engine (issue 14): corrupt packs, the index and the manifest in every
way a disk or a hostile hand would, kill captures and restores at random moments, race ``rm``/``gc`` with
readers -- and count what passed as intact. Used by tests/integration/store/test_store_faults.py (a bounded
run) and bench/faults.py (hundreds of trials, the counts for the closing note).

"Silent" is the only failure: damage that ``image verify`` or ``store check`` call intact, or a restore
(with the image id a task would carry) that reports success and writes other bytes than the intact image.
A corruption that changes nothing the image depends on (say, a byte of the manifest's ``created`` text, so
verify and a restore without an expected id still give the right disk) is counted as harmless. Every
error must be a ``FleetcastError`` (an exception of another class is counted as a traceback).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fleetcast.errors import FleetcastError
from fleetcast.store.images import ImageStore
from fleetcast.store.index import Entry, IndexReader, write_index
from fleetcast.store.manifest import INDEX_FILE
from fleetcast.store.restore import restore

PACK_KINDS = ("flip", "truncate", "append", "delete", "zero", "swap")
META_KINDS = ("flip", "truncate", "append", "delete")
EDIT_KINDS = ("drop-entry", "shift-extent")  # valid-looking: index rewritten, manifest's index fields fixed


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _rewrite(path: Path, data: bytes) -> None:
    """Replace a file by a new inode (the trial's store is a hard-linked copy of the pristine one)."""
    path.unlink()
    path.write_bytes(data)


def corrupt_file(path: Path, kind: str, rnd: random.Random, *, others: list[Path] | None = None) -> str:
    """Damage one file; returns a description. ``others``: files ``swap`` can take the content of."""
    data = path.read_bytes()
    if kind == "flip":
        at = rnd.randrange(len(data))
        b = bytearray(data)
        b[at] ^= 1 << rnd.randrange(8)
        _rewrite(path, bytes(b))
        return f"bit flipped at byte {at} of {len(data)}"
    if kind == "truncate":
        n = rnd.randrange(len(data))
        _rewrite(path, data[:n])
        return f"truncated to {n} of {len(data)} bytes"
    if kind == "append":
        n = rnd.randint(1, 4096)
        _rewrite(path, data + rnd.randbytes(n))
        return f"{n} bytes appended"
    if kind == "delete":
        path.unlink()
        return "deleted"
    if kind == "zero":
        at = rnd.randrange(len(data))
        n = min(len(data) - at, rnd.randint(1, 65536))
        _rewrite(path, data[:at] + bytes(n) + data[at + n :])
        return f"{n} bytes zeroed at {at}"
    if kind == "swap":
        assert others
        other = rnd.choice([o for o in others if o != path] or others)
        _rewrite(path, other.read_bytes())
        return f"replaced by the content of {other.name[:12]}"
    raise ValueError(kind)


def edit_index(image_dir: Path, kind: str, rnd: random.Random) -> str:
    """A valid-looking edit: the index rewritten (one entry dropped, or an extent shifted inside its
    window), and the manifest's index hash/size/entries (and area entry count) updated to match."""
    manifest = json.loads((image_dir / "manifest.json").read_bytes())
    reader = IndexReader.open(image_dir / INDEX_FILE, None)
    entries = list(reader.entries())
    reader.close()
    chunk = manifest["chunking"]["chunk_size"]

    def room(e: Entry) -> tuple[int, int]:
        area_size = manifest["areas"][e.area]["size"]
        before = e.extents[0][0] - e.window
        after = min(e.window + chunk, area_size) - (e.extents[-1][0] + e.extents[-1][1])
        return before, after

    movable = [i for i, e in enumerate(entries) if any(room(e))]
    if kind == "drop-entry" or not movable:
        i = rnd.randrange(len(entries))
        e = entries[i]
        del entries[i]
        manifest["areas"][e.area]["entries"] -= 1
        what = f"entry {i} (window {e.window}) dropped"
    else:
        i = rnd.choice(movable)
        e = entries[i]
        before, after = room(e)
        shift = min(after, 4096) if after else -min(before, 4096)
        entries[i] = e._replace(extents=tuple((o + shift, n) for o, n in e.extents))
        what = f"entry {i} extents shifted by {shift} inside window {e.window}"
    path = image_dir / INDEX_FILE
    path.unlink()
    info = write_index(path, entries)
    manifest["index"] = {"hash": info.hash, "size": info.size, "entries": info.entries}
    manifest["totals"]["entries"] = info.entries
    _rewrite(image_dir / "manifest.json", json.dumps(manifest, separators=(",", ":")).encode() + b"\n")
    return what


@dataclass
class Tally:
    trials: Counter[str] = field(default_factory=Counter)
    detected: Counter[str] = field(default_factory=Counter)
    harmless: Counter[str] = field(default_factory=Counter)
    silent: list[str] = field(default_factory=list)
    tracebacks: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        total = sum(self.trials.values())
        return (
            f"{total} trials: {sum(self.detected.values())} detected, "
            f"{sum(self.harmless.values())} harmless, {len(self.silent)} silent, "
            f"{len(self.tracebacks)} tracebacks"
        )


def _attempt(fn: Callable[[], object], tally: Tally, what: str) -> tuple[bool, object]:
    """(succeeded, result or error). A non-FleetcastError is a traceback."""
    try:
        return True, fn()
    except FleetcastError as exc:
        return False, exc
    except Exception:
        tally.tracebacks.append(f"{what}: {traceback.format_exc(limit=3)}")
        return False, None


class Campaign:
    """One pristine store with image ``g`` captured from ``disk``; each trial works on a hard-linked copy."""

    def __init__(self, work: Path, disk: Path, seed: int = 0) -> None:
        from fleetcast.store.capture import capture

        self.work = work
        self.disk = disk
        self.rnd = random.Random(seed)
        self.pristine = ImageStore(work / "pristine")
        self.manifest = capture(disk, "g", self.pristine)
        self.image_id = self.manifest.image_id
        self.ref = work / "reference.img"
        restore(self.manifest, self.pristine.source(), self.ref)
        self.reference = _digest(self.ref)
        probe = work / "scribbled.img"
        shutil.copyfile(disk, probe)
        self._scribble(probe)
        self.scribbled = _digest(probe)
        probe.unlink()
        self.n = 0
        self.tally = Tally()

    def _copy(self) -> ImageStore:
        self.n += 1
        dst = self.work / f"t{self.n}"
        subprocess.run(["cp", "-al", os.fspath(self.pristine.root), os.fspath(dst)], check=True)
        for db in dst.glob("dedupe.sqlite*"):  # SQLite writes in place: a real copy, not a link
            data = db.read_bytes()
            _rewrite(db, data)
        return ImageStore(dst)

    def corruption(self, target: str, kind: str) -> None:
        store = self._copy()
        rnd = self.rnd
        label = f"{target}/{kind}"
        image_dir = store.images_dir / "g"
        if target == "pack":
            packs = [store.chunk_path(p) for p in self.manifest.pack_ids()]
            victim = rnd.choice(packs)
            desc = corrupt_file(victim, kind, rnd, others=packs if len(packs) > 1 else None)
        elif target == "index":
            desc = corrupt_file(image_dir / INDEX_FILE, kind, rnd)
        elif target == "manifest":
            desc = corrupt_file(image_dir / "manifest.json", kind, rnd)
        else:
            desc = edit_index(image_dir, kind, rnd)
        self._judge(store, label, desc)
        shutil.rmtree(store.root, ignore_errors=True)

    def _judge(self, store: ImageStore, label: str, desc: str) -> None:
        t = self.tally
        t.trials[label] += 1
        what = f"{label} ({desc})"
        ok_v, res_v = _attempt(lambda: store.verify("g"), t, f"verify {what}")
        verify_intact = ok_v and getattr(res_v, "ok", False)
        ok_c, res_c = _attempt(store.check, t, f"check {what}")
        # a store without the image (its manifest deleted) is not the image called intact: verify and
        # restore say it does not exist, check lists its packs as unreferenced
        check_ok = ok_c and getattr(res_c, "ok", False) and store.exists("g")
        target = store.root / "restored.img"
        ok_r, _ = _attempt(
            lambda: restore(store.open("g"), store.source(), target, expected_id=self.image_id),
            t,
            f"restore {what}",
        )
        restored_right = ok_r and _digest(target) == self.reference
        if ok_r and not restored_right:
            t.silent.append(f"restore with the expected id wrote wrong data: {what}")
        target.unlink(missing_ok=True)
        if verify_intact or check_ok:
            # called intact: only fine when the image still restores exactly (harmless change)
            ok_p, _ = _attempt(
                lambda: restore(store.open("g"), store.source(), target), t, f"plain restore {what}"
            )
            same = ok_p and _digest(target) == self.reference
            target.unlink(missing_ok=True)
            if not same:
                t.silent.append(f"{'verify' if verify_intact else 'check'} called it intact: {what}")
                return
            if not (verify_intact and check_ok):
                t.detected[label] += 1
                return
            t.harmless[label] += 1
            t.notes.append(f"harmless: {what}")
            return
        t.detected[label] += 1

    def _fs_complete(self, target: Path) -> bool:
        """Every partition of the target holds exactly what the intact restore holds there."""
        with open(target, "rb") as a, open(self.ref, "rb") as b:
            for area in self.manifest.areas:
                if area.kind == "gap":
                    continue
                a.seek(area.start)
                b.seek(area.start)
                left = area.size
                while left:
                    n = min(left, 1 << 20)
                    if a.read(n) != b.read(n):
                        return False
                    left -= n
        return True

    @staticmethod
    def _scribble(path: Path) -> None:
        """1 MiB of other data in the middle of the disk (inside a partition, away from any header)."""
        size = path.stat().st_size
        with open(path, "r+b") as f:
            f.seek(size // 2)
            f.write(random.Random(99).randbytes(1 << 20))

    # -- kills -----------------------------------------------------------------------------------------
    def kill_capture(self, fleetcast: Path, delay: float) -> None:
        store = self._copy()
        t = self.tally
        t.trials["kill/capture"] += 1
        proc = subprocess.Popen(
            [
                os.fspath(fleetcast),
                "image",
                "capture",
                os.fspath(self.disk),
                "k",
                "--store",
                os.fspath(store.root),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        what = f"capture killed after {delay:.2f} s"
        names = store.names()
        ok_c, rep = _attempt(store.check, t, f"check after {what}")
        if not ok_c or getattr(rep, "damaged_manifests", ["?"]) or getattr(rep, "damaged_chunks", ["?"]):
            t.silent.append(f"{what}: check found damage {rep}")
        if "k" in names:  # finished before the kill: must be whole
            ok_v, res = _attempt(lambda: store.verify("k"), t, f"verify after {what}")
            if not (ok_v and getattr(res, "ok", False)):
                t.silent.append(f"{what}: a visible image that does not verify")
        ok_g, _ = _attempt(store.gc, t, f"gc after {what}")
        ok_c2, rep2 = _attempt(store.check, t, f"check after gc, {what}")
        if ok_g and ok_c2 and getattr(rep2, "ok", False) and store.verify("g").ok:
            t.detected["kill/capture"] += 1
        else:
            t.silent.append(f"{what}: the store is not clean after gc ({rep2})")
        shutil.rmtree(store.root, ignore_errors=True)

    def kill_restore(self, fleetcast: Path, delay: float) -> None:
        t = self.tally
        t.trials["kill/restore"] += 1
        target = self.work / f"kill{self.n}.img"
        self.n += 1
        # a disk that held the same image, a little changed since (so "untouched" and "restored" differ):
        # the worst case for mounting -- its tables and superblocks are the image's own
        shutil.copyfile(self.disk, target)
        self._scribble(target)
        proc = subprocess.Popen(
            [
                os.fspath(fleetcast),
                "image",
                "restore",
                "g",
                os.fspath(target),
                "--store",
                os.fspath(self.pristine.root),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        rc = proc.wait()
        what = f"restore killed after {delay:.2f} s"
        if rc == 0:
            if _digest(target) == self.reference:
                t.detected["kill/restore"] += 1
                t.notes.append(f"{what}: it had finished")
            else:
                t.silent.append(f"{what}: finished but wrote wrong data")
        elif _digest(target) == self.reference:
            t.detected["kill/restore"] += 1
            t.notes.append(f"{what}: all written when the kill landed (identical)")
        elif _digest(target) == self.scribbled:
            t.detected["kill/restore"] += 1
            t.notes.append(f"{what}: killed before it wrote anything (the old disk, untouched)")
        else:
            table = subprocess.run(["sfdisk", "--dump", os.fspath(target)], capture_output=True, check=False)
            probe = subprocess.run(["blkid", "-p", os.fspath(target)], capture_output=True, check=False)
            visible = (table.returncode == 0 and bool(table.stdout.strip())) or probe.returncode == 0
            if visible and not self._fs_complete(target):
                t.silent.append(f"{what}: the target has a partition table but not the image's filesystems")
            elif visible:
                # killed while the last gap bytes were written: every filesystem is complete already
                t.detected["kill/restore"] += 1
                t.notes.append(f"{what}: killed in the last step, every partition already complete")
            else:
                t.detected["kill/restore"] += 1
        target.unlink(missing_ok=True)

    # -- races -----------------------------------------------------------------------------------------
    def race(self, rounds: int) -> None:
        """rm + re-publish of image 'r' in a thread while list/check/gc/verify run: never damage."""
        from fleetcast.store.capture import capture

        store = self._copy()
        t = self.tally
        stop = threading.Event()
        errors: list[str] = []

        def churn() -> None:
            i = 0
            while not stop.is_set():
                try:
                    capture(self.disk, f"r{i}", store)
                    store.remove(f"r{i}")
                except FleetcastError as exc:
                    errors.append(f"churn: {exc.message}")
                except Exception:
                    t.tracebacks.append(f"churn: {traceback.format_exc(limit=3)}")
                i += 1

        th = threading.Thread(target=churn)
        th.start()
        try:
            for _ in range(rounds):
                t.trials["race"] += 1
                ok_l, res = _attempt(store.list, t, "list during rm")
                ok_c, rep = _attempt(store.check, t, "check during rm")
                if not ok_l or not ok_c or getattr(rep, "damaged_manifests", ["?"]):
                    t.silent.append(f"race: list/check failed or reported damage: {res if not ok_l else rep}")
                else:
                    t.detected["race"] += 1
                ok_g, err = _attempt(store.gc, t, "gc during rm")
                if not ok_g and "busy" not in str(err):
                    t.silent.append(f"race: gc failed: {err}")
        finally:
            stop.set()
            th.join()
        if errors:
            t.silent.extend(errors)
        if not store.verify("g").ok:
            t.silent.append("race: image g damaged after the races")
        shutil.rmtree(store.root, ignore_errors=True)
