"""The SAM hive: the machine SID in ``Domains\\Account\\V`` (found through the value's descriptor table),
local users, and the SID rewrite over every place SAM keeps it."""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass

from fleetcast.errors import HiveError
from fleetcast.identity.windows.hive import Hive, rewrite_sids
from fleetcast.identity.windows.sid import Sid

logger = logging.getLogger(__name__)

ACCOUNT = "SAM\\Domains\\Account"
USERS_NAMES = "SAM\\Domains\\Account\\Users\\Names"
DESCRIPTOR_SIZE = 12
ACCOUNT_V_DESCRIPTORS = 4  # the data area starts right after the table (0x30)
SID_DESCRIPTOR = 1


@dataclass(frozen=True)
class User:
    rid: int
    name: str


def descriptor_table(v: bytes, count: int) -> list[tuple[int, int]]:
    """(absolute offset, length) of each entry of a SAM V value's descriptor table; the data area
    starts after the table and the table's offsets are relative to it."""
    base = count * DESCRIPTOR_SIZE
    if len(v) < base:
        raise ValueError(f"V value of {len(v)} bytes is shorter than its {count}-entry descriptor table")
    out = []
    for i in range(count):
        off, length, _ = struct.unpack_from("<III", v, i * DESCRIPTOR_SIZE)
        out.append((base + off, length))
    return out


def sid_location(v: bytes) -> tuple[int, int]:
    """Where ``Domains\\Account\\V`` keeps the machine SID: (offset, length), from descriptor 1."""
    off, length = descriptor_table(v, ACCOUNT_V_DESCRIPTORS)[SID_DESCRIPTOR]
    if length != 24 or off + length > len(v):
        raise ValueError(
            f"descriptor {SID_DESCRIPTOR} points at {length} bytes at {off:#x} in a {len(v)}-byte value; "
            "expected a 24-byte machine SID inside the value"
        )
    return off, length


def machine_sid(sam: Hive) -> Sid:
    v = sam.get(ACCOUNT, "V")
    if v is None:
        raise HiveError(f"SAM hive {sam.path} has no {ACCOUNT}\\V value", hint="is this really a SAM hive?")
    try:
        off, _ = sid_location(v.data)
        sid = Sid.from_bytes(v.data, off)
    except ValueError as exc:
        raise HiveError(f"SAM hive {sam.path}: {ACCOUNT}\\V: {exc}") from exc
    if not sid.is_machine:
        raise HiveError(f"SAM hive {sam.path}: {ACCOUNT}\\V holds {sid}, expected S-1-5-21-a-b-c")
    return sid


def users(sam: Hive) -> list[User]:
    """Local users from ``Users\\Names``: each key's default value carries the RID as its type."""
    node = sam.node(USERS_NAMES)
    if node is None:
        return []
    out = []
    for c in sam.children(node):
        default = sam.value(c, "")
        if default is not None:
            out.append(User(default.type, sam.name(c)))
    return sorted(out, key=lambda u: u.rid)


def set_machine_sid(sam: Hive, new: Sid) -> list[str]:
    """Put ``new`` everywhere SAM keeps the machine SID: Account\\V (the located descriptor), users'
    V, alias member lists (C), ``Aliases\\Members\\<SID>`` key names; value types kept."""
    old = machine_sid(sam)
    if old == new:
        return []
    # binary SIDs are replaced in their cells by the raw pass after the commit (scrub, all_cells),
    # which the independent check after it verifies
    changes = rewrite_sids(sam, old, new, in_place=True)
    return [f"SAM {c}" for c in changes]
