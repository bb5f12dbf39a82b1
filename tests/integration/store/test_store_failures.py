"""Corruption, crashes and bad input: the store never reports success for damaged data and never shows a
partial image; bad arguments get exact error texts (CLI, as acceptance checks call it)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from store_disks import sha256

from fleetcast.store.capture import capture
from fleetcast.store.images import ImageStore

pytestmark = pytest.mark.integration


def fc(fleetcast_bin: Path, *args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [os.fspath(fleetcast_bin), *(os.fspath(a) if isinstance(a, Path) else str(a) for a in args)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_flipped_byte_fails_verify_and_restore(golden: Path, tmp_path: Path, fleetcast_bin: Path) -> None:
    store = ImageStore(tmp_path / "store")
    m = capture(golden, "g", store)
    victim = max(m.chunk_ids(), key=lambda c: m.chunk_sizes()[c])
    path = store.chunk_path(victim)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))

    proc = fc(fleetcast_bin, "image", "verify", "g", "--store", store.root)
    assert proc.returncode == 4
    npacks = len(m.pack_ids())
    # each problem once: on stdout, the error line only counts them
    assert proc.stderr.splitlines()[0] == (
        f"fleetcast: error: image 'g' failed verification: 1 of {npacks} packs damaged or missing"
    )
    problem = f"problem: image 'g': pack {victim} is corrupt: its stored bytes hash to "
    assert [line for line in proc.stdout.splitlines() if line.startswith(problem)] == proc.stdout.splitlines()
    assert len(proc.stdout.splitlines()) == 1
    assert victim not in proc.stderr
    proc = fc(fleetcast_bin, "image", "verify", "g", "--store", store.root, "--json")
    assert proc.returncode == 4
    report = json.loads(proc.stdout)
    assert report["ok"] is False
    assert victim in report["problems"][0]

    target = tmp_path / "t.img"
    proc = fc(fleetcast_bin, "image", "restore", "g", target, "--store", store.root)
    assert proc.returncode == 4
    assert f"fleetcast: error: image 'g': pack {victim} is corrupt: its stored bytes hash to " in proc.stderr
    assert "restored" not in proc.stdout

    proc = fc(fleetcast_bin, "store", "check", "--store", store.root, "--json")
    assert proc.returncode == 4
    check = json.loads(proc.stdout)
    assert len(check["damaged_chunks"]) == 1
    assert victim in check["damaged_chunks"][0]


def test_a_missing_pack_exits_4_naming_the_image(golden: Path, tmp_path: Path, fleetcast_bin: Path) -> None:
    store = ImageStore(tmp_path / "store")
    m = capture(golden, "g", store)
    victim = m.pack_ids()[-1]
    store.chunk_path(victim).unlink()
    missing = f"image 'g': pack {victim} is missing from the store {store.root}"
    proc = fc(fleetcast_bin, "image", "verify", "g", "--store", store.root)
    assert (proc.returncode, proc.stdout) == (4, f"problem: {missing}\n")
    target = tmp_path / "t.img"
    proc = fc(fleetcast_bin, "image", "restore", "g", target, "--store", store.root)
    assert proc.returncode == 4
    assert proc.stderr.splitlines()[0] == f"fleetcast: error: {missing}"
    assert not target.exists()  # the file restore created is removed again
    proc = fc(fleetcast_bin, "store", "check", "--store", store.root, "--json")
    assert proc.returncode == 4
    assert json.loads(proc.stdout)["missing_chunks"] == [victim]


def test_kill_9_capture_leaves_no_image(tmp_path: Path, fleetcast_bin: Path) -> None:
    store = tmp_path / "store"
    rnd = random.Random(42)
    # 160 MiB of compressible noise: long enough to kill a capture at random moments inside it
    golden = tmp_path / "noise.img"
    letters = bytes(97 + b % 16 for b in range(256))
    with open(golden, "wb") as f:
        for _ in range(160):
            f.write(rnd.randbytes(1 << 20).translate(letters))
    # how long a full capture takes here (the second run, with the source in the page cache)
    full = 1e9
    for _ in range(2):
        started = time.monotonic()
        proc = fc(fleetcast_bin, "image", "capture", golden, "probe", "--store", store, "--json")
        assert proc.returncode == 0, proc.stderr
        full = min(full, time.monotonic() - started)
        assert fc(fleetcast_bin, "image", "rm", "probe", "--store", store).returncode == 0
        assert fc(fleetcast_bin, "store", "gc", "--store", store).returncode == 0
    killed = 0
    for attempt in range(10):
        if killed >= 3:
            break
        child = subprocess.Popen(
            [fleetcast_bin, "image", "capture", golden, f"crash{attempt}", "--store", store, "--json"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rnd.uniform(0.05 * full, 0.6 * full))
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            killed += 1
        child.wait()
        listed = [
            i["name"]
            for i in json.loads(fc(fleetcast_bin, "image", "list", "--store", store, "--json").stdout)
        ]
        if child.returncode == -signal.SIGKILL:
            assert f"crash{attempt}" not in listed
        else:  # finished before the kill: complete; removed so the next attempt does all the work again
            assert child.returncode == 0
            assert fc(fleetcast_bin, "image", "verify", f"crash{attempt}", "--store", store).returncode == 0
            assert fc(fleetcast_bin, "image", "rm", f"crash{attempt}", "--store", store).returncode == 0
            assert fc(fleetcast_bin, "store", "gc", "--store", store).returncode == 0
        assert fc(fleetcast_bin, "store", "check", "--store", store).returncode in (0, 4)
    assert killed >= 1
    gc = fc(fleetcast_bin, "store", "gc", "--store", store, "--json")
    assert gc.returncode == 0, gc.stderr
    check = fc(fleetcast_bin, "store", "check", "--store", store, "--json")
    assert check.returncode == 0, check.stdout
    assert json.loads(check.stdout)["leftovers"] == []
    assert json.loads(check.stdout)["unreferenced_chunks"] == 0
    proc = fc(fleetcast_bin, "image", "capture", golden, "after", "--store", store)
    assert proc.returncode == 0, proc.stderr
    assert fc(fleetcast_bin, "image", "verify", "after", "--store", store).returncode == 0


def test_bad_arguments(golden: Path, tmp_path: Path, fleetcast_bin: Path) -> None:
    store = tmp_path / "store"
    assert fc(fleetcast_bin, "image", "capture", golden, "g", "--store", store).returncode == 0
    size = golden.stat().st_size

    proc = fc(fleetcast_bin, "image", "restore", "nope", tmp_path / "x.img", "--store", store)
    assert proc.returncode == 3
    assert (
        proc.stderr.splitlines()[0] == f"fleetcast: error: image 'nope' does not exist in the store {store}"
    )
    assert not (tmp_path / "x.img").exists()

    small = tmp_path / "small.img"
    with open(small, "wb") as f:
        f.truncate(10 << 20)
    before = sha256(small)
    proc = fc(fleetcast_bin, "image", "restore", "g", small, "--store", store)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"fleetcast: error: target {small} is 10.0 MiB (10485760 bytes) but image 'g' needs at least "
        f"{size / (1 << 20):.1f} MiB ({size} bytes)",
        "hint: pick a larger disk",
    ]
    assert sha256(small) == before

    proc = fc(fleetcast_bin, "image", "capture", tmp_path, "d", "--store", store)
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[0] == (
        f"fleetcast: error: {tmp_path} is not a disk: expected a block device or a disk-image file, "
        "found a directory"
    )
    proc = fc(fleetcast_bin, "image", "capture", tmp_path / "missing.img", "m", "--store", store)
    assert proc.stderr.splitlines()[0] == f"fleetcast: error: disk {tmp_path / 'missing.img'} does not exist"
    tiny = tmp_path / "tiny.img"
    tiny.write_bytes(b"x" * 100)
    proc = fc(fleetcast_bin, "image", "capture", tiny, "t", "--store", store)
    assert proc.stderr.splitlines()[0] == (
        f"fleetcast: error: source {tiny} is not a disk: it is 100 bytes, too small for a partition table "
        "or filesystem"
    )
    proc = fc(fleetcast_bin, "image", "capture", golden, "g", "--store", store)
    assert proc.stderr.splitlines() == [
        f"fleetcast: error: image 'g' already exists in the store {store}",
        "hint: pick another name, or remove it first: fleetcast image rm g",
    ]
    proc = fc(fleetcast_bin, "image", "capture", golden, "../evil", "--store", store)
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[0] == (
        "fleetcast: error: image name '../evil' is not valid: "
        "expected 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
    )
    proc = fc(fleetcast_bin, "image", "info", "nope", "--store", store)
    assert proc.returncode == 3

    # a manifest damaged on disk is named, not trusted
    manifest = store / "images" / "g" / "manifest.json"
    doc = json.loads(manifest.read_text())
    doc["packs"][0]["id"] = "zz"
    manifest.write_text(json.dumps(doc))
    proc = fc(fleetcast_bin, "image", "restore", "g", tmp_path / "y.img", "--store", store)
    assert proc.returncode == 4  # damaged metadata: the integrity exit code (docs/image-format.md)
    assert proc.stderr.splitlines()[0] == (
        "fleetcast: error: image 'g' has an invalid manifest: "
        "packs[0].id must be 64 lower-case hex digits (blake3); found 'zz'"
    )
    assert not (tmp_path / "y.img").exists()
    proc = fc(fleetcast_bin, "store", "gc", "--store", store)
    assert proc.returncode == 1
    assert "refusing to collect garbage: 1 image(s) have damaged manifests" in proc.stderr


def test_sector_size_mismatch(golden: Path, tmp_path: Path, fleetcast_bin: Path) -> None:
    store = tmp_path / "store"
    assert fc(fleetcast_bin, "image", "capture", golden, "g", "--store", store).returncode == 0
    backing = tmp_path / "4k.img"
    with open(backing, "wb") as f:
        f.truncate(golden.stat().st_size + (4 << 20))
    dev = subprocess.run(
        ["losetup", "--find", "--show", "--sector-size", "4096", backing],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    try:
        before = sha256(backing)
        proc = fc(fleetcast_bin, "image", "restore", "g", dev, "--store", store)
        assert proc.returncode == 1
        assert proc.stderr.splitlines()[0] == (
            f"fleetcast: error: target {dev} has 4096-byte logical sectors "
            "but image 'g' was captured from a disk with 512-byte logical sectors"
        )
    finally:
        subprocess.run(["losetup", "--detach", dev], check=True)
    assert sha256(backing) == before
