from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from fleetcast.errors import UsageError
from fleetcast.identity.windows.unattend import StaticIp, UnattendOptions, firstboot_script, parse_mac, render

NS = {"u": "urn:schemas-microsoft-com:unattend"}


def _component(root: ET.Element, name: str) -> ET.Element:
    for c in root.iter("{urn:schemas-microsoft-com:unattend}component"):
        if c.get("name") == name:
            return c
    raise AssertionError(f"no component {name}")


def test_render_name_ip_dns_in_documented_order() -> None:
    ip = StaticIp.parse("10.1.2.3/24", "10.1.2.1", ["10.1.2.53", "10.1.2.54"], "52-54-00-AA-BB-CC")
    xml = render(UnattendOptions(name="PC-3", ip=ip, timezone="UTC", locale="en-US", skip_oobe=True))
    root = ET.fromstring(xml)
    passes = [s.get("pass") for s in root.findall("u:settings", NS)]
    assert passes == ["specialize", "oobeSystem"]
    shell = _component(root, "Microsoft-Windows-Shell-Setup")
    assert shell.findtext("u:ComputerName", namespaces=NS) == "PC-3"
    iface = _component(root, "Microsoft-Windows-TCPIP").find("u:Interfaces/u:Interface", NS)
    assert iface is not None
    assert [c.tag.split("}")[1] for c in iface] == [
        "Ipv4Settings",
        "Identifier",
        "UnicastIpAddresses",
        "Routes",
    ]
    assert iface.findtext("u:Identifier", namespaces=NS) == "52-54-00-AA-BB-CC"
    assert iface.findtext("u:UnicastIpAddresses/u:IpAddress", namespaces=NS) == "10.1.2.3/24"
    route = iface.find("u:Routes/u:Route", NS)
    assert route is not None
    assert [c.tag.split("}")[1] for c in route] == ["Identifier", "NextHopAddress", "Prefix"]
    dns = _component(root, "Microsoft-Windows-DNS-Client")
    servers = dns.findall("u:Interfaces/u:Interface/u:DNSServerSearchOrder/u:IpAddress", NS)
    assert [s.text for s in servers] == ["10.1.2.53", "10.1.2.54"]
    assert [s.get("{http://schemas.microsoft.com/WMIConfig/2002/State}keyValue") for s in servers] == [
        "1",
        "2",
    ]


def test_domain_join_and_password_are_escaped() -> None:
    xml = render(
        UnattendOptions(
            join_domain="corp.example", join_user="admin", join_password="p<&>w", admin_password="a&b"
        )
    )
    root = ET.fromstring(xml)
    join = _component(root, "Microsoft-Windows-UnattendedJoin")
    assert join.findtext("u:Identification/u:Credentials/u:Password", namespaces=NS) == "p<&>w"
    assert join.findtext("u:Identification/u:JoinDomain", namespaces=NS) == "corp.example"
    assert "a&amp;b" in xml
    with pytest.raises(UsageError) as exc:
        render(UnattendOptions(join_domain="corp.example"))
    assert str(exc.value) == "--join-domain needs --join-user and --join-password"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("10.0.0.5", None, [], "52:54:00:00:00:01"), "IP address '10.0.0.5' has no prefix length: expected CIDR, e.g. 10.0.0.101/24"),  # noqa: E501
        (("10.0.0.300/24", None, [], "52:54:00:00:00:01"), "malformed IP address '10.0.0.300/24': expected IPv4 CIDR, e.g. 10.0.0.101/24"),  # noqa: E501
        (("10.0.0.5/24", "10.9.9.1", [], "52:54:00:00:00:01"), "gateway 10.9.9.1 is not in the network 10.0.0.0/24 of 10.0.0.5/24"),  # noqa: E501
        (("10.0.0.5/24", None, ["dns.example"], "52:54:00:00:00:01"), "malformed DNS server 'dns.example': expected an IPv4 address"),  # noqa: E501
        (("10.0.0.5/24", None, [], None), "a static IP needs --mac: Windows applies it to the adapter with that MAC address"),  # noqa: E501
        (("10.0.0.5/24", None, [], "52:54:00:00:01"), "malformed MAC address '52:54:00:00:01': expected six hex pairs, e.g. 52:54:00:12:34:56"),  # noqa: E501
    ],
)  # fmt: skip
def test_static_ip_errors(args: tuple[str, str | None, list[str], str | None], message: str) -> None:
    with pytest.raises(UsageError) as exc:
        StaticIp.parse(*args)
    assert str(exc.value) == message


def test_mac_forms() -> None:
    assert parse_mac("52:54:00:ab:cd:ef") == parse_mac("52-54-00-AB-CD-EF") == parse_mac("525400abcdef")
    assert parse_mac("525400abcdef") == "52-54-00-AB-CD-EF"


def test_firstboot_script_resets_its_hook() -> None:
    ip = StaticIp.parse("10.0.0.5/16", "10.0.0.1", ["10.0.0.2"], "52:54:00:00:00:05")
    script = firstboot_script(ip, drivers=True, reset_setup=True)
    lines = script.split("\r\n")
    assert lines[0] == "@echo off"
    assert any(
        "pnputil.exe /add-driver %SystemRoot%\\fleetcast\\drivers\\*.inf /subdirs /install" in x
        for x in lines
    )
    assert any("static 10.0.0.5 255.255.0.0 10.0.0.1" in x for x in lines)
    assert 'reg.exe add "HKLM\\SYSTEM\\Setup" /v SetupType /t REG_DWORD /d 0 /f >> %LOG% 2>&1' in lines
    script.encode("ascii")
