from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from Registry import Registry
from tests.fixtures.windows_tree import TreeInfo

from fleetcast.errors import UsageError
from fleetcast.identity.windows import drivers, system
from fleetcast.identity.windows.hive import Hive
from fleetcast.identity.windows.personalizer import Options

Unpack = Callable[..., Path]

STORAGE_INF = """; a storage controller driver
[Version]
Signature="$WINDOWS NT$"
Class=SCSIAdapter
ClassGuid={4D36E97B-E325-11CE-BFC1-08002BE10318}
Provider=%ACME%

[Manufacturer]
%ACME% = Acme, NTamd64

[Acme.NTamd64]
%Ctrl.Desc% = acmestor_Inst, PCI\\VEN_1AF4&DEV_1001, PCI\\VEN_1AF4&DEV_1042

[acmestor_Inst.NTamd64]
CopyFiles = acmestor.CopyFiles

[acmestor_Inst.NTamd64.Services]
AddService = acmestor, 0x00000002, acmestor_Service

[acmestor_Service]
ServiceType    = 1               ; SERVICE_KERNEL_DRIVER
StartType      = 0
ErrorControl   = 1
ServiceBinary  = %12%\\acmestor.sys
LoadOrderGroup = SCSI miniport

[Strings]
ACME = "Acme; Storage"
Ctrl.Desc = "Acme Storage Controller"
"""

NIC_INF = """[Version]
Signature="$WINDOWS NT$"
Class=Net
ClassGuid={4d36e972-e325-11ce-bfc1-08002be10318}
[Manufacturer]
Acme = AcmeNet, NTamd64
[AcmeNet.NTamd64]
"Acme NIC" = nic_Inst, PCI\\VEN_8086&DEV_100E
"""


def _packages(tmp_path: Path) -> Path:
    d = tmp_path / "drivers"
    (d / "acmestor").mkdir(parents=True)
    (d / "acmestor" / "acmestor.inf").write_bytes(STORAGE_INF.encode("utf-16"))
    (d / "acmestor" / "acmestor.sys").write_bytes(b"MZ-storage-driver")
    (d / "nic").mkdir()
    (d / "nic" / "acmenic.inf").write_text(NIC_INF)
    (d / "nic" / "acmenic.sys").write_bytes(b"MZ-nic-driver")
    return d


def test_parse_storage_inf(tmp_path: Path) -> None:
    d = _packages(tmp_path)
    inf = drivers.Inf.parse(d / "acmestor" / "acmestor.inf")
    assert inf.is_storage and inf.driver_class == "SCSIAdapter"
    assert inf.hardware_ids() == [
        ("acmestor_Inst", "PCI\\VEN_1AF4&DEV_1001"),
        ("acmestor_Inst", "PCI\\VEN_1AF4&DEV_1042"),
    ]
    (svc,) = inf.services()
    assert (svc.name, svc.binary, svc.service_type, svc.error_control, svc.group) == (
        "acmestor",
        "System32\\drivers\\acmestor.sys",
        1,
        1,
        "SCSI miniport",
    )
    assert inf.strings["acme"] == "Acme; Storage"  # a quoted ';' is not a comment
    nic = drivers.Inf.parse(d / "nic" / "acmenic.inf")
    assert not nic.is_storage


def test_not_an_inf(tmp_path: Path) -> None:
    bad = tmp_path / "x.inf"
    bad.write_text("[Strings]\nA=1\n")
    with pytest.raises(UsageError) as exc:
        drivers.Inf.parse(bad)
    assert str(exc.value) == f"{bad} is not a driver INF: it has no [Version] section"
    with pytest.raises(UsageError) as exc:
        drivers.find_infs(tmp_path / "none")
    assert str(exc.value) == f"driver folder {tmp_path / 'none'} does not exist or is not a folder"


def test_install_on_windows7_adds_critical_device_database(hive_file: Unpack, tmp_path: Path) -> None:
    d = _packages(tmp_path)
    h = Hive(hive_file("regipy/SYSTEM.xz", "SYSTEM"), write=True)
    sets = system.control_sets(h)
    inf = drivers.Inf.parse(d / "acmestor" / "acmestor.inf")
    drivers.install_storage(h, inf, sets, windows7=True)
    out = tmp_path / "SYSTEM.new"
    h.commit(out)
    reg = Registry.Registry(str(out))
    for cs in sets:
        svc = reg.open(f"{cs}\\Services\\acmestor")
        assert svc.value("Start").value() == 0 and svc.value("Type").value() == 1
        assert svc.value("ImagePath").value() == "System32\\drivers\\acmestor.sys"
        cdd = reg.open(f"{cs}\\Control\\CriticalDeviceDatabase\\pci#ven_1af4&dev_1042")
        assert cdd.value("Service").value() == "acmestor"


def test_personalize_with_drivers(tree: TreeInfo, tmp_path: Path) -> None:
    from fleetcast.identity.windows import personalize

    d = _packages(tmp_path)
    changes = personalize(tree.root, Options(name="DRV-1", drivers=d))
    root = tree.root
    assert (root / "Windows/System32/drivers/acmestor.sys").read_bytes() == b"MZ-storage-driver"
    assert (root / "Windows/fleetcast/drivers/nic/acmenic.inf").is_file()
    assert "driver acmenic.inf: staged, pnputil installs it at first boot" in changes
    script = (root / "Windows/Setup/Scripts/fleetcast-firstboot.cmd").read_text()
    assert "pnputil.exe /add-driver" in script
    reg = Registry.Registry(str(root / "Windows/System32/config/SYSTEM"))
    assert reg.open("ControlSet002\\Services\\acmestor").value("Start").value() == 0
    assert reg.open("Setup").value("SetupType").value() == 2
