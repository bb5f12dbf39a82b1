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


def test_an_area_prefix_starts_every_namespace_name() -> None:
    lab = LabNetwork(clients=2, prefix="fc-mc-")
    names = [lab.hub, *(n.name for n in lab.nodes)]
    assert names == [f"fc-mc-{lab.token}-{label}" for label in ("hub", "server", "client1", "client2")]
    assert [n.hub_port for n in lab.nodes] == ["v0", "v1", "v2"]  # the veths do not carry the prefix
    default = LabNetwork(clients=1)
    assert default.hub == f"fc{default.token}-hub"  # unchanged without a prefix
    with pytest.raises(netns.LabError, match="prefix 'fc mc'"):
        LabNetwork(clients=1, prefix="fc mc")
