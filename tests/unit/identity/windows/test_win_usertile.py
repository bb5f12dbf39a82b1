"""Issue 13 finding 1 on real format-1.5 SAM hives (Windows 10; turbinia and frnsc-hive test data):
a user's 32 KB ``UserTile`` stored as Windows stores it (a big-data record) keeps its vk cell, its db
record and its segment cells through a new SID; only the SID text inside it changes. No published
SAM with a licence has a real UserTile: the value is grafted as a db record (``win_bigdata``), the
hive around it is real."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from dissect.regf import RegistryHive  # type: ignore[import-untyped]
from tests.fixtures.windows_tree import build_windows_tree, unpack
from tests.unit.identity.windows.test_win_fsck import dissect_keys
from tests.unit.identity.windows.win_bigdata import (
    allocated_cells,
    big_record,
    graft_big_value,
    mark_clean,
    value_layout,
)
from tests.unit.identity.windows.win_dumps import dump

from fleetcast.identity.windows import sam, security
from fleetcast.identity.windows.fsck import fsck, require_sound
from fleetcast.identity.windows.hive import REG_BINARY, Hive, scrub
from fleetcast.identity.windows.personalizer import Options, personalize
from fleetcast.identity.windows.sid import Sid, random_machine_sid, replace_binary

Unpack = Callable[..., Path]
USERS = "SAM\\Domains\\Account\\Users"
CONFIG = Path("Windows/System32/config")


def _tile(user: Sid) -> bytes:
    """A UserTile as Windows 10 writes one: a header, a 32 KB picture, then the picture's path (UTF-16)
    under the account's AccountPictures folder, named after the user's SID."""
    picture = bytes((i * 7) & 0xFF for i in range(32 * 1024))
    path = f"C:\\Users\\Public\\AccountPictures\\{user}\\{{6C2B9A51-0000}}-Image448.jpg\0"
    return b"\x01\x00\x00\x00" + len(picture).to_bytes(4, "little") + picture + path.encode("utf-16-le")


def _dissect_value(path: Path, key: str, name: str) -> bytes:
    with path.open("rb") as fh:
        return bytes(RegistryHive(fh).open(key).value(name).value)


@pytest.mark.parametrize(("rel", "rid"), [("turbinia/SAM.xz", "000003E8"), ("frnsc-hive/SAM.xz", "000003E9")])
def test_big_usertile_keeps_its_big_data_record(
    hive_file: Unpack, tmp_path: Path, rel: str, rid: str
) -> None:
    src = hive_file(rel)
    assert (
        src.read_bytes()[20:28] == b"\x01\x00\x00\x00\x05\x00\x00\x00"
    )  # format 1.5, as Windows 8+ writes SAM
    old = sam.machine_sid(Hive(src))
    user = f"{USERS}\\{rid}"
    tile = _tile(old.child(int(rid, 16)))
    graft_big_value(src, user, "UserTile", tile)
    assert fsck(src).errors == [] and _dissect_value(src, user, "UserTile") == tile
    vk, db, segs = big_record(src, user, "UserTile")
    before = value_layout(src)

    # what the bug did: hivex setting V rewrites the key's values, UserTile becomes one plain cell
    bad = Hive(src, write=True)
    node = bad.node(user)
    assert node is not None
    v = bad.value(node, "V")
    assert v is not None
    bad.set_value(node, "V", REG_BINARY, v.data)
    bad.commit(tmp_path / "bad")
    assert any("UserTile" in e and "big-data" in e for e in fsck(tmp_path / "bad").errors)

    # the product's way: the new SID (random, same text length) written in place
    h = Hive(src, write=True)
    new = random_machine_sid(like=old)
    assert sam.set_machine_sid(h, new)
    out = tmp_path / "out"
    h.commit(out)
    scrub(out, old=old, new=new, all_cells=True)
    require_sound(out, max_unreachable=0)
    assert big_record(out, user, "UserTile") == (vk, db, segs)  # same vk, db record and segment cells
    expected = tile.replace(str(old).encode("utf-16-le"), str(new).encode("utf-16-le"))
    assert expected != tile
    assert _dissect_value(out, user, "UserTile") == expected
    after = value_layout(out)
    lo = str(old).lower()
    moved = [k for k in before if lo not in k[0] and after[k][:2] != before[k][:2]]
    assert moved == []  # every value keeps its vk cell and type (but those of renamed Members keys)
    for (key, name), (_vk, _t, data) in before.items():
        exp, _ = replace_binary(data, old, new)
        exp = exp.replace(str(old).encode("utf-16-le"), str(new).encode("utf-16-le"))
        assert after[(key.replace(lo, str(new).lower()), name)][2] == exp, key
    raw = out.read_bytes()
    for form in (old.to_bytes()[8:], str(old).encode("utf-16-le"), str(old).encode()):
        assert form not in raw
    assert dissect_keys(out) == fsck(out).keys


def test_personalize_a_real_format_1_5_sam_with_a_big_usertile(tmp_path: Path) -> None:
    """The whole run on a volume whose SAM, SECURITY and a local user's NTUSER.DAT are the frnsc-hive
    Windows 10 set. SECURITY and NTUSER.DAT were published dirty without their logs; structurally they
    are sound (fsck finds nothing else), so their second sequence numbers are set equal here."""
    root = tmp_path / "vol"
    info = build_windows_tree(root, sam_pair="frnsc-hive", with_acls=False)
    samp = root / CONFIG / "SAM"
    old = info.machine_sid
    secp = root / CONFIG / "SECURITY"
    mark_clean(secp)
    assert fsck(secp).errors == []
    # the real profile hive of the local account SuperSecretAdmin (RID 1004), published dirty (517/516)
    # without its logs too, in place of the one the tree builds
    userp = root / "Users" / "SuperSecretAdmin" / "NTUSER.DAT"
    unpack("frnsc-hive/NTUSER.DAT.xz", userp)
    mark_clean(userp)
    user_dump, user_keys = dump(userp), fsck(userp).keys
    user_sid = old.child(1004).to_bytes()
    assert any(user_sid in sk for sk in allocated_cells(userp.read_bytes(), b"sk"))
    user = f"{USERS}\\000003E9"
    tile = _tile(old.child(1001))
    graft_big_value(samp, user, "UserTile", tile)
    layout = big_record(samp, user, "UserTile")
    pics = root / "Users" / "Public" / "AccountPictures" / f"{old}-1001"
    pics.mkdir(parents=True)
    (pics / "{6C2B9A51-0000}-Image448.jpg").write_bytes(b"jpeg")
    keys = fsck(samp).keys
    changes = personalize(root, Options(name="PC-TILE", new_sid=True))
    new = sam.machine_sid(Hive(samp))
    assert new != old and len(str(new)) == len(str(old))
    assert not any(c.startswith("warning") for c in changes), changes
    assert any("UserTile" in c or "SID" in c for c in changes)
    require_sound(samp, max_unreachable=0)
    assert dissect_keys(samp) == keys
    assert big_record(samp, user, "UserTile") == layout
    text = str(new).encode("utf-16-le")
    assert _dissect_value(samp, user, "UserTile") == tile.replace(str(old).encode("utf-16-le"), text)
    assert str(old).encode("utf-16-le") not in samp.read_bytes()
    assert (pics.parent / f"{new}-1001" / "{6C2B9A51-0000}-Image448.jpg").read_bytes() == b"jpeg"
    assert not pics.exists()
    # the real user hive: every key security descriptor names the new SID, nothing else changed
    assert dump(userp) == user_dump
    require_sound(userp, max_unreachable=0)
    assert dissect_keys(userp) == user_keys
    sks = allocated_cells(userp.read_bytes(), b"sk")
    assert not any(old.to_bytes()[8:] in sk for sk in sks)
    assert any(new.child(1004).to_bytes() in sk for sk in sks)
    (line,) = [c for c in changes if c.startswith("user hive Users/SuperSecretAdmin/NTUSER.DAT: ")]
    assert line.endswith(" security descriptor SID(s) rewritten") and int(line.split(": ")[1].split()[0]) > 0
    shutil.rmtree(root)


def test_sam_and_security_of_two_machines_end_with_one_new_sid(tmp_path: Path) -> None:
    """A volume whose SAM (frnsc-hive, Windows 10) and SECURITY (winreg-kb) name different machine
    SIDs: personalize warns and rewrites each from its own old SID, so both hold the new one (it
    used to warn, then fail its own check on SECURITY's unchanged PolAcDmS)."""
    root = tmp_path / "vol"
    info = build_windows_tree(root, sam_pair="frnsc-hive", with_acls=False)
    secp = root / CONFIG / "SECURITY"
    unpack("winreg-kb/SECURITY.xz", secp)
    sec_old = security.machine_sid(Hive(secp))
    assert sec_old != info.machine_sid
    keys = fsck(secp).keys
    changes = personalize(root, Options(name="PC-PAIR", new_sid=True))
    new = sam.machine_sid(Hive(root / CONFIG / "SAM"))
    assert security.machine_sid(Hive(secp)) == new
    assert (
        f"warning: SAM machine SID {info.machine_sid} and SECURITY PolAcDmS {sec_old} differed; "
        f"both now hold {new}" in changes
    )
    require_sound(secp, max_unreachable=0)
    assert dissect_keys(secp) == keys
    assert sec_old.to_bytes()[8:] not in secp.read_bytes()
