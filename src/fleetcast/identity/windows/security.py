"""The SECURITY hive (LSA policy): account domain (PolAcDmN name, PolAcDmS SID), primary domain
(PolPrDmN, PolPrDmS, PolDnDDN) and the SID rewrite (PolAcDmS, ``Policy\\Accounts\\<SID>``)."""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass

from fleetcast.errors import HiveError
from fleetcast.identity.windows.hive import REG_NONE, Hive, rewrite_sids
from fleetcast.identity.windows.sid import Sid

logger = logging.getLogger(__name__)

POLICY = "Policy"


def decode_unicode_string(data: bytes) -> str:
    """LSA's stored UNICODE_STRING: u16 length, u16 maximum length, u32 buffer offset, UTF-16 text."""
    if len(data) < 8:
        return ""
    length, _maxlen, offset = struct.unpack_from("<HHI", data)
    if offset < 8 or offset + length > len(data):
        offset = 8
        length = min(length, len(data) - 8)
    return data[offset : offset + length].decode("utf-16-le", errors="replace")


def encode_unicode_string(text: str) -> bytes:
    raw = text.encode("utf-16-le")
    return struct.pack("<HHI", len(raw), len(raw) + 2, 8) + raw + b"\0\0"


@dataclass(frozen=True)
class Domains:
    account_name: str
    account_sid: Sid | None
    primary_name: str
    primary_sid: Sid | None
    dns_domain: str

    @property
    def joined(self) -> bool:
        return self.primary_sid is not None


def _policy_value(sec: Hive, name: str) -> bytes | None:
    v = sec.get(f"{POLICY}\\{name}", "")
    return None if v is None else v.data


def _sid_or_none(data: bytes | None) -> Sid | None:
    if not data:
        return None
    try:
        return Sid.from_bytes(data)
    except ValueError:
        return None


def domains(sec: Hive) -> Domains:
    if sec.node(POLICY) is None:
        raise HiveError(f"SECURITY hive {sec.path} has no Policy key", hint="is this really a SECURITY hive?")
    return Domains(
        account_name=decode_unicode_string(_policy_value(sec, "PolAcDmN") or b""),
        account_sid=_sid_or_none(_policy_value(sec, "PolAcDmS")),
        primary_name=decode_unicode_string(_policy_value(sec, "PolPrDmN") or b""),
        primary_sid=_sid_or_none(_policy_value(sec, "PolPrDmS")),
        dns_domain=decode_unicode_string(_policy_value(sec, "PolDnDDN") or b""),
    )


def machine_sid(sec: Hive) -> Sid:
    sid = domains(sec).account_sid
    if sid is None or not sid.is_machine:
        raise HiveError(f"SECURITY hive {sec.path}: Policy\\PolAcDmS holds no machine SID (found {sid})")
    return sid


def set_name(sec: Hive, netbios: str) -> list[str]:
    node = sec.node(f"{POLICY}\\PolAcDmN")
    if node is None:
        raise HiveError(f"SECURITY hive {sec.path} has no Policy\\PolAcDmN key")
    old = sec.value(node, "")
    if old is not None and decode_unicode_string(old.data) == netbios:
        return []
    sec.set_value(node, "", old.type if old is not None else REG_NONE, encode_unicode_string(netbios))
    before = decode_unicode_string(old.data) if old is not None else ""
    return [f"SECURITY Policy\\PolAcDmN: {before} -> {netbios}"]


def set_machine_sid(sec: Hive, new: Sid) -> list[str]:
    """PolAcDmS and everything else in Policy naming the machine or its accounts (``Accounts\\<SID>``
    keys and their Sid values). The primary-domain SID (PolPrDmS) is a different SID and stays."""
    old = machine_sid(sec)
    if old == new:
        return []
    # binary SIDs are replaced in their cells by the raw pass after the commit (scrub, all_cells),
    # which the independent check after it verifies
    changes = rewrite_sids(sec, old, new, in_place=True)
    return [f"SECURITY {c}" for c in changes]
