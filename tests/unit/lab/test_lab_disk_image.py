"""A lab machine's disk from an existing image: a qcow2 overlay, the image itself never written."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from tests.conftest import require

from fleetcast.lab.netns import LabError
from fleetcast.lab.qemu import Firmware, Machine, MachineSpec


def _machine(tmp_path: Path, disk_format: str = "qcow2") -> Machine:
    spec = MachineSpec(
        name="client1",
        firmware=Firmware.BIOS,
        mac="52:54:00:fc:00:01",
        workdir=tmp_path / "m",
        disk_format=disk_format,
    )
    return Machine(spec)


def test_disk_from_an_image_is_an_overlay_of_it(tmp_path: Path) -> None:
    require("qemu-img")
    image = tmp_path / "golden.img"
    image.write_bytes(b"\xeb\x63" + bytes(1 << 20))
    before = image.read_bytes()
    disk = _machine(tmp_path).create_disk(4 << 20, backing=image)
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(disk)], capture_output=True,
                                     text=True, check=True).stdout)  # fmt: skip
    assert info["format"] == "qcow2"
    assert info["virtual-size"] == 4 << 20
    assert info["backing-filename"] == str(image.resolve())
    assert info["backing-filename-format"] == "raw"
    assert image.read_bytes() == before


def test_disk_from_an_image_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    require("qemu-img")
    image = tmp_path / "golden.img"
    image.write_bytes(bytes(2 << 20))
    with pytest.raises(LabError, match=r"disk image .*missing\.img does not exist"):
        _machine(tmp_path).create_disk(4 << 20, backing=tmp_path / "missing.img")
    with pytest.raises(LabError, match=r"disk size 1048576 is smaller than the image .* \(2097152 bytes\)"):
        _machine(tmp_path).create_disk(1 << 20, backing=image)
    with pytest.raises(LabError, match="a disk from an image needs qcow2, not raw"):
        _machine(tmp_path, "raw").create_disk(4 << 20, backing=image)
