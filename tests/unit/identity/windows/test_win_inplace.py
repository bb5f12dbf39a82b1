"""Issue 13 finding 1: a new SID must not make hivex rewrite values that are not meant to change.

Setting a user's ``V`` through hivex rewrote every value of the key (a format-1.5 hive's big-data
``UserTile`` came back as one plain cell, its old cells leaked). Same-length SID rewrites are done in
place at the cell level: every value keeps its vk cell and its data cell, and only SID bytes differ."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.unit.identity.windows.win_bigdata import value_layout

from fleetcast.identity.windows import sam, security
from fleetcast.identity.windows.hive import REG_BINARY, Hive, scrub
from fleetcast.identity.windows.sid import random_machine_sid, replace_binary, seeded_machine_sid

Unpack = Callable[..., Path]


@pytest.mark.parametrize(
    ("rel", "mod"), [("winreg-kb/SAM.xz", sam), ("regipy/SAM.xz", sam), ("winreg-kb/SECURITY.xz", security)]
)
def test_sid_rewrite_keeps_every_value_cell(hive_file: Unpack, tmp_path: Path, rel: str, mod: object) -> None:
    src = hive_file(rel)
    before = value_layout(src)
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
    after = value_layout(out)
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
    before = value_layout(staged)
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
    after = value_layout(out)
    key = ("sam\\domains\\account\\users\\000001f4", "UserTile")
    assert after[key][0] == before[key][0]  # same vk cell
    assert after[key][2] == tile.replace(str(old).encode("utf-16-le"), str(new).encode("utf-16-le")).replace(
        str(old).encode(), str(new).encode()
    )


def _big_records(raw: bytes) -> list[list[int]]:
    """Segment data offsets (in the file) of every allocated big-data record -- parsed here, not with
    the product's code."""
    import struct

    out = []
    pos = 4096
    while raw[pos : pos + 4] == b"hbin":
        size = struct.unpack_from("<I", raw, pos + 8)[0]
        cell = pos + 32
        while cell < pos + size:
            csize = struct.unpack_from("<i", raw, cell)[0]
            if csize < 0 and raw[cell + 4 : cell + 6] == b"db":
                count, lst = struct.unpack_from("<HI", raw, cell + 6)
                segs = struct.unpack_from(f"<{count}I", raw, 4096 + lst + 4)
                out.append([4096 + s + 4 for s in segs])
            cell += abs(csize)
        pos += size
    return out


def test_sid_text_straddling_two_big_data_segments_is_rewritten(hive_file: Unpack) -> None:
    """Issue 13 finding 3's last gap: a value over 16,344 bytes is split into big-data segments; SID
    text that crosses from one segment into the next is found and rewritten in place too."""
    from Registry import Registry

    path = hive_file("regipy/SYSTEM.xz")  # a real format-1.5 hive with big-data values
    raw = bytearray(path.read_bytes())
    (first, second, *_rest) = next(r for r in _big_records(bytes(raw)) if len(r) >= 2)
    old = seeded_machine_sid("straddle-old")
    new = random_machine_sid(like=old)
    prefix = "C:\\Users\\Public\\AccountPictures\\".encode("utf-16-le")
    text = prefix + f"{old}-1001\\x.jpg".encode("utf-16-le")
    cut = len(prefix) + 10  # the SID's first 5 characters end the first segment, the rest begin the second
    boundary = first + 16344
    raw[boundary - cut : boundary] = text[:cut]
    raw[second : second + len(text) - cut] = text[cut:]
    path.write_bytes(raw)
    before = {
        (k.path(), v.name()): v.raw_data()
        for k in _keys(Registry.Registry(str(path)).root())
        for v in k.values()
        if len(v.raw_data()) > 16344
    }
    (key,) = [k for k, data in before.items() if text in data]
    res = scrub(path, old=old, new=new, all_cells=True)
    assert res.text_sids_replaced == 1
    after = Registry.Registry(str(path))
    node = after.open(key[0].split("\\", 1)[1])
    data = next(v.raw_data() for v in node.values() if v.name() == key[1])
    expected = before[key].replace(
        text, text.replace(str(old).encode("utf-16-le"), str(new).encode("utf-16-le"))
    )
    assert data == expected
    assert str(old).encode("utf-16-le") not in path.read_bytes()


def _keys(key: Any) -> list[Any]:
    out = [key]
    for sub in key.subkeys():
        out += _keys(sub)
    return out
