"""lab.deploy_demo: what the harness leaves behind."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fleetcast.lab import deploy_demo
from fleetcast.lab.deploy_demo import FleetLab


def test_cli_spawn_is_ended_with_the_lab(tmp_path: Path) -> None:
    # nothing is built (no __enter__): `ip netns exec` of a namespace that does not exist fails at once
    lab = FleetLab(tmp_path, 1)
    proc = lab.cli_spawn("--version", log=tmp_path / "cli.log")
    try:
        assert proc in lab.net.clients[0].procs  # so LabNetwork.stop_processes ends it by PID
    finally:
        proc.communicate(timeout=30)
    lab.net.stop_processes()
    assert lab.net.clients[0].procs == []


def test_follow_shows_the_newest_deployment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class FakeLab:
        def get(self, path: str) -> Any:
            if path == "/api/deployments":  # newest first, as the server lists them
                return {"deployments": [{"deployment": 2}, {"deployment": 1}]}
            return {"clients": [{"name": f"LAB-{path.rsplit('/', 1)[1]}", "state": "queued"}]}

    class OneRound:
        rounds = 0

        def poll(self) -> int | None:
            self.rounds += 1
            return None if self.rounds == 1 else 0

    monkeypatch.setattr(deploy_demo.time, "sleep", lambda s: None)
    deploy_demo._follow(FakeLab(), OneRound())  # type: ignore[arg-type]
    assert capsys.readouterr().out == "  LAB-2: queued\n"
