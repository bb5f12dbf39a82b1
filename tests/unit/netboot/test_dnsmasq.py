"""dnsmasq configuration, ranges and the boot-method registry (pure functions; dnsmasq itself runs in
tests/integration/netboot)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from fleetcast.errors import UsageError
from fleetcast.netboot import methods
from fleetcast.netboot.dnsmasq import (
    DhcpMode,
    InterfaceInfo,
    NetbootConfig,
    check_range,
    grub_stub,
    parse_range,
    render,
    sync_mac_configs,
)

IFACE = InterfaceInfo("br0", "52:54:00:aa:bb:cc", ipaddress.IPv4Interface("10.0.0.1/24"), ipv6_global=True)
URL = "http://10.0.0.1:8080"


def cfg(mode: DhcpMode, **kw: object) -> NetbootConfig:
    return NetbootConfig("br0", mode, URL, Path("/srv/nb"), **kw)  # type: ignore[arg-type]


def test_full_mode_config() -> None:
    text = render(cfg(DhcpMode.FULL, dhcp_range=parse_range("10.0.0.100-10.0.0.200")), IFACE)
    lines = text.splitlines()
    for expected in (
        "port=0",
        "interface=br0",
        "bind-interfaces",
        "dhcp-range=10.0.0.100,10.0.0.200,255.255.255.0,1h",
        "tftp-root=/srv/nb/tftp",
        "dhcp-boot=tag:ipxe,http://10.0.0.1:8080/boot/ipxe?mac=${net0/mac}",
        "dhcp-boot=tag:bios,tag:!ipxe,undionly.kpxe,,10.0.0.1",
        "dhcp-boot=tag:efi64,tag:!ipxe,tag:!sb,snponly.efi,,10.0.0.1",
        "dhcp-boot=tag:efi64,tag:!ipxe,tag:sb,bootx64.efi,,10.0.0.1",
        "dhcp-boot=tag:efihttp,http://10.0.0.1:8080/boot/tftp/ipxe.efi",
        "dhcp-match=set:efi64,option:client-arch,7",
        "dhcp-match=set:efi64,option:client-arch,9",
        "dhcp-match=set:efihttp,option:client-arch,16",
        "enable-ra",
        "dhcp-range=::,constructor:br0,ra-only",
    ):
        assert expected in lines, expected
    assert not any(line.startswith("pxe-service") for line in lines)
    assert not any(",proxy" in line for line in lines)


def test_proxy_mode_never_leases() -> None:
    lines = render(cfg(DhcpMode.PROXY), IFACE).splitlines()
    ranges = [line for line in lines if line.startswith("dhcp-range=") and "ra-only" not in line]
    assert ranges == ["dhcp-range=10.0.0.0,proxy,255.255.255.0"]
    assert 'pxe-service=tag:!ipxe,x86PC,"fleetcast",undionly.kpxe' in lines
    assert 'pxe-service=tag:!ipxe,tag:sb,X86-64_EFI,"fleetcast",bootx64.efi' in lines
    # iPXE must not match a pxe-service (it would be sent to port 4011 and get iPXE again)
    assert not any(line.startswith("pxe-service=tag:ipxe") for line in lines)


def test_off_mode_is_tftp_only() -> None:
    lines = render(cfg(DhcpMode.OFF), IFACE).splitlines()
    assert "enable-tftp" in lines
    assert not any(line.startswith("dhcp-range=") and "ra-only" not in line for line in lines)


def test_no_ipv6_no_router_advertisements() -> None:
    iface = InterfaceInfo("br0", "", ipaddress.IPv4Interface("10.0.0.1/24"), ipv6_global=False)
    assert "enable-ra" not in render(cfg(DhcpMode.PROXY), iface).splitlines()


def test_secure_boot_macs_and_shim_for_all() -> None:
    lines = render(cfg(DhcpMode.PROXY, secureboot_macs=("52:54:00:00:00:03",)), IFACE).splitlines()
    assert "dhcp-mac=set:sb,52:54:00:00:00:03" in lines
    assert "tag-if=set:sb,tag:efi64" not in lines
    lines = render(cfg(DhcpMode.PROXY, uefi_boot="shim"), IFACE).splitlines()
    assert "tag-if=set:sb,tag:efi64" in lines


def test_full_mode_needs_a_range() -> None:
    with pytest.raises(UsageError, match=r"^full DHCP needs --range START-END$"):
        render(cfg(DhcpMode.FULL), IFACE)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10.0.0.100", "DHCP range '10.0.0.100' is not START-END"),
        ("10.0.0.100-", "DHCP range '10.0.0.100-' is not START-END"),
        (
            "10.0.0.300-10.0.0.310",
            "DHCP range '10.0.0.300-10.0.0.310': Octet 300 (> 255) not permitted in '10.0.0.300'",
        ),
        (
            "10.0.0.200-10.0.0.100",
            "DHCP range '10.0.0.200-10.0.0.100': the end 10.0.0.100 comes before the start 10.0.0.200",
        ),
        ("fd00::1-fd00::9", "DHCP range 'fd00::1-fd00::9': Expected 4 octets in 'fd00::1'"),
    ],
)
def test_bad_ranges(text: str, message: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_range(text)
    assert err.value.message == message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "10.0.1.10-10.0.1.20",
            "DHCP range 10.0.1.10-10.0.1.20: 10.0.1.10 is not in br0's subnet 10.0.0.0/24",
        ),
        (
            "10.0.0.0-10.0.0.20",
            "DHCP range 10.0.0.0-10.0.0.20 includes the network or broadcast address of 10.0.0.0/24",
        ),
        (
            "10.0.0.200-10.0.0.255",
            "DHCP range 10.0.0.200-10.0.0.255 includes the network or broadcast address of 10.0.0.0/24",
        ),
        ("10.0.0.1-10.0.0.20", "DHCP range 10.0.0.1-10.0.0.20 includes br0's own address 10.0.0.1"),
    ],
)
def test_range_against_interface(text: str, message: str) -> None:
    with pytest.raises(UsageError) as err:
        check_range(parse_range(text), IFACE)
    assert err.value.message == message


def test_range_ok() -> None:
    rng = parse_range(" 10.0.0.100 - 10.0.0.199 ")
    check_range(rng, IFACE)
    assert rng.size == 100


@pytest.mark.parametrize(
    ("arch", "user_class", "secure", "uefi_boot", "expected"),
    [
        (0, None, False, "ipxe", methods.Method.BIOS),
        (7, None, False, "ipxe", methods.Method.UEFI),
        (9, None, False, "ipxe", methods.Method.UEFI),
        (9, None, True, "ipxe", methods.Method.SECUREBOOT),
        (7, None, False, "shim", methods.Method.SECUREBOOT),
        (16, None, False, "ipxe", methods.Method.HTTPBOOT),
        (0, "iPXE", False, "ipxe", methods.Method.IPXE),
        (7, "iPXE", True, "shim", methods.Method.IPXE),
    ],
)
def test_choose(
    arch: int, user_class: str | None, secure: bool, uefi_boot: str, expected: methods.Method
) -> None:
    assert methods.choose(arch, user_class, secure_boot=secure, uefi_boot=uefi_boot).method is expected


def test_choose_unknown_arch() -> None:
    with pytest.raises(UsageError, match=r"^client architecture 11 \(DHCP option 93\) has no boot method$"):
        methods.choose(11)


def test_registry_has_every_method() -> None:
    assert set(methods.BootMethod.registry) == set(methods.Method)
    assert methods.get("secureboot").boot_file == "bootx64.efi"
    with pytest.raises(UsageError, match="boot method 'pxe' is not known"):
        methods.get("pxe")


def test_tftp_files_from_debian_packages() -> None:
    files = methods.tftp_files()
    assert files["undionly.kpxe"] == Path("/usr/lib/ipxe/undionly.kpxe")
    assert files["bootx64.efi"] == Path("/usr/lib/shim/shimx64.efi.signed")
    assert files["grubx64.efi"] == Path("/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed")


def test_grub_stub() -> None:
    text = grub_stub(URL, "console=ttyS0 fleetcast.server=http://10.0.0.1:8080")
    lines = text.splitlines()
    assert "set fc=(tftp,10.0.0.1)" in lines
    assert "source $fc/grub/mac/$net_default_mac.cfg" in lines
    assert "linux $fc/bootenv/vmlinuz console=ttyS0 fleetcast.server=http://10.0.0.1:8080" in lines
    assert "initrd $fc/bootenv/initrd.img" in lines
    assert "(http," not in text  # the signed GRUB has no http module under Secure Boot


def test_sync_mac_configs(tmp_path: Path) -> None:
    assert sync_mac_configs(tmp_path, {"52:54:00:00:00:01": "exit\n", "52:54:00:00:00:02": "boot\n"}) == 2
    folder = tmp_path / "grub" / "mac"
    assert (folder / "52:54:00:00:00:01.cfg").read_text() == "exit\n"
    assert (folder / "52:54:00:00:00:01.cfg").stat().st_mode & 0o777 == 0o644
    assert sync_mac_configs(tmp_path, {"52:54:00:00:00:01": "exit\n", "52:54:00:00:00:02": "boot\n"}) == 0
    assert sync_mac_configs(tmp_path, {"52:54:00:00:00:01": "boot\n"}) == 2
    assert sorted(p.name for p in folder.iterdir()) == ["52:54:00:00:00:01.cfg"]
