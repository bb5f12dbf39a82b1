"""The planned image's id goes with every deploy task (STORE's request, issue 14): the agent refuses
another image of the same name (replaced or repacked since the plan)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from servekit import make_image

from fleetcast.server.app import create_app
from fleetcast.server.settings import ServerSettings

sys.path.insert(0, str(Path(__file__).parents[2] / "unit" / "server"))
from serverkit import Server

pytestmark = pytest.mark.integration


def test_deploy_task_carries_the_planned_image_id(tmp_path: Path) -> None:
    settings = ServerSettings(data_dir=tmp_path / "data")
    manifest = make_image(settings.store, "tiny")
    with TestClient(create_app(settings)) as http:
        admin = (settings.secrets_dir / "admin-token").read_text().strip()
        enroll = (settings.secrets_dir / "enroll-token").read_text().strip()
        server = Server(http, admin, enroll, None, settings)  # type: ignore[arg-type]
        agent = server.agent("52:54:00:00:00:01")
        server.post("/api/deployments", {"image": "tiny", "clients": "all", "disk": "0"}, status=201)
        task = agent.heartbeat()["task"]
    assert len(manifest.image_id) == 64
    assert task["image_id"] == manifest.image_id
