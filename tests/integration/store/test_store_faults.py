"""The bounded fault campaign (issue 14): every corruption kind on packs, index and manifest, valid-looking
index edits, capture and restore killed at random moments, rm/gc racing readers -- 0 silent, 0 tracebacks,
0 leaked loop devices. bench/faults.py runs the same campaign with hundreds of trials."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest
from faults_kit import EDIT_KINDS, META_KINDS, PACK_KINDS, Campaign

pytestmark = pytest.mark.integration


def _loops(*paths: Path) -> list[str]:
    """Loop devices backed by these files or files below these directories (others' are not ours)."""
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=False).stdout
    return [line for line in out.splitlines() if any(str(p) in line for p in paths)]


def test_fault_campaign(golden: Path, tmp_path: Path, fleetcast_bin: Path) -> None:
    loops_before = _loops(golden, tmp_path)
    c = Campaign(tmp_path, golden, seed=14)
    for kind in PACK_KINDS:
        c.corruption("pack", kind)
    for target in ("index", "manifest"):
        for kind in META_KINDS:
            c.corruption(target, kind)
    for kind in EDIT_KINDS:
        c.corruption("edit", kind)
    rnd = random.Random(14)
    for _ in range(3):
        c.kill_capture(fleetcast_bin, rnd.uniform(0.3, 2.5))
    for _ in range(3):
        c.kill_restore(fleetcast_bin, rnd.uniform(0.3, 2.0))
    c.race(3)
    t = c.tally
    print(t.line())
    assert t.silent == [], "\n".join(t.silent)
    assert t.tracebacks == []
    assert sum(t.trials.values()) == 6 + 8 + 2 + 3 + 3 + 3
    assert sum(t.detected.values()) + sum(t.harmless.values()) == sum(t.trials.values())
    # every pack and index corruption, and every valid-looking edit, is detected (never merely harmless)
    assert all(t.detected[f"pack/{k}"] == 1 for k in PACK_KINDS)
    assert all(t.detected[f"index/{k}"] == 1 for k in META_KINDS)
    assert all(t.detected[f"edit/{k}"] == 1 for k in EDIT_KINDS)
    assert _loops(golden, tmp_path) == loops_before == []
