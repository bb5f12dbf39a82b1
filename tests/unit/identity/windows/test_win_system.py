from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from regipy import registry as _regipy

from fleetcast.identity.windows import system
from fleetcast.identity.windows.hive import Hive

RegistryHive: Any = _regipy.RegistryHive  # regipy has no type hints

Unpack = Callable[..., Path]


def test_control_sets_and_names_win7(hive_file: Unpack) -> None:
    h = Hive(hive_file("regipy/SYSTEM.xz"))
    assert system.select(h) == {"Current": 1, "Default": 1, "LastKnownGood": 2, "Failed": 0}
    assert system.control_sets(h) == ["ControlSet001", "ControlSet002"]
    names = {n.control_set: n.computer_name for n in system.names(h)}
    assert names == {"ControlSet001": "WKS-WIN732BITA", "ControlSet002": "WIN-V5T3CSP8U4H"}


def test_set_name_keeps_each_hostname_spelling(hive_file: Unpack, tmp_path: Path) -> None:
    path = hive_file("regipy/SYSTEM_WIN_10_1709.xz", "SYSTEM")
    h = Hive(path, write=True)
    spellings = sorted(system.names(h)[0].hostnames)
    assert spellings == ["HostName", "NV HostName"]
    changes = system.set_name(h, "Lab-Pc-9")
    assert (
        "SYSTEM ControlSet001\\Services\\Tcpip\\Parameters\\NV HostName: DESKTOP-2KGM189 -> Lab-Pc-9"
        in changes
    )
    out = tmp_path / "SYSTEM.new"
    h.commit(out)
    reg = RegistryHive(str(out))
    for cs in system.control_sets(Hive(out)):
        tcp = {v.name: v.value for v in reg.get_key(f"\\{cs}\\Services\\Tcpip\\Parameters").iter_values()}
        assert tcp["HostName"] == "Lab-Pc-9" and tcp["NV HostName"] == "Lab-Pc-9"
        assert "Hostname" not in tcp  # no second spelling added
        cn = {
            v.name: v.value for v in reg.get_key(f"\\{cs}\\Control\\ComputerName\\ComputerName").iter_values()
        }
        assert cn["ComputerName"] == "LAB-PC-9"


def test_setup_state_of_an_upgraded_install(hive_file: Unpack) -> None:
    st = system.setup_state(Hive(hive_file("regipy/SYSTEM_WIN_10_1709.xz")))
    assert st.upgraded
    plain = system.setup_state(Hive(hive_file("regipy/SYSTEM.xz")))
    assert not plain.upgraded and plain.generalization_state == 7
