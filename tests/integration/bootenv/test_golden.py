"""The lab's golden Debian disk: boots under BIOS, UEFI and UEFI Secure Boot and reports itself."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from bootenvkit import Serial

from fleetcast.lab.golden import NAME, ensure_golden, ensure_golden_disk
from fleetcast.store.images import ImageStore

pytestmark = pytest.mark.integration

OVMF = Path("/usr/share/OVMF")
REPORT = "fleetcast-lab-report {"


@pytest.fixture(scope="module")
def golden() -> Path:
    return ensure_golden_disk()


def _report(text: str) -> dict[str, object]:
    line = text[text.index(REPORT) :].splitlines()[0]
    report = json.loads(line[len("fleetcast-lab-report ") :].strip())
    assert isinstance(report, dict)
    return report


def _firmware(kind: str, tmp_path: Path) -> list[str]:
    if kind == "bios":
        return ["-machine", "q35"]
    suffix = ".ms" if kind == "secureboot" else ""
    vars_copy = tmp_path / f"vars-{kind}.fd"
    shutil.copyfile(OVMF / f"OVMF_VARS_4M{suffix}.fd", vars_copy)
    return [
        "-machine", "q35,smm=on" if suffix else "q35",
        "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF / f'OVMF_CODE_4M{suffix}.fd'}",
        "-drive", f"if=pflash,format=raw,file={vars_copy}",
    ]  # fmt: skip


@pytest.mark.parametrize("kind", ["bios", "uefi", "secureboot"])
def test_golden_disk_boots_and_reports(golden: Path, kind: str, qemu: type[Serial], tmp_path: Path) -> None:
    vm = qemu(
        [
            *_firmware(kind, tmp_path), "-m", "1024",
            "-drive", f"file={golden},format=raw,if=virtio,snapshot=on",
            "-netdev", "user,id=n0,restrict=on", "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:fc:90:01",
        ]
    )  # fmt: skip
    report = _report(vm.wait_for(REPORT, deadline=300))
    assert report["hostname"] == NAME
    assert report["ip"] == "10.0.2.15"
    assert report["mac"] == "52:54:00:fc:90:01"
    assert isinstance(report["machine_id"], str) and len(report["machine_id"]) == 32
    assert report["secure_boot"] is (kind == "secureboot")


def test_golden_is_captured_into_the_store(golden: Path, tmp_path: Path) -> None:
    assert ensure_golden(tmp_path / "store") == NAME
    manifest = ImageStore(tmp_path / "store").open(NAME)
    assert manifest.disk_size == 2 << 30
    assert manifest.os_hint == "linux"
    assert ensure_golden(tmp_path / "store") == NAME  # already there: not captured again
