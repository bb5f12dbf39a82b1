"""The same deploy flow against a real PostgreSQL started by the test (Debian's package)."""

from __future__ import annotations

from pathlib import Path

import pytest
from servekit import deploy_flow, make_image, postgres_cluster, serve

pytestmark = pytest.mark.integration


def test_serve_postgres_deploy_flow(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_image(data / "store")
    with postgres_cluster() as url, serve(data, database=url) as server:
        result = deploy_flow(server, fail_mac="52:54:00:12:34:02")
        states = {c["mac"]: (c["state"], c["error"]) for c in result["clients"]}
        assert states == {
            "52:54:00:12:34:01": ("done", None),
            "52:54:00:12:34:02": ("failed", "disk too small"),
            "52:54:00:12:34:03": ("done", None),
        }
        assert not (data / "fleetcast.db").exists()
        assert server.get("/api/deployments")["deployments"][0]["state"] == "failed"
