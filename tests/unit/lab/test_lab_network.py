"""lab.netns without root: what a half-built lab network removes (commands recorded, not run)."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from fleetcast.lab import netns
from fleetcast.lab.netns import LabNetwork


def test_interrupted_create_deletes_what_it_made(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def fake_run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[bytes]:
        calls.append(list(argv))
        if argv[:3] == ["ip", "netns", "add"] and len([c for c in calls if c[:3] == argv[:3]]) == 2:
            raise KeyboardInterrupt  # Ctrl-C while the second namespace is made
        return subprocess.CompletedProcess(argv, 0, b"", b"")

    monkeypatch.setattr(netns, "run", fake_run)
    lab = LabNetwork(clients=1)
    with pytest.raises(KeyboardInterrupt):
        lab.create()
    deleted = [c[3] for c in calls if c[:3] == ["ip", "netns", "del"]]
    assert deleted == [lab.hub]  # the only namespace that was made
