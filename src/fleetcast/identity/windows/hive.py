"""Registry hives through hivex: checked opening, path helpers, and the raw-cell scrub pass.

Opening checks what hivex does not explain well (size, ``regf`` magic, base-block checksum, the
hive-bins size) and turns hivex's errno messages into errors a technician understands. Writing goes
through ``fleetcast.identity.windows.txn`` (temp copy -> reopen -> independent check -> rename).
"""

from __future__ import annotations

import functools
import itertools
import logging
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetcast.errors import HiveError
from fleetcast.identity.windows.sid import Sid, replace_binary, replace_text, replace_text_bytes

logger = logging.getLogger(__name__)

BASE_BLOCK_SIZE = 4096
HBIN_ALIGN = 4096
CHECKSUM_OFFSET = 508

REG_NONE = 0
REG_SZ = 1
REG_EXPAND_SZ = 2
REG_BINARY = 3
REG_DWORD = 4
REG_MULTI_SZ = 7
REG_QWORD = 11
STRING_TYPES = (REG_SZ, REG_EXPAND_SZ)


def base_block_checksum(block: bytes) -> int:
    """XOR of the first 127 little-endian dwords, with Windows' two special cases."""
    xsum = 0
    for (dword,) in struct.iter_unpack("<I", block[:CHECKSUM_OFFSET]):
        xsum ^= dword
    if xsum == 0xFFFFFFFF:
        return 0xFFFFFFFE
    if xsum == 0:
        return 1
    return xsum


@dataclass(frozen=True)
class BaseBlock:
    path: Path
    seq1: int
    seq2: int
    major: int
    minor: int
    hbins_size: int
    file_size: int
    checksum_ok: bool
    name: str

    @property
    def dirty(self) -> bool:
        return self.seq1 != self.seq2


USER_HIVE_NAMES = ("ntuser.dat", "usrclass.dat")


def _truncated_hint(path: Path) -> str:
    """RegBack holds machine hives only: a user hive comes back from a copy of the profile."""
    if path.name.lower() in USER_HIVE_NAMES:
        return "copy the hive again from its source, or restore the user's profile folder from a backup"
    return "copy the hive again from its source, or restore it from Windows\\System32\\config\\RegBack"


def read_base_block(path: Path) -> BaseBlock:
    """Parse and check a hive's base block; raise HiveError naming the problem."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            block = fh.read(BASE_BLOCK_SIZE)
    except FileNotFoundError as exc:
        raise HiveError(f"hive {path} does not exist") from exc
    except OSError as exc:
        raise HiveError(
            f"hive {path} cannot be read: {exc.strerror or exc}",
            hint="check the volume: run ntfsfix or chkdsk, or mount it again",
        ) from exc
    if len(block) < 4 or block[:4] != b"regf":
        found = block[:4].hex() if block else "an empty file"
        raise HiveError(f"{path} is not a registry hive: expected magic 'regf' at offset 0, found {found}")
    if size < BASE_BLOCK_SIZE + HBIN_ALIGN:
        raise HiveError(
            f"hive {path} is truncated: {size} bytes, a hive needs at least {BASE_BLOCK_SIZE + HBIN_ALIGN}",
            hint=_truncated_hint(path),
        )
    seq1, seq2 = struct.unpack_from("<II", block, 4)
    major, minor = struct.unpack_from("<II", block, 20)
    (hbins_size,) = struct.unpack_from("<I", block, 40)
    (stored,) = struct.unpack_from("<I", block, CHECKSUM_OFFSET)
    name = block[48:112].decode("utf-16-le", errors="replace").split("\0", 1)[0]
    if BASE_BLOCK_SIZE + hbins_size > size:
        raise HiveError(
            f"hive {path} is truncated: its header declares {BASE_BLOCK_SIZE + hbins_size} bytes, "
            f"the file has {size}",
            hint=_truncated_hint(path),
        )
    return BaseBlock(
        path=path,
        seq1=seq1,
        seq2=seq2,
        major=major,
        minor=minor,
        hbins_size=hbins_size,
        file_size=size,
        checksum_ok=base_block_checksum(block) == stored,
        name=name,
    )


def fix_checksum(path: Path) -> None:
    """Recompute the base block checksum in place (regipy's log replay leaves it stale)."""
    with path.open("r+b") as fh:
        block = fh.read(BASE_BLOCK_SIZE)
        fh.seek(CHECKSUM_OFFSET)
        fh.write(struct.pack("<I", base_block_checksum(block)))


@dataclass(frozen=True)
class Value:
    name: str
    type: int
    data: bytes

    def string(self) -> str:
        return decode_sz(self.data)

    def dword(self) -> int | None:
        if len(self.data) < 4:
            return None
        return int(struct.unpack_from("<I", self.data)[0])


def decode_sz(data: bytes) -> str:
    if len(data) % 2:
        data = data[:-1]
    return data.decode("utf-16-le", errors="replace").split("\0", 1)[0]


def encode_sz(text: str) -> bytes:
    return (text + "\0").encode("utf-16-le")


def encode_multi_sz(items: list[str]) -> bytes:
    return "".join(f"{s}\0" for s in items).encode("utf-16-le") + b"\0\0"


def decode_multi_sz(data: bytes) -> list[str]:
    text = data[: len(data) // 2 * 2].decode("utf-16-le", errors="replace")
    return [s for s in text.split("\0") if s]


@functools.cache
def _hivex_class(hivex: Any) -> Any:
    """hivex.Hivex whose destructor does not fail when opening failed (an unraisable
    AttributeError that pytest turns into an error)."""

    class SafeHivex(hivex.Hivex):  # type: ignore[misc]
        def __del__(self) -> None:
            if hasattr(self, "_o"):
                super().__del__()

    return SafeHivex


class _Checked:
    """A hivex handle whose failures (RuntimeError from a damaged subkey list, value or cell met
    after opening) are HiveErrors naming the hive."""

    def __init__(self, h: Any, path: Path) -> None:
        self._h = h
        self._path = path

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self._h, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except RuntimeError as exc:
                raise HiveError(
                    f"hive {self._path} is damaged: hivex {name} failed ({exc})",
                    hint="nothing was written; restore this hive from a backup "
                    "(Windows\\System32\\config\\RegBack) or let Windows repair it, then retry",
                ) from exc

        return call


class Hive:
    """One hive opened with hivex. Paths are backslash-separated, relative to the hive root,
    matched case-insensitively (as Windows does)."""

    def __init__(self, path: Path, *, write: bool = False, label: Path | None = None) -> None:
        """Open ``path``; errors name ``label`` (the hive on the volume when ``path`` is a working copy)."""
        self.path = label or path
        try:
            self.base = read_base_block(path)
        except HiveError as exc:
            if label is None:
                raise
            raise HiveError(exc.message.replace(str(path), str(label)), hint=exc.hint) from exc
        try:
            import hivex
        except ImportError as exc:  # pragma: no cover - environment problem
            raise HiveError(
                "the hivex Python module is not available", hint="apt-get install python3-hivex"
            ) from exc
        try:
            self._raw: Any = _hivex_class(hivex)(str(path), write=write)
            self._raw.root()
        except (RuntimeError, OSError) as exc:
            raise HiveError(
                f"hive {self.path} is damaged: hivex cannot parse it ({exc})",
                hint="nothing was written; restore this hive from a backup "
                "(Windows\\System32\\config\\RegBack) or let Windows repair it, then retry",
            ) from exc
        self.h: Any = _Checked(self._raw, self.path)
        self.write = write
        self.changed = False

    # -- reading
    def root(self) -> int:
        return int(self.h.root())

    def node(self, path: str) -> int | None:
        node = self.root()
        for part in [p for p in path.split("\\") if p]:
            child = self.child(node, part)
            if child is None:
                return None
            node = child
        return node

    def child(self, node: int, name: str) -> int | None:
        found = self.h.node_get_child(node, name)
        if found:
            return int(found)
        low = name.lower()
        for c in self.h.node_children(node):
            if self.h.node_name(c).lower() == low:
                return int(c)
        return None

    def name(self, node: int) -> str:
        return str(self.h.node_name(node))

    def children(self, node: int) -> list[int]:
        return [int(c) for c in self.h.node_children(node)]

    def parent(self, node: int) -> int:
        return int(self.h.node_parent(node))

    def values(self, node: int) -> list[Value]:
        out = []
        for v in self.h.node_values(node):
            t, data = self.h.value_value(v)
            out.append(Value(str(self.h.value_key(v)), int(t), bytes(data)))
        return out

    def value(self, node: int, name: str) -> Value | None:
        low = name.lower()
        for v in self.values(node):
            if v.name.lower() == low:
                return v
        return None

    def get(self, path: str, name: str) -> Value | None:
        node = self.node(path)
        return None if node is None else self.value(node, name)

    def get_string(self, path: str, name: str) -> str | None:
        v = self.get(path, name)
        return v.string() if v is not None and v.type in (*STRING_TYPES, REG_MULTI_SZ) else None

    def get_dword(self, path: str, name: str) -> int | None:
        v = self.get(path, name)
        return v.dword() if v is not None and v.type in (REG_DWORD, REG_BINARY, REG_NONE) else None

    def walk(self, node: int | None = None, path: str = "") -> Iterator[tuple[str, int]]:
        """Every key below ``node`` (inclusive) as (path, node), parents first."""
        node = self.root() if node is None else node
        yield path, node
        for c in self.children(node):
            yield from self.walk(c, f"{path}\\{self.name(c)}" if path else self.name(c))

    def dump(self) -> dict[str, dict[str, tuple[int, bytes]]]:
        """Every key and value, for before/after comparisons."""
        return {p.lower(): {v.name: (v.type, v.data) for v in self.values(n)} for p, n in self.walk()}

    # -- writing
    def _need_write(self) -> None:
        if not self.write:
            raise HiveError(f"hive {self.path} was opened read-only")

    def set_value(self, node: int, name: str, type_: int, data: bytes) -> None:
        """Set one value, keeping the spelling of an existing name."""
        self._need_write()
        existing = self.value(node, name)
        key = existing.name if existing is not None else name
        self.h.node_set_value(node, {"key": key, "t": type_, "value": data})
        self.changed = True

    def set_values(self, node: int, values: list[Value]) -> None:
        self._need_write()
        self.h.node_set_values(node, [{"key": v.name, "t": v.type, "value": v.data} for v in values])
        self.changed = True

    def delete_value(self, node: int, name: str) -> bool:
        self._need_write()
        low = name.lower()
        vals = self.values(node)
        keep = [v for v in vals if v.name.lower() != low]
        if len(keep) == len(vals):
            return False
        self.set_values(node, keep)
        return True

    def add_key(self, parent: int, name: str) -> int:
        self._need_write()
        existing = self.child(parent, name)
        if existing is not None:
            return existing
        self.changed = True
        return int(self.h.node_add_child(parent, name))

    def ensure_path(self, path: str) -> int:
        node = self.root()
        for part in [p for p in path.split("\\") if p]:
            node = self.add_key(node, part)
        return node

    def delete_key(self, node: int) -> None:
        self._need_write()
        self.h.node_delete_child(node)
        self.changed = True

    def _copy_tree(self, src: int, dst_parent: int, name: str) -> int:
        new = int(self.h.node_add_child(dst_parent, name))
        vals = self.values(src)
        if vals:
            self.set_values(new, vals)
        for c in self.children(src):
            self._copy_tree(c, new, self.name(c))
        return new

    def rename_key(self, node: int, new_name: str) -> int:
        """hivex cannot rename: copy the subtree under the new name, then delete the old one.
        Values and their types are kept; the copy takes its parent's security descriptor."""
        self._need_write()
        parent = self.parent(node)
        if self.child(parent, new_name) is not None:
            raise HiveError(f"hive {self.path}: cannot rename {self.name(node)!r}: {new_name!r} exists")
        new = self._copy_tree(node, parent, new_name)
        self.delete_key(node)
        self.changed = True
        return new

    def commit(self, dest: Path) -> None:
        self._need_write()
        try:
            self._raw.commit(str(dest))
        except (RuntimeError, OSError) as exc:
            raise HiveError(f"hive {self.path}: writing {dest} failed: {exc}") from exc


def rewrite_sids(hive: Hive, old: Sid, new: Sid, *, under: str = "", in_place: bool = False) -> list[str]:
    """Replace ``old`` (the machine SID, and its accounts' SIDs) by ``new`` in every value below
    ``under`` -- binary SIDs in place, SID text in string values -- and rename keys named after
    them. Value types are kept exactly. Returns one line per changed value or renamed key.

    With ``in_place``, values whose only change is a binary SID (same length) are NOT set through
    hivex: the caller's raw pass (``scrub(..., all_cells=True)``) replaces those bytes in their cells
    after the commit. Setting one value through hivex rewrites every value of its key (a big-data
    ``UserTile`` would come back as one plain cell, its old cells leaked); in place, every value keeps
    its vk cell, its data cells and its bytes except the SID's."""
    start = hive.node(under) if under else hive.root()
    if start is None:
        return []
    changes: list[str] = []
    renames: list[tuple[str, int, str]] = []
    for path, node in list(hive.walk(start, under)):
        vals = hive.values(node)
        new_vals: list[Value] = []
        touched: list[str] = []
        resized = False
        for v in vals:
            data, n = replace_binary(v.data, old, new)
            if v.type in (REG_SZ, REG_EXPAND_SZ, REG_MULTI_SZ) and len(v.data) % 2 == 0:
                text = data.decode("utf-16-le", errors="surrogatepass")
                text2, m = replace_text(text, old, new)
                if m:
                    data = text2.encode("utf-16-le", errors="surrogatepass")
                    n += m
                    # same-length text is rewritten in place by the raw pass too
                    resized = resized or len(text2) != len(text)
            new_vals.append(Value(v.name, v.type, data))
            if n:
                touched.append(v.name or "(default)")
        if touched and (resized or not in_place):
            hive.set_values(node, new_vals)
        if touched:
            changes.append(f"{path}: {', '.join(touched)}: {old} -> {new}")
        name = hive.name(node)
        renamed, m = replace_text(name, old, new)
        if m and node != start:
            renames.append((path, node, renamed))
    for path, node, renamed in reversed(renames):  # deepest first: parents' node ids stay valid
        hive.rename_key(node, renamed)
        changes.append(f"{path}: key renamed to {renamed}")
    return changes


@dataclass
class ScrubResult:
    free_cells_zeroed: int = 0
    sk_sids_replaced: int = 0
    other_sids_replaced: int = 0
    fragments_replaced: int = 0
    text_sids_replaced: int = 0


def scrub(path: Path, *, old: Sid | None, new: Sid | None, all_cells: bool) -> ScrubResult:
    """Raw pass over a committed hive: zero every free cell (so replaced data is gone), and
    replace binary SIDs of ``old``'s domain by ``new``'s in security-descriptor (sk) cells -- or in
    every allocated cell when ``all_cells`` (SAM, SECURITY: slack space of live cells too, where
    even a SID's domain words without their header, a fragment of older data, are replaced).
    Only cell contents change, never sizes, so the hive structure is untouched."""
    res = ScrubResult()
    words_old = words_new = b""
    if old is not None and new is not None:
        words_old = struct.pack("<3I", *old.subauthorities[1:])
        words_new = struct.pack("<3I", *new.subauthorities[1:])
    data = bytearray(path.read_bytes())
    big_cells: list[int] = []  # allocated "db" cells: their boundaries are searched for SID text
    (hbins_size,) = struct.unpack_from("<I", data, 40)
    end = min(len(data), BASE_BLOCK_SIZE + hbins_size)
    pos = BASE_BLOCK_SIZE
    while pos + 32 <= end:
        if data[pos : pos + 4] != b"hbin":
            raise HiveError(f"hive {path}: expected 'hbin' at offset {pos:#x}, found {data[pos : pos + 4]!r}")
        (hsize,) = struct.unpack_from("<I", data, pos + 8)
        if hsize < HBIN_ALIGN or pos + hsize > end:
            raise HiveError(f"hive {path}: hive bin at {pos:#x} has a bad size {hsize}")
        cell = pos + 32
        while cell + 4 <= pos + hsize:
            (csize,) = struct.unpack_from("<i", data, cell)
            length = abs(csize)
            if length < 8 or cell + length > pos + hsize:
                raise HiveError(f"hive {path}: cell at {cell:#x} has a bad size {csize}")
            body = slice(cell + 4, cell + length)
            if csize > 0:
                if any(data[body]):
                    data[body] = bytes(length - 4)
                    res.free_cells_zeroed += 1
            elif old is not None and new is not None:
                is_sk = data[cell + 4 : cell + 6] == b"sk"
                is_big = data[cell + 4 : cell + 6] == b"db" and length >= 12
                if is_sk or all_cells:
                    replaced, n = replace_binary(bytes(data[body]), old, new)
                    if n:
                        data[body] = replaced
                        if is_sk:
                            res.sk_sids_replaced += n
                        else:
                            res.other_sids_replaced += n
                    if all_cells:  # SID text (UTF-16/ANSI, same length only) inside any value
                        replaced, n = replace_text_bytes(bytes(data[body]), old, new)
                        if n:
                            data[body] = replaced
                            res.text_sids_replaced += n
                    if all_cells and words_old in data[body]:
                        res.fragments_replaced += data[body].count(words_old)
                        data[body] = data[body].replace(words_old, words_new)
                    if all_cells and is_big:
                        big_cells.append(cell)
            cell += length
        pos += hsize
    if old is not None and new is not None:
        for db in big_cells:
            res.text_sids_replaced += _straddling_text(data, db, end, old, new)
    with path.open("r+b") as fh:
        fh.write(data)
    return res


BIG_SEGMENT = 16344  # bytes of a value's data in each big-data segment but the last


def _straddling_text(data: bytearray, db: int, end: int, old: Sid, new: Sid) -> int:
    """SID text that crosses from one big-data segment into the next: the per-cell pass cannot see
    it. A window around each boundary (the end of a segment's 16,344 bytes of data, the start of the
    next segment's) is searched and written back in place. Bounds are checked; a malformed record
    is left alone (fsck reports it)."""
    width = 2 * len(str(old)) + 2  # the UTF-16 text and the character after it (not a digit)

    def u32(at: int) -> int | None:
        return int(struct.unpack_from("<I", data, at)[0]) if at >= BASE_BLOCK_SIZE and at + 4 <= end else None

    (count,) = struct.unpack_from("<H", data, db + 6)
    lst = u32(db + 8)
    if lst is None:
        return 0
    segs = [u32(BASE_BLOCK_SIZE + lst + 4 + 4 * i) for i in range(count)]
    starts = [BASE_BLOCK_SIZE + s + 4 for s in segs if s is not None]
    if len(starts) != count:
        return 0
    n = 0
    for a, b in itertools.pairwise(starts):
        a_end = a + BIG_SEGMENT
        if a_end > end or b + width > end:
            continue
        left, right = bytes(data[a_end - width : a_end]), bytes(data[b : b + width])
        replaced, m = replace_text_bytes(left + right, old, new)
        if m:
            data[a_end - width : a_end], data[b : b + width] = replaced[:width], replaced[width:]
            n += m
    return n
