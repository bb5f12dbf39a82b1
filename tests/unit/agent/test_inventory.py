"""agent.inventory from fake /sys and /proc trees."""

from __future__ import annotations

from pathlib import Path

from fleetcast.agent.inventory import Roots, collect, cpu_info, dmi_info, mac_addresses, ram_bytes


def _iface(
    root: Path, name: str, mac: str, *, kind: str = "1", device: bool = False, extra: str = ""
) -> None:
    d = root / name
    d.mkdir(parents=True)
    (d / "type").write_text(kind + "\n")
    (d / "address").write_text(mac + "\n")
    if device:
        (d / "device").mkdir()
    if extra:
        (d / extra).mkdir()


def test_macs_physical_first_and_filtered(tmp_path: Path) -> None:
    net = tmp_path / "net"
    _iface(net, "lo", "00:00:00:00:00:00", kind="772")
    _iface(net, "veth0", "0A:00:00:00:00:01")
    _iface(net, "enp3s0", "52:54:00:AA:BB:02", device=True)
    _iface(net, "eno1", "52:54:00:aa:bb:01", device=True)
    _iface(net, "br0", "52:54:00:aa:bb:09", extra="bridge")
    _iface(net, "dummy0", "00:00:00:00:00:00")
    assert mac_addresses(net) == ["52:54:00:aa:bb:01", "52:54:00:aa:bb:02", "0a:00:00:00:00:01"]


def test_missing_sources_are_empty(tmp_path: Path) -> None:
    assert mac_addresses(tmp_path / "nonet") == []
    assert dmi_info(tmp_path / "nodmi") == {"vendor": "", "model": "", "serial": ""}
    assert ram_bytes(tmp_path) == 0
    model, cores = cpu_info(tmp_path)
    assert model == ""
    assert cores >= 1


def test_collect_to_dict(tmp_path: Path) -> None:
    net, dmi, proc = tmp_path / "net", tmp_path / "dmi", tmp_path / "proc"
    _iface(net, "eth0", "52:54:00:12:34:56", device=True)
    dmi.mkdir()
    (dmi / "sys_vendor").write_text("QEMU\n")
    (dmi / "product_name").write_text("Standard PC\n")
    proc.mkdir()
    (proc / "cpuinfo").write_text("processor\t: 0\nmodel name\t: Fancy CPU @ 3GHz\n")
    (proc / "meminfo").write_text("MemTotal:       2048 kB\nMemFree: 1 kB\n")
    img = tmp_path / "disk.img"
    img.write_bytes(b"\0" * 1024)
    inv = collect([img], roots=Roots(net=net, dmi=dmi, proc=proc))
    d = inv.to_dict()
    assert inv.primary_mac == "52:54:00:12:34:56"
    assert d["macs"] == ["52:54:00:12:34:56"]
    assert d["cpu"]["model"] == "Fancy CPU @ 3GHz"
    assert d["ram_bytes"] == 2048 * 1024
    assert d["dmi"] == {"vendor": "QEMU", "model": "Standard PC", "serial": ""}
    assert [x["path"] for x in d["disks"]] == [str(img)]
    assert d["disks"][0]["size"] == 1024
    assert set(d) == {"macs", "hostname", "cpu", "ram_bytes", "dmi", "disks", "agent_version", "windows"}
    assert d["windows"] == []  # not scanned unless asked (the agent asks)
