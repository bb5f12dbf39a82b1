"""lab.deploy_demo: what the harness leaves behind."""

from __future__ import annotations

from pathlib import Path

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
