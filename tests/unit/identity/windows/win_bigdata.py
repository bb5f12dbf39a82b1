"""Store a value as a big-data (``db``) record in a real hive, as Windows writes one (hivex cannot:
it writes any value as one plain cell). Used to give a real format-1.5 SAM the 32 KB ``UserTile``
that no published SAM with a licence has. Parsed and written here, not with the product's code."""

from __future__ import annotations

import struct
from pathlib import Path

from fleetcast.identity.windows.hive import REG_BINARY, Hive, fix_checksum

SEGMENT = 16344  # data bytes of each big-data segment but the last
HBIN = 4096
BASE = 4096


def _cell(payload: bytes) -> bytes:
    """An allocated cell: negative size (payload + 4, rounded up to 8), then the payload."""
    size = (len(payload) + 4 + 7) // 8 * 8
    return struct.pack("<i", -size) + payload + bytes(size - 4 - len(payload))


def _vk_of(raw: bytes, name: str, nk: int) -> int:
    """The vk cell (hive offset) of value ``name`` of key cell ``nk`` (hive offset)."""
    count, lst = struct.unpack_from("<II", raw, BASE + nk + 4 + 0x24)
    for i in range(count):
        (vk,) = struct.unpack_from("<I", raw, BASE + lst + 4 + 4 * i)
        (nlen,) = struct.unpack_from("<H", raw, BASE + vk + 4 + 2)
        if raw[BASE + vk + 4 + 0x14 : BASE + vk + 4 + 0x14 + nlen].decode("latin-1") == name:
            return vk
    raise AssertionError(f"value {name!r} not found in the key at {nk:#x}")


def graft_big_value(path: Path, key: str, name: str, data: bytes) -> None:
    """Set ``key``'s value ``name`` (REG_BINARY) to ``data`` (> 16,344 bytes) stored as Windows does in a
    format 1.4+ hive: a db record, its segment list and one cell per segment, in a new hive bin at the
    end; the placeholder hivex wrote is freed, so nothing is left unreferenced."""
    assert len(data) > SEGMENT
    h = Hive(path, write=True)
    node = h.node(key)
    assert node is not None, key
    h.set_value(node, name, REG_BINARY, b"placeholder")
    h.commit(path)
    raw = bytearray(path.read_bytes())
    node = Hive(path).node(key)
    assert node is not None, key
    nk = int(node) - BASE  # hivex node handles are file offsets of the nk cell
    vk = _vk_of(bytes(raw), name, nk)
    (hbins_size,) = struct.unpack_from("<I", raw, 0x28)
    start = hbins_size  # hive offset of the new bin
    segs = [data[i : i + SEGMENT] for i in range(0, len(data), SEGMENT)]
    body = bytearray()
    seg_offs = []
    at = start + 32 + 16  # db cell (16 bytes) first
    list_cell = _cell(bytes(4 * len(segs)))
    at += len(list_cell)
    for s in segs:
        seg_offs.append(at)
        at += len(_cell(s))
    db = _cell(b"db" + struct.pack("<HI", len(segs), start + 32 + 16) + bytes(4))
    assert len(db) == 16
    body += db + _cell(struct.pack(f"<{len(segs)}I", *seg_offs))
    for s in segs:
        body += _cell(s)
    total = (32 + len(body) + 8 + HBIN - 1) // HBIN * HBIN
    free = total - 32 - len(body)
    body += struct.pack("<i", free) + bytes(free - 4)
    hbin = b"hbin" + struct.pack("<II", start, total) + bytes(20)
    # the placeholder's data cell is freed (its size made positive), the vk points at the db record
    (_len, old_data) = struct.unpack_from("<II", raw, BASE + vk + 4 + 4)
    (csize,) = struct.unpack_from("<i", raw, BASE + old_data)
    struct.pack_into("<i", raw, BASE + old_data, abs(csize))
    struct.pack_into("<II", raw, BASE + vk + 4 + 4, len(data), start + 32)
    struct.pack_into("<I", raw, 0x28, hbins_size + total)
    path.write_bytes(bytes(raw[: BASE + hbins_size]) + hbin + bytes(body))
    fix_checksum(path)


def big_record(path: Path, key: str, name: str) -> tuple[int, int, list[int]]:
    """(vk offset, db offset, segment cell offsets) of a value stored as a big-data record."""
    raw = path.read_bytes()
    h = Hive(path)
    node = h.node(key)
    assert node is not None, key
    vk = _vk_of(raw, name, int(node) - BASE)
    (_len, db) = struct.unpack_from("<II", raw, BASE + vk + 4 + 4)
    assert raw[BASE + db + 4 : BASE + db + 6] == b"db", f"{key}\\{name} is not a big-data record"
    count, lst = struct.unpack_from("<HI", raw, BASE + db + 6)
    segs = list(struct.unpack_from(f"<{count}I", raw, BASE + lst + 4))
    return vk, db, segs


def value_layout(path: Path) -> dict[tuple[str, str], tuple[int, int, bytes]]:
    """(key path in lower case, value name) -> (vk cell, type, data) of every value, through hivex."""
    h = Hive(path)
    out = {}
    for key, node in h.walk():
        for v in h.h.node_values(node):
            t, data = h.h.value_value(v)
            out[(key.lower(), str(h.h.value_key(v)))] = (int(v), int(t), bytes(data))
    return out


def allocated_cells(raw: bytes, sig: bytes) -> list[bytes]:
    """The bodies of every allocated cell whose signature is ``sig`` (b"sk", b"db", ...)."""
    out = []
    pos = BASE
    while raw[pos : pos + 4] == b"hbin":
        (size,) = struct.unpack_from("<I", raw, pos + 8)
        cell = pos + 32
        while cell < pos + size:
            (csize,) = struct.unpack_from("<i", raw, cell)
            if csize < 0 and raw[cell + 4 : cell + 6] == sig:
                out.append(raw[cell + 4 : cell - csize])
            cell += abs(csize)
        pos += size
    return out


def mark_clean(path: Path) -> None:
    """Make the base block's second sequence number equal the first (a hive published dirty without
    its logs, whose file is otherwise sound) and fix the checksum."""
    raw = bytearray(path.read_bytes())
    raw[8:12] = raw[4:8]
    path.write_bytes(bytes(raw))
    fix_checksum(path)
