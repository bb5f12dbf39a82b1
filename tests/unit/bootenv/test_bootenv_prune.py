"""The boot-environment cache keeps the newest entries: prune (and ensure after a build) removes the
rest, never a build under way, a protected entry, a recently used one, or a base tree still referred to."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fleetcast.bootenv import BootEnvOptions, build

HOUR = 3600.0


def _entry(cache: Path, key: str, base: str, age: float) -> Path:
    entry = cache / key
    entry.mkdir(parents=True)
    for name in ("vmlinuz", "initrd.img"):
        (entry / name).write_bytes(b"x")
    (entry / "manifest.json").write_text(json.dumps({"key": key, "base_key": base}))
    stamp = time.time() - age
    os.utime(entry, (stamp, stamp))
    return entry


def _base(cache: Path, bkey: str, age: float) -> Path:
    base = cache / f"base-{bkey}"
    (base / "root").mkdir(parents=True)
    (base / "root" / "init.done").write_text(bkey)
    stamp = time.time() - age
    os.utime(base, (stamp, stamp))
    return base


def _names(cache: Path) -> set[str]:
    return {p.name for p in cache.iterdir() if p.name != build.LOCK_NAME}


def test_prune_keeps_the_newest_and_the_bases_they_use(tmp_path: Path) -> None:
    for i in range(6):  # e0 newest ... e5 oldest; e4/e5 were made from the old base
        _entry(tmp_path, f"e{i}", "new" if i < 4 else "old", age=(i + 1) * HOUR)
    _base(tmp_path, "new", 7 * HOUR)
    _base(tmp_path, "old", 7 * HOUR)
    (tmp_path / "half").mkdir()  # no manifest: not a complete entry, left to ensure
    removed = build.prune(tmp_path, 3)
    assert sorted(p.name for p in removed) == ["base-old", "e3", "e4", "e5"]
    assert _names(tmp_path) == {"e0", "e1", "e2", "base-new", "half"}
    assert not any(p.name.startswith(".trash") for p in tmp_path.iterdir())


def test_prune_spares_protected_recent_in_flight_and_referenced(tmp_path: Path) -> None:
    _entry(tmp_path, "newest", "a", age=2 * HOUR)
    old = _entry(tmp_path, "protected", "b", age=9 * HOUR)
    _entry(tmp_path, "recent", "c", age=60)  # used a minute ago (and the newest): kept
    _entry(tmp_path, "gone", "d", age=5 * HOUR)
    for b in "abcd":
        _base(tmp_path, b, 9 * HOUR)
    (tmp_path / ".build-newkey-x").mkdir()  # a build under way: its base must stay too
    removed = build.prune(tmp_path, 2, protect=[old])
    assert [p.name for p in removed] == ["gone"]
    assert _names(tmp_path) == {"newest", "protected", "recent", ".build-newkey-x"} | {
        f"base-{b}" for b in "abcd"
    }
    (tmp_path / ".build-newkey-x").rmdir()
    assert [p.name for p in build.prune(tmp_path, 2, protect=[old])] == ["base-d"]
    # keep none: the one used a minute ago (and its base) still stays
    assert {p.name for p in build.prune(tmp_path, 0, protect=[old])} == {"newest", "base-a"}


def test_ensure_prunes_after_a_build_and_keeps_what_it_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(5):
        _entry(tmp_path, f"old{i}", "b", age=(i + 1) * HOUR)
    _base(tmp_path, "b", 0)
    calls: list[str] = []

    def fake_build(options: object, key: str, work: Path, progress: object) -> dict[str, object]:
        calls.append(key)
        (work / "root").mkdir()
        for name in ("vmlinuz", "initrd.img"):
            (work / name).write_bytes(b"k")
        return {"key": key, "base_key": "b"}

    monkeypatch.setattr(build, "_build", fake_build)
    monkeypatch.setattr(build, "which", lambda *a, **k: "/bin/true")
    monkeypatch.setattr(build, "check_packages", lambda names: None)
    monkeypatch.setattr(build, "cache_key", lambda options: "fresh")
    lines: list[str] = []
    env = build.ensure(BootEnvOptions(), cache_dir=tmp_path, progress=lines.append)
    assert env.key == "fresh" and env.kernel == tmp_path / "fresh" / "vmlinuz"
    assert _names(tmp_path) == {"fresh", "old0", "old1", "base-b"}
    assert sum("removed the old cache entry" in line for line in lines) == 3
    # found again: no second build, and its mtime says it was just used
    os.utime(tmp_path / "fresh", (0, 0))
    assert build.ensure(BootEnvOptions(), cache_dir=tmp_path).key == "fresh"
    assert calls == ["fresh"]
    assert time.time() - (tmp_path / "fresh").stat().st_mtime < 60


def test_ensure_uses_the_entry_a_concurrent_build_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def racing_build(options: object, key: str, work: Path, progress: object) -> dict[str, object]:
        (work / "root").mkdir()
        for name in ("vmlinuz", "initrd.img"):
            (work / name).write_bytes(b"mine")
        other = _entry(tmp_path, key, "b", age=0)  # the other process finished first
        (other / "in-use").write_text("a QEMU reads this entry")
        return {"key": key, "base_key": "b"}

    monkeypatch.setattr(build, "_build", racing_build)
    monkeypatch.setattr(build, "which", lambda *a, **k: "/bin/true")
    monkeypatch.setattr(build, "check_packages", lambda names: None)
    monkeypatch.setattr(build, "cache_key", lambda options: "same")
    env = build.ensure(BootEnvOptions(), cache_dir=tmp_path)
    assert (env.root / "in-use").is_file()  # not replaced under the other's reader
    assert env.kernel.read_bytes() == b"x"
    assert _names(tmp_path) == {"same"}  # our own build folder is gone


def _hold_lock(cache: str, ready: object, release: object) -> None:
    with build._locked(Path(cache)):
        ready.set()  # type: ignore[attr-defined]
        release.wait(10)  # type: ignore[attr-defined]


def test_prune_waits_for_the_lock(tmp_path: Path) -> None:
    for i in range(3):
        _entry(tmp_path, f"e{i}", "b", age=(i + 1) * HOUR)
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(tmp_path), ready, release))
    holder.start()
    try:
        assert ready.wait(10)
        cli = subprocess.Popen(
            [sys.executable, "-m", "fleetcast", "bootenv", "prune", "--keep", "1", "--cache", str(tmp_path)],
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.0)
        assert cli.poll() is None, "prune ran while another process held the cache lock"
        assert _names(tmp_path) == {"e0", "e1", "e2"}
        release.set()
        out, _ = cli.communicate(timeout=60)
    finally:
        release.set()
        holder.join(10)
    assert cli.returncode == 0, out
    assert _names(tmp_path) == {"e0"}
    assert f"removed {tmp_path / 'e1'}" in out
