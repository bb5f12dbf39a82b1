"""A server on a tmp data dir (SQLite) with the fake image of serverkit."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from serverkit import FakeCatalog, Server

from fleetcast.server.app import create_app
from fleetcast.server.settings import ServerSettings


@pytest.fixture
def settings(tmp_path: Path) -> ServerSettings:
    return ServerSettings(data_dir=tmp_path / "data", heartbeat_interval=0.5)


@pytest.fixture
def server(settings: ServerSettings) -> Iterator[Server]:
    catalog = FakeCatalog(settings.store)
    app = create_app(settings, catalog=catalog)
    with TestClient(app) as http:
        admin = (settings.secrets_dir / "admin-token").read_text().strip()
        enroll = (settings.secrets_dir / "enroll-token").read_text().strip()
        yield Server(http, admin, enroll, catalog, settings)
