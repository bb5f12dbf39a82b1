"""A strict structural check of a registry hive file, in the style of a fsck (our own reader).

Checked, from the base block's root cell down: every referenced cell starts an allocated cell inside
the hive bins; key (nk), subkey lists (lf/lh/li/ri), value lists, values (vk), their data (inline, one
cell, or a big-data record ``db`` with its segment list), security (sk) and class-name cells are well
formed; subkey and value counts match the lists; no key is reached twice. Values over 16,344 bytes in a
format 1.4+ hive must be big-data records (Windows reads them only that way). The base block's
checksum, magic and sequence numbers (equal: a clean hive) and the hive bins' chain are checked too.
Allocated cells that nothing references are counted (``unreachable``): a writer must not add any.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from fleetcast.errors import HiveError

BASE = 4096
BIG_DATA_MIN_MINOR = 4
BIG_DATA_SEGMENT = 16344
NO_CELL = 0xFFFFFFFF


@dataclass
class FsckResult:
    keys: int = 0
    values: int = 0
    big_values: int = 0
    allocated: int = 0
    unreachable: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class _Reader:
    def __init__(self, data: bytes, minor: int) -> None:
        self.data = data
        self.minor = minor
        self.cells: dict[int, int] = {}  # offset (relative to the first hbin) -> size, allocated only
        self.reached: set[int] = set()
        self.res = FsckResult()

    def err(self, text: str) -> None:
        if len(self.res.errors) < 100:
            self.res.errors.append(text)

    def cell(self, off: int, what: str) -> bytes | None:
        """The body of the allocated cell at ``off`` (marked reached), or None after an error."""
        if off not in self.cells:
            self.err(f"{what}: offset {off:#x} is not an allocated cell")
            return None
        self.reached.add(off)
        start = BASE + off
        return self.data[start + 4 : start + self.cells[off]]

    def typed(self, off: int, what: str, sig: bytes, minimum: int) -> bytes | None:
        """The body of the cell at ``off`` when it has signature ``sig`` and ``minimum`` bytes."""
        body = self.cell(off, what)
        if body is not None and (len(body) < minimum or body[:2] != sig):
            self.err(f"{what} at {off:#x}: expected an {sig.decode()!r} cell, found {body[:2]!r}")
            return None
        return body

    def u32(self, body: bytes, at: int) -> int:
        return int(struct.unpack_from("<I", body, at)[0])

    def key(self, off: int, path: str, parent: int | None, seen: set[int]) -> None:
        if off in seen:
            self.err(f"key {path or '(root)'}: reached twice (a cycle)")
            return
        seen.add(off)
        body = self.typed(off, f"key {path or '(root)'}", b"nk", 76)
        if body is None:
            return
        self.res.keys += 1
        flags = struct.unpack_from("<H", body, 2)[0]
        name_len, class_len = struct.unpack_from("<HH", body, 72)
        if 76 + name_len > len(body):
            self.err(f"key {path} at {off:#x}: name of {name_len} bytes overruns its cell")
            return
        raw = body[76 : 76 + name_len]
        name = raw.decode("latin-1") if flags & 0x20 else raw.decode("utf-16-le", errors="replace")
        here = "" if parent is None else (f"{path}\\{name}" if path else name)
        if parent is not None and self.u32(body, 16) != parent:
            self.err(f"key {here}: parent {self.u32(body, 16):#x}, expected {parent:#x}")
        count, lst = self.u32(body, 20), self.u32(body, 28)
        subkeys = self.subkeys(lst, here) if count else []
        if count and len(subkeys) != count:
            self.err(f"key {here}: {count} subkeys declared, its list holds {len(subkeys)}")
        vcount, vlist = self.u32(body, 36), self.u32(body, 40)
        if vcount:
            self.values(vlist, vcount, here)
        sk = self.u32(body, 44)
        if sk != NO_CELL:
            self.security(sk, here)
        cls = self.u32(body, 48)
        if class_len and cls != NO_CELL:
            cb = self.cell(cls, f"key {here}: class name")
            if cb is not None and len(cb) < class_len:
                self.err(f"key {here}: class name of {class_len} bytes in a {len(cb)}-byte cell")
        for child in subkeys:
            self.key(child, here, off, seen)

    def subkeys(self, off: int, path: str, depth: int = 0) -> list[int]:
        body = self.cell(off, f"key {path}: subkey list")
        if body is None or len(body) < 4:
            return []
        sig = body[:2]
        (n,) = struct.unpack_from("<H", body, 2)
        width = 8 if sig in (b"lf", b"lh") else 4
        if sig not in (b"lf", b"lh", b"li", b"ri"):
            self.err(f"key {path}: subkey list at {off:#x} has signature {sig!r}")
            return []
        if 4 + n * width > len(body):
            self.err(f"key {path}: subkey list at {off:#x} of {n} entries overruns its cell")
            return []
        refs = [self.u32(body, 4 + i * width) for i in range(n)]
        if sig != b"ri":
            return refs
        if depth:
            self.err(f"key {path}: an index root (ri) inside an index root at {off:#x}")
            return []
        out: list[int] = []
        for r in refs:
            out += self.subkeys(r, path, depth + 1)
        return out

    def values(self, off: int, count: int, path: str) -> None:
        body = self.cell(off, f"key {path}: value list")
        if body is None:
            return
        if count * 4 > len(body):
            self.err(f"key {path}: value list of {count} entries overruns its {len(body)}-byte cell")
            return
        for i in range(count):
            self.value(self.u32(body, i * 4), path)

    def value(self, off: int, path: str) -> None:
        body = self.typed(off, f"key {path}: value", b"vk", 20)
        if body is None:
            return
        self.res.values += 1
        name_len, size, data_off = struct.unpack_from("<HII", body, 2)
        flags = struct.unpack_from("<H", body, 16)[0]
        raw = body[20 : 20 + name_len]
        name = raw.decode("latin-1") if flags & 1 else raw.decode("utf-16-le", errors="replace")
        what = f"value {path}\\{name or '(default)'}"
        if size & 0x80000000:
            if size & 0x7FFFFFFF > 4:
                self.err(f"{what}: inline data of {size & 0x7FFFFFFF} bytes (at most 4 fit)")
            return
        if size == 0:
            return
        data = self.cell(data_off, f"{what}: data")
        if data is None:
            return
        if data[:2] == b"db" and self.minor >= BIG_DATA_MIN_MINOR and size > BIG_DATA_SEGMENT:
            self.big(data, size, what)
            return
        if self.minor >= BIG_DATA_MIN_MINOR and size > BIG_DATA_SEGMENT:
            self.err(
                f"{what}: {size} bytes in one plain cell; a format 1.{self.minor} hive keeps values over "
                f"{BIG_DATA_SEGMENT} bytes as big-data (db) records"
            )
        if len(data) < size:
            self.err(f"{what}: {size} bytes declared in a {len(data)}-byte cell")

    def big(self, db: bytes, size: int, what: str) -> None:
        self.res.big_values += 1
        if len(db) < 8:
            self.err(f"{what}: big-data record too short")
            return
        (n,) = struct.unpack_from("<H", db, 2)
        need = -(-size // BIG_DATA_SEGMENT)
        if n != need:
            self.err(f"{what}: big-data record of {n} segments for {size} bytes, expected {need}")
        lst = self.cell(self.u32(db, 4), f"{what}: big-data segment list")
        if lst is None or len(lst) < n * 4:
            if lst is not None:
                self.err(f"{what}: big-data segment list overruns its cell")
            return
        for i in range(n):
            seg = self.cell(self.u32(lst, i * 4), f"{what}: big-data segment {i}")
            want = min(BIG_DATA_SEGMENT, size - i * BIG_DATA_SEGMENT)
            if seg is not None and len(seg) < want:
                self.err(f"{what}: big-data segment {i} holds {len(seg)} bytes, expected {want}")

    def security(self, off: int, path: str) -> None:
        if off in self.reached:
            return
        body = self.typed(off, f"key {path}: security descriptor", b"sk", 20)
        if body is None:
            return
        flink, blink = self.u32(body, 4), self.u32(body, 8)
        for link in (flink, blink):
            if link not in self.cells:
                self.err(f"key {path}: security cell at {off:#x} links to {link:#x}, not a cell")
        (sd_size,) = struct.unpack_from("<I", body, 16)
        if 20 + sd_size > len(body):
            self.err(f"key {path}: security descriptor of {sd_size} bytes overruns its cell")


def _bins(data: bytes, hbins_size: int, r: _Reader) -> None:
    end = BASE + hbins_size
    pos = BASE
    while pos < end:
        if data[pos : pos + 4] != b"hbin":
            r.err(f"expected 'hbin' at file offset {pos:#x}, found {data[pos : pos + 4]!r}")
            return
        (rel, size) = struct.unpack_from("<II", data, pos + 4)
        if rel != pos - BASE:
            r.err(f"hive bin at {pos:#x} says it is at {rel:#x}")
        if size < 4096 or size % 4096 or pos + size > end:
            r.err(f"hive bin at {pos:#x} has a bad size {size}")
            return
        cell = pos + 32
        while cell < pos + size:
            (csize,) = struct.unpack_from("<i", data, cell)
            length = abs(csize)
            if length < 8 or length % 8 or cell + length > pos + size:
                r.err(f"cell at file offset {cell:#x} has a bad size {csize}")
                return
            if csize < 0:
                r.cells[cell - BASE] = length
            cell += length
        pos += size


def fsck(path: Path) -> FsckResult:
    """Check ``path``; the result lists every problem found (empty ``errors``: the hive is sound)."""
    data = path.read_bytes()
    from fleetcast.identity.windows.hive import CHECKSUM_OFFSET, base_block_checksum

    if len(data) < BASE + 4096 or data[:4] != b"regf":
        raise HiveError(f"hive {path} is not a registry hive or is truncated ({len(data)} bytes)")
    seq1, seq2 = struct.unpack_from("<II", data, 4)
    _major, minor = struct.unpack_from("<II", data, 20)
    root, hbins_size = struct.unpack_from("<II", data, 36)
    r = _Reader(data, minor)
    if seq1 != seq2:
        r.err(f"base block: sequence numbers {seq1} and {seq2} differ (dirty)")
    if base_block_checksum(data[:BASE]) != struct.unpack_from("<I", data, CHECKSUM_OFFSET)[0]:
        r.err("base block: checksum wrong")
    if BASE + hbins_size > len(data):
        r.err(f"base block: hive bins of {hbins_size} bytes overrun the {len(data)}-byte file")
        return r.res
    _bins(data, hbins_size, r)
    r.key(root, "", None, set())
    r.res.allocated = len(r.cells)
    r.res.unreachable = sorted(set(r.cells) - r.reached)
    return r.res


def require_sound(path: Path, *, label: Path | None = None, max_unreachable: int | None = None) -> FsckResult:
    """fsck ``path`` and raise HiveError naming the first problems; ``max_unreachable`` bounds the
    allocated cells nothing references (the count in the hive before it was edited)."""
    res = fsck(path)
    errors = list(res.errors)
    if max_unreachable is not None and len(res.unreachable) > max_unreachable:
        errors.append(
            f"{len(res.unreachable)} allocated cells are unreachable, the original had {max_unreachable} "
            f"(leaked cells, first at {res.unreachable[0]:#x})"
        )
    if errors:
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        raise HiveError(
            f"hive {label or path} fails the structural check: {'; '.join(errors[:3])}{more}",
            hint="nothing was installed; report this with the hive attached",
        )
    return res
