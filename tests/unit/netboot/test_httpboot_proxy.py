"""The proxyDHCP answer for UEFI HTTP boot (netboot/httpproxy.py): only HTTPClient DISCOVERs, never an
address (its socket beside dnsmasq is tested in tests/integration/netboot/test_dnsmasq_netns.py)."""

from __future__ import annotations

from fleetcast.netboot.dhcp import OFFER, REQUEST, discover_packet, parse
from fleetcast.netboot.httpproxy import http_offer

MAC = "52:54:00:12:34:56"
URL = "http://10.0.0.1:8080/boot/tftp/ipxe.efi"


def test_an_http_boot_discover_gets_the_url_and_no_address() -> None:
    raw = http_offer(discover_packet(MAC, 0x1234, arch=16), "10.0.0.1", URL)
    assert raw is not None
    offer = parse(raw)
    assert (offer.op, offer.xid, offer.chaddr, offer.message_type) == (2, 0x1234, MAC, OFFER)
    assert offer.yiaddr == "0.0.0.0" and not offer.offers_address
    assert (offer.siaddr, offer.server_id) == ("10.0.0.1", "10.0.0.1")
    assert offer.vendor_class == "HTTPClient"  # UEFI HTTP boot takes only an answer that says so
    assert offer.boot_file == URL and offer.file == URL


def test_everything_else_is_left_to_dnsmasq_or_the_site() -> None:
    for packet in (
        discover_packet(MAC, 1, arch=7),  # UEFI PXE: dnsmasq's proxy
        discover_packet(MAC, 2, arch=0),  # BIOS
        discover_packet(MAC, 3, arch=16, pxe=False),  # no HTTPClient vendor class
        discover_packet(MAC, 4, arch=None, pxe=False),  # a plain DHCP client
        discover_packet(MAC, 5, arch=16, message=REQUEST),  # the request goes to the site's server
        b"\x01" * 20,  # not DHCP at all
    ):
        assert http_offer(packet, "10.0.0.1", URL) is None
    assert http_offer(discover_packet(MAC, 6, arch=16), "10.0.0.1", "http://x/" + "a" * 300) is None
