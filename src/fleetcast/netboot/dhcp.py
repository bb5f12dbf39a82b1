"""DHCP packets (RFC 2131/2132) built and parsed with ``struct``, and a DHCPDISCOVER probe.

Two users: ``fleetcast serve --dhcp full`` first asks whether another DHCP server already answers on
the interface (:func:`probe`), and the tests play a PXE client (:func:`discover`) of any architecture
(option 93) with or without iPXE's user class (option 77).

Parsing is a pure function over bytes from the network: lengths are checked before unpacking, a
malformed packet raises :class:`MalformedPacket` (the probe skips it and keeps listening).
"""

from __future__ import annotations

import logging
import os
import select
import socket
import struct
import time
from dataclasses import dataclass, field

from fleetcast.errors import UsageError

logger = logging.getLogger(__name__)

MAGIC = b"\x63\x82\x53\x63"
HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")  # 236 bytes, then the magic cookie
CLIENT_PORT = 68
SERVER_PORT = 67

DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = range(1, 9)
MESSAGE_NAMES = {1: "DISCOVER", 2: "OFFER", 3: "REQUEST", 4: "DECLINE", 5: "ACK", 6: "NAK", 7: "RELEASE"}

OPT_SUBNET = 1
OPT_ROUTER = 3
OPT_MESSAGE_TYPE = 53
OPT_SERVER_ID = 54
OPT_PARAMS = 55
OPT_VENDOR_CLASS = 60
OPT_TFTP_SERVER = 66
OPT_BOOTFILE = 67
OPT_USER_CLASS = 77
OPT_ARCH = 93
OPT_NII = 94
OPT_UUID = 97
OPT_VENDOR = 43
OPT_IPXE = 175
OPT_END = 255
OPT_PAD = 0


class MalformedPacket(ValueError):
    """Bytes that are not a DHCP packet (too short, no magic cookie, an option running past the end)."""


@dataclass(frozen=True)
class Packet:
    """The fields of a DHCP packet this project reads; ``options`` by code (the last one wins)."""

    op: int
    xid: int
    yiaddr: str
    siaddr: str
    chaddr: str  # "aa:bb:cc:dd:ee:ff"
    sname: str
    file: str
    options: dict[int, bytes] = field(default_factory=dict)
    sender: str = ""  # the address it came from

    @property
    def message_type(self) -> int | None:
        value = self.options.get(OPT_MESSAGE_TYPE)
        return value[0] if value and len(value) == 1 else None

    @property
    def server_id(self) -> str | None:
        value = self.options.get(OPT_SERVER_ID)
        return socket.inet_ntoa(value) if value and len(value) == 4 else None

    @property
    def boot_file(self) -> str:
        """Option 67, else the ``file`` field (both are how a server names the boot file)."""
        value = self.options.get(OPT_BOOTFILE)
        return value.rstrip(b"\x00").decode(errors="replace") if value else self.file

    @property
    def vendor_class(self) -> str:
        return self.options.get(OPT_VENDOR_CLASS, b"").decode(errors="replace")

    @property
    def offers_address(self) -> bool:
        """True when this answer leases an address (a real DHCP server); a proxyDHCP answer has 0.0.0.0."""
        return self.yiaddr != "0.0.0.0"


def _cstr(raw: bytes) -> str:
    return raw.split(b"\x00", 1)[0].decode(errors="replace")


def mac_bytes(mac: str) -> bytes:
    parts = mac.split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise UsageError(f"MAC address {mac!r} is not six hex pairs joined by ':'")
    try:
        return bytes(int(p, 16) for p in parts)
    except ValueError as exc:
        raise UsageError(f"MAC address {mac!r} is not six hex pairs joined by ':'") from exc


def parse(data: bytes, sender: str = "") -> Packet:
    """Parse one DHCP packet; MalformedPacket for anything that is not one."""
    if len(data) < HEADER.size + len(MAGIC):
        raise MalformedPacket(f"{len(data)} bytes, a DHCP packet has at least {HEADER.size + 4}")
    op, htype, hlen, _hops, xid, _secs, _flags, _ci, yi, si, _gi, ch, sname, file = HEADER.unpack_from(data)
    if data[HEADER.size : HEADER.size + 4] != MAGIC:
        raise MalformedPacket("no DHCP magic cookie")
    if htype != 1 or hlen != 6:
        raise MalformedPacket(f"hardware type {htype} length {hlen}, expected Ethernet (1, 6)")
    options: dict[int, bytes] = {}
    pos = HEADER.size + 4
    while pos < len(data):
        code = data[pos]
        if code == OPT_END:
            break
        if code == OPT_PAD:
            pos += 1
            continue
        if pos + 2 > len(data):
            raise MalformedPacket(f"option {code} at byte {pos} has no length")
        length = data[pos + 1]
        if pos + 2 + length > len(data):
            raise MalformedPacket(f"option {code} at byte {pos} runs past the end ({length} bytes)")
        options[code] = options.get(code, b"") + data[pos + 2 : pos + 2 + length]  # RFC 3396 concatenation
        pos += 2 + length
    return Packet(
        op=op,
        xid=xid,
        yiaddr=socket.inet_ntoa(yi),
        siaddr=socket.inet_ntoa(si),
        chaddr=":".join(f"{b:02x}" for b in ch[:6]),
        sname=_cstr(sname),
        file=_cstr(file),
        options=options,
        sender=sender,
    )


def discover_packet(
    mac: str,
    xid: int,
    *,
    arch: int | None = 0,
    user_class: bytes | None = None,
    pxe: bool = True,
    message: int = DISCOVER,
    ciaddr: str = "0.0.0.0",
) -> bytes:
    """A broadcast DHCPDISCOVER from ``mac``. ``arch`` (option 93) 0 BIOS, 7/9 UEFI x64, 16 UEFI
    HTTP boot; ``pxe`` adds the PXEClient (or HTTPClient for 16) vendor class, NII and UUID as
    firmware does; ``user_class`` is option 77 (iPXE sends ``b"iPXE"``). With ``message=REQUEST``
    and the client's ``ciaddr`` it is the request a PXE client sends a proxyDHCP server on port 4011."""
    header = HEADER.pack(
        1, 1, 6, 0, xid, 0, 0x8000, bytes(4), socket.inet_aton(ciaddr), bytes(4), bytes(4),
        mac_bytes(mac) + bytes(10), bytes(64), bytes(128),
    )  # fmt: skip
    opts = bytearray([OPT_MESSAGE_TYPE, 1, message])
    opts += bytes([OPT_PARAMS, 7, OPT_SUBNET, OPT_ROUTER, OPT_VENDOR, OPT_VENDOR_CLASS])
    opts += bytes([OPT_TFTP_SERVER, OPT_BOOTFILE, OPT_IPXE])
    if arch is not None:
        opts += bytes([OPT_ARCH, 2]) + struct.pack("!H", arch)
    if pxe and arch is not None:
        kind = "HTTPClient" if arch == 16 else "PXEClient"
        vendor = f"{kind}:Arch:{arch:05d}:UNDI:003016".encode()
        opts += bytes([OPT_VENDOR_CLASS, len(vendor)]) + vendor
        opts += bytes([OPT_NII, 3, 1, 3, 16])
        opts += bytes([OPT_UUID, 17, 0]) + mac_bytes(mac) + bytes(10)
    if user_class is not None:
        opts += bytes([OPT_USER_CLASS, len(user_class)]) + user_class
    opts += bytes([OPT_END])
    return header + MAGIC + bytes(opts)


def _client_socket(interface: str, timeout: float) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
        sock.bind(("0.0.0.0", CLIENT_PORT))
    except OSError as exc:
        sock.close()
        raise UsageError(
            f"cannot send a DHCP probe on {interface}: {exc.strerror}",
            hint="the DHCP check needs root (port 68); skip it with --force if you are sure",
        ) from exc
    sock.settimeout(timeout)
    return sock


def interface_mac(interface: str) -> str:
    try:
        with open(f"/sys/class/net/{interface}/address") as fh:
            return fh.read().strip().lower()
    except OSError as exc:
        raise UsageError(f"network interface {interface!r} does not exist") from exc


def discover(
    interface: str,
    mac: str | None = None,
    *,
    arch: int | None = 0,
    user_class: bytes | None = None,
    timeout: float = 2.0,
    pxe: bool = True,
) -> list[Packet]:
    """Broadcast one DHCPDISCOVER on ``interface`` and collect every OFFER for it for ``timeout``
    seconds (a proxyDHCP server's answer is an OFFER too, with yiaddr 0.0.0.0)."""
    mac = (mac or interface_mac(interface)).lower()
    xid = int.from_bytes(os.urandom(4), "big")
    packet = discover_packet(mac, xid, arch=arch, user_class=user_class, pxe=pxe)
    with _client_socket(interface, timeout) as sock:
        sock.sendto(packet, ("255.255.255.255", SERVER_PORT))
        return [r for r in _replies(sock, xid, timeout) if r.message_type == OFFER]


def _replies(sock: socket.socket, xid: int, timeout: float, *, first: bool = False) -> list[Packet]:
    """The server replies for ``xid`` that arrive within ``timeout`` (only the first with ``first``);
    malformed packets are logged and skipped."""
    found: list[Packet] = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([sock], [], [], left)
        if not ready:
            break
        data, (addr, _port) = sock.recvfrom(4096)
        try:
            reply = parse(data, sender=addr)
        except MalformedPacket as exc:
            logger.debug("DHCP: ignoring a malformed packet from %s: %s", addr, exc)
            continue
        if reply.op == 2 and reply.xid == xid:
            found.append(reply)
            if first:
                break
    return found


PXE_PORT = 4011


def pxe_request(
    server: str,
    mac: str,
    ciaddr: str,
    *,
    arch: int = 7,
    user_class: bytes | None = None,
    timeout: float = 2.0,
) -> Packet | None:
    """What a UEFI PXE client (or iPXE) does after a proxyDHCP offer without a boot file: a DHCPREQUEST
    to the proxy's port 4011 from the address the site's DHCP server gave. Returns the ACK or None."""
    xid = int.from_bytes(os.urandom(4), "big")
    packet = discover_packet(mac, xid, arch=arch, user_class=user_class, message=REQUEST, ciaddr=ciaddr)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((ciaddr, 0))
        sock.settimeout(timeout)
        sock.sendto(packet, (server, PXE_PORT))
        replies = _replies(sock, xid, timeout, first=True)
    return replies[0] if replies else None


def probe(interface: str, timeout: float = 2.0) -> list[Packet]:
    """The DHCP servers answering on ``interface``: OFFERs that lease an address (proxyDHCP answers,
    which lease none, are left out)."""
    return [o for o in discover(interface, arch=None, pxe=False, timeout=timeout) if o.offers_address]
