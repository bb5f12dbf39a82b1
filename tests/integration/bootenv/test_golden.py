"""The lab's golden Debian disk, captured into the store.

Its boots are carried by the lab, on the deployed copies: BIOS and UEFI in tests/e2e/test_lab_demo.py,
UEFI Secure Boot in tests/e2e/test_lab_netboot.py (each reports hostname, IP, machine-id and Secure Boot).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetcast.lab.golden import NAME, ensure_golden, ensure_golden_disk
from fleetcast.store.images import ImageStore

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def golden() -> Path:
    return ensure_golden_disk()


def test_golden_is_captured_into_the_store(golden: Path, tmp_path: Path) -> None:
    assert ensure_golden(tmp_path / "store") == NAME
    manifest = ImageStore(tmp_path / "store").open(NAME)
    assert manifest.disk_size == 2 << 30
    assert manifest.os_hint == "linux"
    assert ensure_golden(tmp_path / "store") == NAME  # already there: not captured again
