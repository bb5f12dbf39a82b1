from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from fleetcast.identity.windows import sam, security
from fleetcast.identity.windows.hive import Hive, scrub
from fleetcast.identity.windows.sid import Sid, seeded_machine_sid

Unpack = Callable[..., Path]
WINREG_KB = "S-1-5-21-4070822719-3404542230-2541167049"


@pytest.mark.parametrize(
    ("rel", "sid"),
    [("winreg-kb/SAM.xz", WINREG_KB), ("regipy/SAM.xz", "S-1-5-21-1760460187-1592185332-161725925")],
)
def test_machine_sid_from_descriptor_table(hive_file: Unpack, rel: str, sid: str) -> None:
    h = Hive(hive_file(rel))
    assert str(sam.machine_sid(h)) == sid
    v = h.get(sam.ACCOUNT, "V")
    assert v is not None
    off, length = sam.sid_location(v.data)
    assert length == 24 and v.data[off : off + 24] == Sid.parse(sid).to_bytes()


def test_sid_location_follows_the_table_not_a_fixed_offset() -> None:
    sid = Sid.parse(WINREG_KB).to_bytes()
    table = bytes(12) + (40).to_bytes(4, "little") + (24).to_bytes(4, "little") + bytes(4) + bytes(24)
    v = table + bytes(40) + sid + b"tail-data"
    off, length = sam.sid_location(v)
    assert (off, length) == (48 + 40, 24)
    with pytest.raises(ValueError, match="expected a 24-byte machine SID"):
        sam.sid_location(
            table[:12] + (40).to_bytes(4, "little") + (20).to_bytes(4, "little") + bytes(28) + sid
        )


def test_users(hive_file: Unpack) -> None:
    users = sam.users(Hive(hive_file("regipy/SAM.xz")))
    assert [(u.rid, u.name) for u in users] == [(500, "Administrator"), (501, "Guest"), (1000, "Preston")]


def test_security_domains(hive_file: Unpack) -> None:
    d = security.domains(Hive(hive_file("winreg-kb/SECURITY.xz")))
    assert d.account_name == "STUDENT-PC8" and str(d.account_sid) == WINREG_KB
    assert d.joined and d.primary_name == "INTERNAL" and d.dns_domain == "internal.greendale.edu"
    w = security.domains(Hive(hive_file("regipy/SECURITY.xz")))
    assert w.account_name == "DESKTOP-M964FJN" and not w.joined and w.primary_name == "WORKGROUP"


def test_unicode_string_round_trip() -> None:
    raw = bytes.fromhex("1600180008000000530054005500440045004e0054002d005000430038000000")
    assert security.decode_unicode_string(raw) == "STUDENT-PC8"
    assert security.encode_unicode_string("STUDENT-PC8") == raw


@pytest.mark.parametrize("name", ["SAM", "SECURITY"])
def test_new_sid_leaves_no_old_bytes(hive_file: Unpack, tmp_path: Path, name: str) -> None:
    path = hive_file(f"winreg-kb/{name}.xz", name)
    old, new = Sid.parse(WINREG_KB), seeded_machine_sid("unit")
    h = Hive(path, write=True)
    mod = sam if name == "SAM" else security
    changes = mod.set_machine_sid(h, new)
    assert changes
    out = tmp_path / f"{name}.new"
    h.commit(out)
    scrub(out, old=old, new=new, all_cells=True)
    raw = out.read_bytes()
    assert old.to_bytes()[8:] not in raw  # 21, a, b, c as binary
    assert str(old).encode() not in raw and str(old).encode("utf-16-le") not in raw
    assert mod.machine_sid(Hive(out)) == new
