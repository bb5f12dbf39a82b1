"""Shared test plumbing. Real-component tests need root (loop devices, mounts, namespaces)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
FLEETCAST = Path(sys.executable).parent / "fleetcast"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (loop devices, mounts, network namespaces)")
    for item in items:
        if "integration" in item.keywords or "e2e" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def fleetcast_bin() -> Path:
    """The installed CLI (acceptance checks call .venv/bin/fleetcast)."""
    assert FLEETCAST.exists(), f"{FLEETCAST} missing: run make setup"
    return FLEETCAST


def require(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        pytest.fail(f"{program} is not installed; make setup installs it")
    return path
