"""identity.linux on fake deployed roots, one per network stack."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fleetcast.errors import IdentityError
from fleetcast.identity import base
from fleetcast.identity.base import IdentitySettings, OsKind
from fleetcast.identity.linux import LinuxPersonalizer, network

MAC = "52:54:00:12:34:56"


def _root(tmp_path: Path, *, systemd: bool = True) -> Path:
    root = tmp_path / "root"
    (root / "etc" / "ssh").mkdir(parents=True)
    (root / "var" / "lib" / "dbus").mkdir(parents=True)
    (root / "etc" / "os-release").write_text('ID=debian\nVERSION_ID="12"\n')
    (root / "etc" / "hostname").write_text("golden\n")
    (root / "etc" / "hosts").write_text(
        "127.0.0.1\tlocalhost\n127.0.1.1\tgolden\n::1\tlocalhost ip6-localhost\n"
    )
    (root / "etc" / "machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    (root / "var" / "lib" / "dbus" / "machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    for kind in ("rsa", "ed25519"):
        (root / "etc" / "ssh" / f"ssh_host_{kind}_key").write_text("secret")
        (root / "etc" / "ssh" / f"ssh_host_{kind}_key.pub").write_text("public")
    (root / "etc" / "ssh" / "sshd_config").write_text("# config\n")
    if systemd:
        (root / "usr" / "lib" / "systemd").mkdir(parents=True)
        (root / "usr" / "lib" / "systemd" / "systemd").write_text("")
    return root


def _settings(**kw: object) -> IdentitySettings:
    defaults: dict[str, object] = {
        "name": "LAB-01",
        "ip": "10.0.0.101/24",
        "gateway": "10.0.0.1",
        "dns": ("10.0.0.2", "10.0.0.3"),
        "mac": MAC,
    }
    defaults.update(kw)
    return IdentitySettings(**defaults)  # type: ignore[arg-type]


def test_registered() -> None:
    assert isinstance(base.get(OsKind.LINUX), LinuxPersonalizer)


def test_hostname_machine_id_ssh(tmp_path: Path) -> None:
    root = _root(tmp_path)
    changes = LinuxPersonalizer().personalize(root, _settings(ip=None))
    assert (root / "etc/hostname").read_text() == "LAB-01\n"
    assert (root / "etc/hosts").read_text() == (
        "127.0.0.1\tlocalhost\n127.0.1.1\tLAB-01\n::1\tlocalhost ip6-localhost\n"
    )
    assert (root / "etc/machine-id").read_text() == ""
    assert os.readlink(root / "var/lib/dbus/machine-id") == "/etc/machine-id"
    assert sorted(p.name for p in (root / "etc/ssh").iterdir()) == ["sshd_config"]
    unit = root / "etc/systemd/system/fleetcast-ssh-keygen.service"
    assert "ExecStart=/usr/bin/ssh-keygen -A" in unit.read_text()
    wants = root / "etc/systemd/system/multi-user.target.wants/fleetcast-ssh-keygen.service"
    assert os.readlink(wants) == "/etc/systemd/system/fleetcast-ssh-keygen.service"
    assert changes[0] == "hostname: golden -> LAB-01"
    assert "removed /etc/ssh/ssh_host_rsa_key" in changes


def test_hosts_gets_line_when_missing(tmp_path: Path) -> None:
    root = _root(tmp_path)
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n")
    LinuxPersonalizer().personalize(root, _settings(ip=None))
    assert (root / "etc/hosts").read_text() == "127.0.0.1 localhost\n127.0.1.1\tLAB-01\n"


def test_networkd_default_with_systemd(tmp_path: Path) -> None:
    root = _root(tmp_path)
    LinuxPersonalizer().personalize(root, _settings())
    text = (root / "etc/systemd/network/10-fleetcast.network").read_text()
    assert f"MACAddress={MAC}" in text
    assert "Address=10.0.0.101/24" in text
    assert "Gateway=10.0.0.1" in text
    assert "DNS=10.0.0.2\nDNS=10.0.0.3" in text
    assert (root / "etc/systemd/system/multi-user.target.wants/systemd-networkd.service").is_symlink()


def test_netplan(tmp_path: Path) -> None:
    root = _root(tmp_path)
    (root / "etc/netplan").mkdir()
    (root / "etc/netplan/50-cloud-init.yaml").write_text(
        "network: {version: 2, ethernets: {eth0: {dhcp4: true}}}\n"
    )
    assert network.detect(root) is network.Stack.NETPLAN
    LinuxPersonalizer().personalize(root, _settings())
    assert not (root / "etc/netplan/50-cloud-init.yaml").exists()
    assert (root / "etc/netplan/50-cloud-init.yaml.fleetcast-orig").exists()
    text = (root / "etc/netplan/01-fleetcast.yaml").read_text()
    assert text == (
        "# Written by fleetcast at deployment.\n"
        "network:\n"
        "  version: 2\n"
        "  ethernets:\n"
        "    fleetcast0:\n"
        "      match:\n"
        f'        macaddress: "{MAC}"\n'
        "      dhcp4: false\n"
        "      addresses:\n"
        "        - 10.0.0.101/24\n"
        "      routes:\n"
        "        - to: default\n"
        "          via: 10.0.0.1\n"
        "      nameservers:\n"
        "        addresses: [10.0.0.2, 10.0.0.3]\n"
    )
    assert (root / "etc/netplan/01-fleetcast.yaml").stat().st_mode & 0o777 == 0o600


def test_netplan_symlinks_are_moved_not_followed(tmp_path: Path) -> None:
    root = _root(tmp_path)
    host = tmp_path / "host-netplan.yaml"
    host.write_text("network: {version: 2}\n")
    (root / "etc/netplan").mkdir()
    os.symlink(str(host), root / "etc/netplan/50-cloud-init.yaml")  # absolute: the host's file
    os.symlink("/run/netplan/gone.yaml", root / "etc/netplan/60-gone.yaml")  # dangling
    changes = LinuxPersonalizer().personalize(root, _settings())
    assert os.readlink(root / "etc/netplan/50-cloud-init.yaml.fleetcast-orig") == str(host)
    assert os.readlink(root / "etc/netplan/60-gone.yaml.fleetcast-orig") == "/run/netplan/gone.yaml"
    assert not os.path.lexists(root / "etc/netplan/50-cloud-init.yaml")
    assert host.read_text() == "network: {version: 2}\n"
    assert "netplan: disabled /etc/netplan/60-gone.yaml (kept as 60-gone.yaml.fleetcast-orig)" in changes
    assert (root / "etc/netplan/01-fleetcast.yaml").is_file()


def test_network_manager(tmp_path: Path) -> None:
    root = _root(tmp_path)
    (root / "usr/sbin").mkdir(parents=True)
    (root / "usr/sbin/NetworkManager").write_text("")
    assert network.detect(root) is network.Stack.NETWORK_MANAGER
    LinuxPersonalizer().personalize(root, _settings())
    path = root / "etc/NetworkManager/system-connections/fleetcast.nmconnection"
    text = path.read_text()
    assert "[ethernet]\nmac-address=52:54:00:12:34:56\n" in text
    assert "[ipv4]\nmethod=manual\naddress1=10.0.0.101/24,10.0.0.1\ndns=10.0.0.2;10.0.0.3;\n" in text
    assert path.stat().st_mode & 0o777 == 0o600


def test_ifupdown(tmp_path: Path) -> None:
    root = _root(tmp_path, systemd=False)
    (root / "etc/network").mkdir()
    (root / "etc/network/interfaces").write_text(
        "auto lo\niface lo inet loopback\n\nallow-hotplug ens3\niface ens3 inet dhcp\n    hostname x\n\n"
        "source /etc/network/interfaces.d/*\n"
    )
    assert network.detect(root) is network.Stack.IFUPDOWN
    changes = LinuxPersonalizer().personalize(root, _settings())
    assert (root / "etc/network/interfaces").read_text() == (
        "auto lo\niface lo inet loopback\n\nallow-hotplug ens3\nsource /etc/network/interfaces.d/*\n\n"
        "# Written by fleetcast at deployment.\n"
        "iface ens3 inet static\n    address 10.0.0.101/24\n    gateway 10.0.0.1\n"
        "    dns-nameservers 10.0.0.2 10.0.0.3\n"
    )
    assert "no systemd: run 'ssh-keygen -A' at first boot to create SSH host keys" in changes


def test_ifupdown_unindented_options_go_with_their_stanza(tmp_path: Path) -> None:
    root = _root(tmp_path, systemd=False)
    (root / "etc/network").mkdir()
    (root / "etc/network/interfaces").write_text(
        "auto lo\niface lo inet loopback\n\nauto ens3\niface ens3 inet static\naddress 192.168.1.5/24\n"
        "gateway 192.168.1.1\n# the next one\niface ens4 inet manual\n"
    )
    LinuxPersonalizer().personalize(root, _settings())
    text = (root / "etc/network/interfaces").read_text()
    assert "192.168.1" not in text  # not left behind as options of 'iface lo'
    assert text.startswith(
        "auto lo\niface lo inet loopback\n\nauto ens3\n# the next one\niface ens4 inet manual\n"
    )


def test_no_stack_with_ip_is_refused(tmp_path: Path) -> None:
    root = _root(tmp_path, systemd=False)
    with pytest.raises(IdentityError) as info:
        LinuxPersonalizer().personalize(root, _settings())
    assert str(info.value).startswith("the deployed system uses no network stack fleetcast knows")
    assert (root / "etc/hostname").read_text() == "golden\n"  # refused before any change


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"name": "-bad"}, "computer name '-bad' is not a valid host name"),
        ({"name": "under_score"}, "computer name 'under_score' is not a valid host name"),
        ({"ip": "10.0.0.300/24"}, "IP address '10.0.0.300/24' is not a valid CIDR address: "),
        ({"ip": "10.0.0.1"}, "IP address '10.0.0.1' has no prefix length"),
        ({"gateway": "gw"}, "gateway 'gw' is not an IP address"),
        ({"dns": ("1.1.1.1", "x")}, "DNS server 'x' is not an IP address"),
        ({"mac": "nope"}, "MAC address 'nope' is not of the form aa:bb:cc:dd:ee:ff"),
    ],
)
def test_bad_settings_change_nothing(tmp_path: Path, kw: dict[str, object], message: str) -> None:
    root = _root(tmp_path)
    with pytest.raises(IdentityError) as info:
        LinuxPersonalizer().personalize(root, _settings(**kw))
    assert str(info.value).startswith(message)
    assert (root / "etc/hostname").read_text() == "golden\n"
    assert (root / "etc/machine-id").read_text() != ""


def test_not_linux(tmp_path: Path) -> None:
    with pytest.raises(IdentityError) as info:
        LinuxPersonalizer().personalize(tmp_path, _settings())
    assert (
        str(info.value)
        == f"{tmp_path} does not hold a Linux system: no /etc/os-release or /usr/lib/os-release"
    )


def test_symlink_escaping_root_is_refused(tmp_path: Path) -> None:
    root = _root(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "etc/systemd").mkdir(parents=True)
    os.symlink(str(outside), root / "etc/systemd/network")
    with pytest.raises(IdentityError) as info:
        LinuxPersonalizer().personalize(root, _settings())
    assert str(info.value).startswith(
        "/etc/systemd/network/10-fleetcast.network in the deployed system resolves outside"
    )
    assert list(outside.iterdir()) == []


def test_absolute_symlink_file_is_replaced_not_followed(tmp_path: Path) -> None:
    root = _root(tmp_path)
    victim = tmp_path / "victim"
    victim.write_text("host file\n")
    (root / "etc/hostname").unlink()
    os.symlink(str(victim), root / "etc/hostname")
    LinuxPersonalizer().personalize(root, _settings(ip=None))
    assert victim.read_text() == "host file\n"
    assert (root / "etc/hostname").read_text() == "LAB-01\n"


def test_failed_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    root = _root(tmp_path)
    (root / "etc/hostname").unlink()
    (root / "etc/hostname").mkdir()  # os.replace(file, directory) fails
    with pytest.raises(IdentityError) as info:
        LinuxPersonalizer().personalize(root, _settings(ip=None))
    assert str(info.value) == "cannot write /etc/hostname in the deployed system: Is a directory"
    assert sorted(p.name for p in (root / "etc").iterdir() if "fleetcast" in p.name) == []
