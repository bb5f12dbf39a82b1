"""DHCP packets: build, parse, and the malformed corpus (exact messages)."""

from __future__ import annotations

import struct

import pytest

from fleetcast.netboot import dhcp


def test_discover_round_trip() -> None:
    raw = dhcp.discover_packet("52:54:00:12:34:56", 0x1234, arch=7, user_class=b"iPXE")
    p = dhcp.parse(raw)
    assert (p.op, p.xid, p.chaddr, p.yiaddr) == (1, 0x1234, "52:54:00:12:34:56", "0.0.0.0")
    assert p.message_type == dhcp.DISCOVER
    assert p.options[dhcp.OPT_ARCH] == b"\x00\x07"
    assert p.options[dhcp.OPT_USER_CLASS] == b"iPXE"
    assert p.vendor_class == "PXEClient:Arch:00007:UNDI:003016"


def test_http_boot_vendor_class() -> None:
    p = dhcp.parse(dhcp.discover_packet("52:54:00:12:34:56", 1, arch=16))
    assert p.vendor_class.startswith("HTTPClient:Arch:00016")


def _offer(options: bytes, yiaddr: bytes = bytes([10, 0, 0, 5]), file: bytes = b"") -> bytes:
    header = dhcp.HEADER.pack(
        2, 1, 6, 0, 7, 0, 0, bytes(4), yiaddr, bytes([10, 0, 0, 1]), bytes(4),
        bytes(16), bytes(64), file.ljust(128, b"\x00"),
    )  # fmt: skip
    return header + dhcp.MAGIC + options


def test_offer_fields() -> None:
    p = dhcp.parse(_offer(bytes([53, 1, 2, 54, 4, 10, 0, 0, 1, 67, 5]) + b"a.efi" + b"\xff", file=b"x"))
    assert p.message_type == dhcp.OFFER
    assert p.server_id == "10.0.0.1"
    assert p.boot_file == "a.efi"
    assert p.offers_address
    proxy = dhcp.parse(_offer(bytes([53, 1, 2, 255]), yiaddr=bytes(4), file=b"undionly.kpxe"))
    assert not proxy.offers_address
    assert proxy.boot_file == "undionly.kpxe"


def test_split_option_is_concatenated() -> None:
    p = dhcp.parse(_offer(bytes([67, 2]) + b"ab" + bytes([67, 2]) + b"cd" + b"\xff"))
    assert p.boot_file == "abcd"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "0 bytes, a DHCP packet has at least 240"),
        (b"\x02" * 239, "239 bytes, a DHCP packet has at least 240"),
        (_offer(b"")[:236] + b"\x00\x00\x00\x00", "no DHCP magic cookie"),
        (_offer(bytes([53])), "option 53 at byte 240 has no length"),
        (_offer(bytes([67, 10]) + b"abc"), "option 67 at byte 240 runs past the end (10 bytes)"),
        (
            dhcp.HEADER.pack(2, 6, 6, 0, 0, 0, 0, *(bytes(4),) * 4, bytes(16), bytes(64), bytes(128))
            + dhcp.MAGIC,
            "hardware type 6 length 6, expected Ethernet (1, 6)",
        ),
    ],
)
def test_malformed(data: bytes, message: str) -> None:
    with pytest.raises(dhcp.MalformedPacket) as err:
        dhcp.parse(data)
    assert str(err.value) == message


@pytest.mark.parametrize("mac", ["52:54:00:12:34", "52-54-00-12-34-56", "zz:54:00:12:34:56", "525400123456"])
def test_bad_mac(mac: str) -> None:
    with pytest.raises(Exception, match="is not six hex pairs"):
        dhcp.mac_bytes(mac)


def test_header_size() -> None:
    assert dhcp.HEADER.size == 236
    assert struct.calcsize("!H") == 2
