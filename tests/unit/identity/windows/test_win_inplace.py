"""Issue 13 finding 1: a new SID must not make hivex rewrite values that are not meant to change.

Setting a user's ``V`` through hivex rewrote every value of the key (a format-1.5 hive's big-data
``UserTile`` came back as one plain cell, its old cells leaked). Same-length SID rewrites are done in
place at the cell level: every value keeps its vk cell and its data cell, and only SID bytes differ."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from fleetcast.identity.windows import sam, security
from fleetcast.identity.windows.hive import REG_BINARY, Hive, scrub
from fleetcast.identity.windows.sid import random_machine_sid, replace_binary, seeded_machine_sid

Unpack = Callable[..., Path]


def _layout(h: Hive) -> dict[tuple[str, str], tuple[int, int, bytes]]:
    """(key path, value name) -> (vk offset, type, data) for every value of the hive."""
    out = {}
    for path, node in h.walk():
        for v in h.h.node_values(node):
            t, data = h.h.value_value(v)
            out[(path.lower(), str(h.h.value_key(v)))] = (int(v), int(t), bytes(data))
    return out


@pytest.mark.parametrize(
    ("rel", "mod"), [("winreg-kb/SAM.xz", sam), ("regipy/SAM.xz", sam), ("winreg-kb/SECURITY.xz", security)]
)
def test_sid_rewrite_keeps_every_value_cell(hive_file: Unpack, tmp_path: Path, rel: str, mod: object) -> None:
    src = hive_file(rel)
    before = _layout(Hive(src))
    h = Hive(src, write=True)
    old = mod.machine_sid(h)  # type: ignore[attr-defined]
    new = seeded_machine_sid("inplace")
    changes = mod.set_machine_sid(h, new)  # type: ignore[attr-defined]
    assert changes
    out = tmp_path / "out"
    h.commit(out)
    scrub(out, old=old, new=new, all_cells=True)
    after_hive = Hive(out)
    assert mod.machine_sid(after_hive) == new  # type: ignore[attr-defined]
    after = _layout(after_hive)
    renamed = {k for k in before if str(old).lower() in k[0]}
    moved = []
    for key, (vk, t, data) in before.items():
        if key in renamed:
            continue
        vk2, t2, data2 = after[key]
        if vk2 != vk or t2 != t:
            moved.append(key)
        expected, _ = replace_binary(data, old, new)
        assert data2 == expected, key
    assert moved == []


def test_sid_text_in_a_binary_value_is_rewritten_in_place(hive_file: Unpack, tmp_path: Path) -> None:
    """Issue 13 finding 3: a UserTile-like value holds the account picture's path with the old SID as
    UTF-16 text; a random new SID keeps the text's length, so the raw pass rewrites it in its cell."""
    src = hive_file("winreg-kb/SAM.xz")
    h = Hive(src, write=True)
    old = sam.machine_sid(h)
    user = h.node("SAM\\Domains\\Account\\Users\\000001F4")
    assert user is not None
    path = f"C:\\Users\\Public\\AccountPictures\\{old}-500\\{{0A1B}}-Image192.jpg\0"
    tile = b"\x01\x00\x00\x00" + path.encode("utf-16-le") + f"{old}-500".encode("ascii") + bytes(64)
    h.set_value(user, "UserTile", REG_BINARY, tile)
    staged = tmp_path / "staged"
    h.commit(staged)
    before = _layout(Hive(staged))
    h = Hive(staged, write=True)
    new = random_machine_sid(like=old)
    assert len(str(new)) == len(str(old)) and new != old
    sam.set_machine_sid(h, new)
    out = tmp_path / "out"
    h.commit(out)
    res = scrub(out, old=old, new=new, all_cells=True)
    assert res.text_sids_replaced == 2
    raw = out.read_bytes()
    for enc in ("utf-16-le", "ascii"):
        assert str(old).encode(enc) not in raw and f"{new}-500".encode(enc) in raw
    after = _layout(Hive(out))
    key = ("sam\\domains\\account\\users\\000001f4", "UserTile")
    assert after[key][0] == before[key][0]  # same vk cell
    assert after[key][2] == tile.replace(str(old).encode("utf-16-le"), str(new).encode("utf-16-le")).replace(
        str(old).encode(), str(new).encode()
    )
