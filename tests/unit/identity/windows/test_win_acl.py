"""Security descriptors from the volume are untrusted: malformed ACEs are ValueErrors naming the place,
and a SID is never read (or rewritten) past the end of its ACE."""

from __future__ import annotations

import struct

import pytest

from fleetcast.identity.windows.acl import build_sd, rewrite_sd
from fleetcast.identity.windows.sid import Sid

OLD = Sid.parse("S-1-5-21-1-2-3")
NEW = Sid.parse("S-1-5-21-7-8-9")
SYSTEM = Sid.parse("S-1-5-18")


def _sd_with_dacl(ace: bytes, tail: bytes = b"") -> bytes:
    dacl = struct.pack("<BBHHH", 2, 0, 8 + len(ace), 1, 0) + ace
    return struct.pack("<BBHIIII", 1, 0, 0x8004, 0, 0, 0, 20) + dacl + tail


def test_owner_and_dacl_of_local_accounts_are_rewritten() -> None:
    sd = build_sd(OLD.child(1001), SYSTEM, [(0, 0, 0x1F01FF, OLD.child(1001)), (0, 0, 0x1F01FF, SYSTEM)])
    out, n = rewrite_sd(sd, OLD, NEW)
    assert n == 2 and len(out) == len(sd)
    assert out == build_sd(
        NEW.child(1001), SYSTEM, [(0, 0, 0x1F01FF, NEW.child(1001)), (0, 0, 0x1F01FF, SYSTEM)]
    )


def test_object_ace_too_short_for_its_flags() -> None:
    sd = _sd_with_dacl(struct.pack("<BBH", 0x05, 0, 8) + b"\0" * 4)
    with pytest.raises(ValueError) as exc:
        rewrite_sd(sd, OLD, NEW)
    assert str(exc.value) == "object ACE at 28 has a bad size 8"


def test_sid_past_the_end_of_its_ace_is_not_rewritten() -> None:
    # an 8-byte ACE (no room for a SID) followed by bytes that look like a local-account SID
    tail = OLD.child(1001).to_bytes()
    sd = _sd_with_dacl(struct.pack("<BBHI", 0x00, 0, 8, 0xFFFFFFFF), tail)
    with pytest.raises(ValueError) as exc:
        rewrite_sd(sd, OLD, NEW)
    assert str(exc.value) == "SID at offset 36: need 8 header bytes, have 0"
