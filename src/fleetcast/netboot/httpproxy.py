"""proxyDHCP for UEFI HTTP boot, beside dnsmasq's proxy mode.

dnsmasq's proxyDHCP (``dhcp-range=NET,proxy``) answers only clients whose vendor class is
``PXEClient``; UEFI HTTP boot says ``HTTPClient`` (option 60, arch 16). This small responder answers
those: an OFFER leasing nothing (yiaddr 0.0.0.0: the site's DHCP server gives the address) whose option
60 is ``HTTPClient`` and whose boot file (option 67 and the ``file`` field) is the URL of ``ipxe.efi``.
The firmware then downloads iPXE by HTTP, which continues as on every other chain.

It listens on UDP port 67 of the named interface only (SO_BINDTODEVICE), sharing the port with dnsmasq
(SO_REUSEADDR/SO_REUSEPORT: every socket on the port gets a copy of a broadcast), and ignores every
other packet, so it never answers as a DHCP server.
"""

from __future__ import annotations

import logging
import select
import socket
import threading

from fleetcast.netboot.dhcp import (
    CLIENT_PORT,
    DISCOVER,
    HEADER,
    MAGIC,
    OFFER,
    OPT_ARCH,
    OPT_BOOTFILE,
    OPT_END,
    OPT_MESSAGE_TYPE,
    OPT_SERVER_ID,
    OPT_VENDOR_CLASS,
    SERVER_PORT,
    MalformedPacket,
    mac_bytes,
    parse,
)

logger = logging.getLogger(__name__)

HTTP_ARCHES = (16,)  # option 93: x64 UEFI HTTP boot


def http_offer(request: bytes, server_ip: str, url: str) -> bytes | None:
    """The proxy OFFER for ``request`` when it is an HTTP-boot DHCPDISCOVER, else None."""
    try:
        p = parse(request)
    except MalformedPacket:
        return None
    arch = p.options.get(OPT_ARCH, b"")
    if p.op != 1 or p.message_type != DISCOVER or not p.vendor_class.startswith("HTTPClient"):
        return None
    if len(arch) != 2 or int.from_bytes(arch, "big") not in HTTP_ARCHES:
        return None
    raw_url = url.encode()
    if len(raw_url) > 255:
        return None
    server = socket.inet_aton(server_ip)
    header = HEADER.pack(
        2, 1, 6, 0, p.xid, 0, 0x8000, bytes(4), bytes(4), server, bytes(4),
        mac_bytes(p.chaddr) + bytes(10), bytes(64), raw_url[:127].ljust(128, b"\x00"),
    )  # fmt: skip
    opts = bytearray([OPT_MESSAGE_TYPE, 1, OFFER, OPT_SERVER_ID, 4]) + server
    opts += bytes([OPT_VENDOR_CLASS, 10]) + b"HTTPClient"
    opts += bytes([OPT_BOOTFILE, len(raw_url)]) + raw_url
    opts += bytes([OPT_END])
    return header + MAGIC + bytes(opts)


class HttpBootProxy:
    """A thread answering HTTP-boot DISCOVERs on ``interface`` (see the module docstring)."""

    def __init__(self, interface: str, server_ip: str, url: str) -> None:
        self.interface, self.server_ip, self.url = interface, server_ip, url
        self._sock: socket.socket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.answered = 0

    def start(self) -> bool:
        """Bind and start; False (a warning logged) when port 67 cannot be shared here."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.interface.encode())
            sock.bind(("0.0.0.0", SERVER_PORT))
        except OSError as exc:
            sock.close()
            logger.warning(
                "network boot: UEFI HTTP boot in proxy mode is off: cannot listen on %s port %d (%s)",
                self.interface, SERVER_PORT, exc.strerror,
            )  # fmt: skip
            return False
        self._sock = sock
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name="httpboot-proxy", daemon=True)
        self._thread.start()
        logger.info("network boot: proxyDHCP for UEFI HTTP boot on %s -> %s", self.interface, self.url)
        return True

    def _serve(self) -> None:
        sock = self._sock
        assert sock is not None
        while not self._stop.is_set():
            ready, _, _ = select.select([sock], [], [], 0.5)
            if not ready:
                continue
            try:
                data, _addr = sock.recvfrom(4096)
            except OSError:
                break
            answer = http_offer(data, self.server_ip, self.url)
            if answer is None:
                continue
            try:
                sock.sendto(answer, ("255.255.255.255", CLIENT_PORT))
                self.answered += 1
                logger.info("network boot: HTTP boot proxy offer %s to %s", self.url, parse(data).chaddr)
            except OSError as exc:
                logger.warning("network boot: HTTP boot proxy offer not sent: %s", exc.strerror)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
