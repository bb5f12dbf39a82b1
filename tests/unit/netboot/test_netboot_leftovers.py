"""What a SIGKILLed server leaves: its dnsmasq (ended at the next start with the same state folder, only
when /proc says it is dnsmasq with that configuration) and its /run TFTP folder (swept when its owner
and that dnsmasq are gone). Real dnsmasq here with ``port=0`` and no DHCP: it listens on nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetcast.errors import UsageError
from fleetcast.netboot.service import owner_file, sweep_tftp_dirs
from fleetcast.netboot.supervisor import is_dnsmasq_for, pid_alive, pidfile, read_pidfile, stop_leftover

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _quiet_dnsmasq(conf: Path, procs: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    conf.write_text("port=0\npid-file=\n")
    proc = subprocess.Popen(
        [DNSMASQ, f"--conf-file={conf}", "--keep-in-foreground", "--log-facility=-"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    procs.append(proc)
    deadline = time.monotonic() + 5
    while not is_dnsmasq_for(proc.pid, conf) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert is_dnsmasq_for(proc.pid, conf)
    return proc


def _write_pidfile(state: Path, pid: int, conf: Path, owner: int) -> None:
    state.mkdir(parents=True, exist_ok=True)
    pidfile(state).write_text(json.dumps({"pid": pid, "conf": str(conf), "owner": owner}))


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_stop_leftover_ends_our_dnsmasq_only(tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    state = tmp_path / "netboot"
    state.mkdir()
    conf = state / "dnsmasq.conf"
    ours = _quiet_dnsmasq(conf, procs)
    other = _quiet_dnsmasq(tmp_path / "other.conf", procs)
    sleeper = subprocess.Popen(["sleep", "30"])
    procs.append(sleeper)
    # a dnsmasq with another configuration, and a PID reused by something else: both left alone
    for pid in (other.pid, sleeper.pid):
        _write_pidfile(state, pid, conf, _dead_pid())
        assert stop_leftover(state, conf) is None
        assert pid_alive(pid)
        assert not pidfile(state).exists()  # stale: dropped
    # the earlier run of this state folder is dead, its dnsmasq not
    _write_pidfile(state, ours.pid, conf, _dead_pid())
    assert read_pidfile(state) is not None
    assert stop_leftover(state, conf) == ours.pid
    assert ours.wait(timeout=5) is not None and not pid_alive(ours.pid)
    assert other.poll() is None and sleeper.poll() is None
    assert not pidfile(state).exists()
    assert stop_leftover(state, conf) is None  # nothing left: nothing to do


def test_stop_leftover_refuses_a_running_owner(tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    state = tmp_path / "netboot"
    conf = tmp_path / "dnsmasq.conf"
    ours = _quiet_dnsmasq(conf, procs)
    owner = subprocess.Popen(["sleep", "30"])
    procs.append(owner)
    _write_pidfile(state, ours.pid, conf, owner.pid)
    with pytest.raises(UsageError, match=f"still running \\(pid {owner.pid}\\)"):
        stop_leftover(state, conf)
    assert ours.poll() is None
    # a service of this very process that was forgotten (never stopped): its dnsmasq is ended
    _write_pidfile(state, ours.pid, conf, os.getpid())
    assert stop_leftover(state, conf) == ours.pid
    assert ours.wait(timeout=5) is not None


def test_sweep_removes_only_folders_of_dead_servers(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    base = tmp_path / "run"

    def folder(name: str, owner: int | None, state: Path | None = None) -> Path:
        root = base / f"tftp-{name}"
        (root / "grub").mkdir(parents=True)
        if owner is not None:
            info = {"pid": owner, "state_dir": str(state or tmp_path / name)}
            owner_file(root).write_text(json.dumps(info))
        return root

    dead = folder("dead", _dead_pid())
    alive = folder("alive", os.getpid())
    unknown = folder("unknown", None)
    mine = folder("mine", _dead_pid())
    # its server is dead but its dnsmasq still serves from it
    state = tmp_path / "orphan-state"
    conf = tmp_path / "orphan.conf"
    orphan = _quiet_dnsmasq(conf, procs)
    _write_pidfile(state, orphan.pid, conf, _dead_pid())
    serving = folder("serving", _dead_pid(), state)
    assert sweep_tftp_dirs(base, keep=mine) == [dead]
    assert not dead.exists() and not owner_file(dead).exists()
    assert all(p.is_dir() for p in (alive, unknown, mine, serving))
    orphan.kill()
    orphan.wait()
    assert sweep_tftp_dirs(base, keep=mine) == [serving]
    assert sorted(p.name for p in base.iterdir()) == sorted(
        ["tftp-alive", "tftp-alive.owner", "tftp-unknown", "tftp-mine", "tftp-mine.owner"]
    )
