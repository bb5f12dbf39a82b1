"""Fixtures for the Windows identity tests: real hives unpacked into tmp, Windows-like trees."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.fixtures.windows_tree import TreeInfo, build_windows_tree, unpack


@pytest.fixture
def hive_file(tmp_path: Path):  # type: ignore[no-untyped-def]
    """unpack("regipy/SAM.xz") -> a fresh decompressed copy in tmp."""

    def make(rel: str, name: str | None = None) -> Path:
        return unpack(rel, tmp_path / (name or Path(rel).name.removesuffix(".xz")))

    return make


@pytest.fixture
def tree(tmp_path: Path) -> TreeInfo:
    """A plain-directory Windows tree: Windows 7 SYSTEM, winreg-kb SAM + SECURITY, built SOFTWARE."""
    return build_windows_tree(tmp_path / "vol", with_acls=False)
