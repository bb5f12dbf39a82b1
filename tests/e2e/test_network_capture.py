"""Issue 11 end to end: ``fleetcast capture`` of an agent's loop-device disk over the network.

The agent runs in one network namespace with a loop device holding a generated golden disk (GPT: FAT32 ESP
written with mtools, NTFS through ntfs-3g, ext4 with real files -- ``lab.sample_disk``); ``fleetcast serve``
runs in another. Byte counts are the server's own interface counters
(``/sys/class/net/eth0/statistics/rx_bytes`` inside its namespace).

1. capture, restore the image locally: every partition identical, the source's sha256 unchanged; an
   existing name is refused before anything is read; after changing ~1 % of the files a second capture
   makes the server receive < 5 % of the first capture's bytes.
2. faults: the agent is killed (SIGKILL) mid-upload, a store gc runs meanwhile (the capture's leases keep its
   packs), the agent comes back and resumes; then its link is cut (nftables drop in the server's namespace)
   for 20 s. No partial image is ever listed, the capture completes, restores identically, and the server
   received < 1.1 x the bytes of a clean capture of the same disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetcast.lab.deploy_demo import Agent, FleetLab
from fleetcast.run import run

pytestmark = pytest.mark.e2e

MiB = 1 << 20
DISK_SIZE = 320 * MiB
RATE = "80mbit"  # the agent's uplink in the fault test: slow enough to interrupt, fast enough for a test
CUT_SECONDS = 20
RESULT_KEYS = {"image", "bytes_read", "bytes_sent", "chunks_new", "chunks_known", "seconds"}

# run with mounts private to the helper process (other sessions create namespaces meanwhile)
_BUILD = """
import sys
from pathlib import Path
from fleetcast.lab.sample_disk import build_sample_disk
build_sample_disk(Path(sys.argv[1]), size=int(sys.argv[2]), esp_mib=32, fill=0.5, seed=11)
"""
_CHANGE = """
import random, sys
from pathlib import Path
from fleetcast.lab.sample_disk import mount_partition
rng = random.Random(5)
changed = 0
for number in (2, 3):  # NTFS and ext4
    with mount_partition(Path(sys.argv[1]), number) as mnt:
        files = sorted(p for p in mnt.rglob("*") if p.is_file() and not p.is_symlink())
        for p in rng.sample(files, max(1, len(files) // 100)):
            size = p.stat().st_size
            p.write_bytes(rng.randbytes(size))
            changed += size
print(changed)
"""
_COMPARE = """
import json, sys
from pathlib import Path
from fleetcast.lab.sample_disk import mount_partition
from fleetcast.lab.treecompare import compare_trees
diffs = []
for number in (2, 3):
    with mount_partition(Path(sys.argv[1]), number, read_only=True) as a:
        with mount_partition(Path(sys.argv[2]), number, read_only=True) as b:
            diffs += [f"partition {number}: {d}" for d in compare_trees(a, b)]
print(json.dumps(diffs))
"""


def _private(script: str, *args: str) -> str:
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", sys.executable, "-c", script, *args],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("golden") / "golden.img"
    _private(_BUILD, str(path), str(DISK_SIZE))
    return path


def sha256(path: Path, offset: int = 0, size: int | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(offset)
        left = size if size is not None else os.fstat(f.fileno()).st_size - offset
        if size is None and path.is_block_device():
            left = int(run(["blockdev", "--getsize64", str(path)]).stdout) - offset
        while left > 0:
            block = f.read(min(left, 4 * MiB))
            if not block:
                break
            h.update(block)
            left -= len(block)
    return h.hexdigest()


def partitions(path: Path) -> dict[int, str]:
    from fleetcast.disk.partitions import read_table

    table = read_table(path)
    ss = table.sector_size
    return {p.number: sha256(path, p.start * ss, p.size * ss) for p in table.partitions}


def rx_bytes(lab: FleetLab) -> int:
    proc = lab.net.server.run(["cat", "/sys/class/net/eth0/statistics/rx_bytes"])
    return int(proc.stdout)


def _wait(what: str, predicate: Any, timeout: float = 300.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def _load_golden(agent: Agent, golden: Path) -> None:
    """The golden disk onto the agent's loop device (zero blocks skipped: the backing file is new)."""
    run(["dd", f"if={golden}", f"of={agent.disk}", "bs=4M", "conv=sparse,fsync", "status=none"])
    run(["blockdev", "--flushbufs", str(agent.disk)])


@pytest.fixture
def lab(tmp_path: Path, golden: Path) -> Iterator[FleetLab]:
    with FleetLab(tmp_path, 1, disk_size=golden.stat().st_size) as lab:
        lab.start_server()
        lab.add_disks()
        _load_golden(lab.agents[0], golden)
        lab.start_agents()
        lab.wait_enrolled(1)
        yield lab


def _args(lab: FleetLab, name: str, *extra: str) -> list[str]:
    mac = lab.agents[0].node.mac
    return ["capture", mac, name, "--server", lab.url, f"--token={lab.admin_token}", "--disk", "0", *extra]


def capture(lab: FleetLab, name: str, *extra: str) -> tuple[int, dict[str, Any] | None, str]:
    proc = lab.cli(*_args(lab, name, "--wait", "--json", *extra))
    out = proc.stdout.decode()
    return proc.returncode, json.loads(out) if out.strip() else None, proc.stderr.decode()


def _restore(lab: FleetLab, name: str, target: Path) -> None:
    from fleetcast.store.images import ImageStore
    from fleetcast.store.restore import restore

    store = ImageStore(lab.data / "store")
    with open(target, "wb") as f:
        f.truncate(DISK_SIZE)
    restore(store.open(name), store.source(), target)


def restored_partitions(lab: FleetLab, name: str, tmp: Path) -> dict[int, str]:
    """sha256 of every partition of image ``name`` restored onto a new file."""
    target = tmp / f"{name}-restored.img"
    _restore(lab, name, target)
    try:
        return partitions(target)
    finally:
        target.unlink()


def restored_differences(lab: FleetLab, name: str, source: Path, tmp: Path) -> list[str]:
    """How image ``name`` restored differs from ``source`` (a disk whose files changed in place, so its
    free blocks keep old data that no image carries): the ESP byte for byte, NTFS and ext4 file by file
    (contents, sizes, modes, owners, links, xattrs)."""
    target = tmp / f"{name}-restored.img"
    _restore(lab, name, target)
    try:
        diffs = [] if partitions(target)[1] == partitions(source)[1] else ["partition 1 differs"]
        diffs += json.loads(_private(_COMPARE, str(source), str(target)))
        return diffs
    finally:
        target.unlink()


def images(lab: FleetLab) -> list[str]:
    return [i["name"] for i in lab.get("/api/images")["images"]]


def test_capture_restore_and_recapture_sends_only_changes(
    lab: FleetLab, golden: Path, tmp_path: Path
) -> None:
    agent = lab.agents[0]
    source_before = sha256(agent.disk)
    golden_parts = partitions(golden)
    assert len(golden_parts) == 3

    rx0 = rx_bytes(lab)
    rc, first, err = capture(lab, "golden-v1")
    rx_first = rx_bytes(lab) - rx0
    assert rc == 0, err
    assert first is not None and set(first) == RESULT_KEYS
    assert first["image"] == "golden-v1"
    assert first["chunks_known"] == 0 and first["chunks_new"] > 0
    assert 0 < first["bytes_sent"] < first["bytes_read"]  # compressed, zeros never sent
    assert rx_first >= first["bytes_sent"]
    assert sha256(agent.disk) == source_before  # never written
    assert images(lab) == ["golden-v1"]
    assert restored_partitions(lab, "golden-v1", tmp_path) == golden_parts
    # progress in the server's events, as for deploys: phase, bytes, rate, ETA; then the published counters
    cid = lab.get("/api/captures")["captures"][0]["capture"]
    events = lab.events(cid)
    progress = [e for e in events if e["type"] == "client-progress" and e["phase"] == "capturing"]
    assert progress and progress[-1]["bytes_total"] == first["bytes_read"]
    assert any(e["rate_bps"] > 0 and e["eta_seconds"] is not None for e in progress), progress[-3:]
    published = [e for e in events if e["type"] == "capture-published"]
    assert len(published) == 1 and published[0]["bytes_read"] == first["bytes_read"]
    assert [e["type"] for e in events][-1] == "deployment-finished"

    # an existing name is refused at once: no task, nothing read
    rc, _, err = capture(lab, "golden-v1")
    assert rc != 0
    assert "image 'golden-v1' already exists on the server" in err
    assert len(lab.get("/api/captures")["captures"]) == 1

    # ~1 % of the files change; the server receives only their chunks
    changed = int(_private(_CHANGE, str(agent.backing)))
    assert changed > 0
    run(["blockdev", "--flushbufs", str(agent.disk)])
    source_changed = sha256(agent.disk)
    assert source_changed != source_before
    rx1 = rx_bytes(lab)
    rc, second, err = capture(lab, "golden-v2")
    rx_second = rx_bytes(lab) - rx1
    assert rc == 0, err
    assert second is not None and set(second) == RESULT_KEYS
    assert second["chunks_known"] > 10 * second["chunks_new"] > 0
    print(f"network re-capture: server received {rx_second} bytes, the first capture {rx_first}")
    assert rx_second < 0.05 * rx_first, (rx_second, rx_first, second)
    assert sha256(agent.disk) == source_changed
    # --replace publishes over an existing name
    rc, third, err = capture(lab, "golden-v1", "--replace")
    assert rc == 0, err
    assert third is not None and third["chunks_new"] == 0, third
    assert sha256(agent.disk) == source_changed

    # both are the changed disk (file by file: freed blocks keep old data that no image carries)
    assert restored_differences(lab, "golden-v2", agent.backing, tmp_path) == []
    assert restored_differences(lab, "golden-v1", agent.backing, tmp_path) == []
    assert sorted(images(lab)) == ["golden-v1", "golden-v2"]


def _gc(lab: FleetLab) -> Any:
    from fleetcast.server.capture import leased_packs
    from fleetcast.server.db import Database
    from fleetcast.store.images import ImageStore
    from fleetcast.store.maintenance import gc_store

    db = Database(f"sqlite:///{lab.data / 'fleetcast.db'}")
    try:
        return gc_store(ImageStore(lab.data / "store"), protect=lambda: leased_packs(db))
    finally:
        db.close()


def _nft(lab: FleetLab, *rules: str) -> None:
    for rule in rules:
        lab.net.server.run(["nft", *rule.split()])


def test_capture_survives_kill_gc_and_link_cut(lab: FleetLab, golden: Path, tmp_path: Path) -> None:
    from fleetcast.store.images import ImageStore

    agent = lab.agents[0]
    lab.net.limit(agent.node, RATE)
    golden_parts = partitions(golden)
    store = ImageStore(lab.data / "store")

    # a clean capture: the reference, then removed again so the next capture must send everything
    rx0 = rx_bytes(lab)
    rc, clean, err = capture(lab, "clean")
    rx_clean = rx_bytes(lab) - rx0
    assert rc == 0 and clean is not None, err
    store.remove("clean")
    report = _gc(lab)
    assert not any(store.chunks.iter_files()), report

    rx1 = rx_bytes(lab)
    cli = lab.cli_spawn(*_args(lab, "faulty", "--wait", "--json"), log=tmp_path / "capture.err")
    try:

        def started() -> Any:
            return next((c for c in lab.get("/api/captures")["captures"] if c["image"] == "faulty"), None)

        cid = _wait("the capture to start", started)["capture"]

        def sent() -> int:
            return int(lab.get(f"/api/captures/{cid}")["bytes_sent"])

        # 1. kill -9 mid-upload; gc while it is down; nothing listed
        _wait("a third of the upload", lambda: sent() > clean["bytes_sent"] // 3)
        lab.kill_agent(agent)
        assert "faulty" not in images(lab)
        report = _gc(lab)
        assert report.protected_packs > 0, report
        assert "faulty" not in images(lab)
        lab.start_agent(agent)
        # 2. the link cut for 20 s mid-upload
        _wait("two thirds of the upload", lambda: sent() > 2 * clean["bytes_sent"] // 3)
        _nft(
            lab,
            "add table inet fccap",
            "add chain inet fccap in { type filter hook input priority 0 ; policy drop ; }",
        )
        try:
            time.sleep(CUT_SECONDS)
        finally:
            _nft(lab, "delete table inet fccap")
        out, _ = cli.communicate(timeout=600)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    rx_faulty = rx_bytes(lab) - rx1
    assert cli.returncode == 0, (tmp_path / "capture.err").read_text()[-3000:]
    result = json.loads(out)
    assert set(result) == RESULT_KEYS and result["image"] == "faulty"
    view = lab.get(f"/api/captures/{cid}")
    assert view["state"] == "done" and view["attempt"] >= 2, view
    assert images(lab) == ["faulty"]
    assert restored_partitions(lab, "faulty", tmp_path) == golden_parts
    print(f"network capture faults: server received {rx_faulty} bytes, a clean capture {rx_clean}")
    assert rx_faulty < 1.1 * rx_clean, (rx_faulty, rx_clean)
    assert result["bytes_sent"] < 1.1 * clean["bytes_sent"], (result, clean)
