"""Fixtures for the store's integration tests (helpers live in store_disks.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from store_disks import build_disk


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("golden")
    return build_disk(d / "golden.img")
