"""Transaction-log replay of our own, by the format's rules (issue 13 finding 2).

A dirty hive (its base block's primary and secondary sequence numbers differ, or its checksum is
wrong) has changes that only its logs hold. Windows replays them at load; fleetcast replays them into
a copy before it edits the hive, following the rules of the registry format (M. Suhanov, "Windows
registry file format specification", and how Windows 8.1+/7 recover: the tests compare our result
with the hives Windows 10 and Windows 7 recovered themselves):

New format (Windows 8.1+, log file type 6): log entries ``HvLE`` from offset 512, each
{size, flags, sequence, hive bins data size, page count, Marvin32 hash of the pages part, Marvin32
hash of the header}, then page references {offset, size} and the pages. A log's entries are read
from its base block's sequence number on, each the previous plus one; the first entry whose
signature, size, hive bins data size, page count, hashes or sequence is wrong ends the log (what
follows is old or torn data). Two logs: the one with the lower sequence number goes first; it is
applied only if it is not older than the hive's secondary sequence number (else it is stale and only
the other is applied); the second follows only if its sequence number continues the first one's
last entry. With a wrong base-block checksum only the newer log is applied (as Windows does).

Old format (log file type 1 or 2): the log's base block (valid, sequence numbers equal, written
no earlier than the hive's), a dirty vector ``DIRT`` + one bit per 512-byte page of the hive bins
data, then the dirty pages in bit order. One log is applied: the newest eligible one.

Every byte position is checked before it is used (a log is input from a disk), and what was applied
and why a log or the rest of a log was left is said in ``Replayed.notes``. The result gets equal
sequence numbers (the last entry's), the hive bins data size of the last entry, file type 0 and a
fresh checksum; ``fsck`` and the readers check it before anything is built on it (logs.py).
"""

from __future__ import annotations

import array
import hashlib
import itertools
import struct
import sys
from dataclasses import dataclass, field

from fleetcast.errors import HiveError

BASE_BLOCK_SIZE = 4096
LOG_BASE_SIZE = 512
HBIN_ALIGN = 4096
PAGE = 512
MARVIN_SEED = 0x82EF4D887A4E55C5  # 14219357686671994754, the format's seed
FILE_TYPE_PRIMARY = 0
FILE_TYPES_OLD = (1, 2)
FILE_TYPE_NEW = 6
ENTRY_HEADER = 40
_M32 = 0xFFFFFFFF


def marvin32(data: bytes, seed: int = MARVIN_SEED) -> int:
    """The Marvin32 hash (as .NET and the registry's log entries compute it). The tail (0-3 bytes
    and the 0x80 end marker) is one last word, followed by a zero word: the two final mixing rounds.
    Pure Python, about 1-2 MB/s (the mask is a local: a global lookup per step costs a third more)."""
    m = _M32
    lo, hi = seed & m, seed >> 32
    end = len(data) - len(data) % 4
    rest = data[end:]
    words = array.array("I")
    words.frombytes(data[:end])
    if sys.byteorder != "little":
        words.byteswap()
    tail = (0x80 << (8 * len(rest))) | int.from_bytes(rest, "little")
    for v in itertools.chain(words, (tail, 0)):
        lo = (lo + v) & m
        hi ^= lo
        lo = ((lo << 20) | (lo >> 12)) & m
        lo = (lo + hi) & m
        hi = ((hi << 9) | (hi >> 23)) & m
        hi ^= lo
        lo = ((lo << 27) | (lo >> 5)) & m
        lo = (lo + hi) & m
        hi = ((hi << 19) | (hi >> 13)) & m
    return (hi << 32) | lo


def checksum(block: bytes) -> int:
    """The base block checksum: XOR of its first 127 dwords (0 -> 1, 0xFFFFFFFF -> 0xFFFFFFFE)."""
    x = 0
    for (v,) in struct.iter_unpack("<I", block[:508]):
        x ^= v
    return 1 if x == 0 else 0xFFFFFFFE if x == _M32 else x


@dataclass(frozen=True)
class Base:
    """The fields of a base block that replay needs."""

    seq1: int
    seq2: int
    timestamp: int
    file_type: int
    hbins_size: int
    checksum_ok: bool

    @classmethod
    def parse(cls, data: bytes, what: str) -> Base:
        if len(data) < LOG_BASE_SIZE or data[:4] != b"regf":
            raise HiveError(f"{what}: no 'regf' base block")
        seq1, seq2, ts = struct.unpack_from("<IIQ", data, 4)
        ftype, hbins = struct.unpack_from("<I", data, 28)[0], struct.unpack_from("<I", data, 40)[0]
        ok = struct.unpack_from("<I", data, 508)[0] == checksum(data[:512])
        return cls(seq1, seq2, ts, ftype, hbins, ok)


@dataclass(frozen=True)
class Entry:
    seq: int
    hbins_size: int
    pages: tuple[tuple[int, int, int], ...]  # (offset in the hive bins data, offset in the log, size)


@dataclass
class Log:
    name: str
    data: bytes
    base: Base
    entries: list[Entry] = field(default_factory=list)
    end: str = ""  # why the entries stop


def _seq_before(a: int, b: int) -> bool:
    """``a`` comes before ``b`` (32-bit sequence numbers that may wrap)."""
    return a != b and ((b - a) & _M32) <= 0x7FFFFFFF


def new_entries(data: bytes, first_seq: int) -> tuple[list[Entry], str]:
    """The consecutive valid log entries from offset 512, and why they end."""
    out: list[Entry] = []
    off, expected = LOG_BASE_SIZE, first_seq
    while True:
        where = f"offset {off}"
        if off + ENTRY_HEADER > len(data):
            return out, f"end of file at {where}"
        if data[off : off + 4] != b"HvLE":
            return out, f"no entry at {where}" if data[
                off : off + 4
            ] == b"\0" * 4 else f"no 'HvLE' at {where}"
        size, _flags, seq, hbins, count = struct.unpack_from("<IIIII", data, off + 4)
        h1, h2 = struct.unpack_from("<QQ", data, off + 24)
        if size < PAGE or size % PAGE or off + size > len(data):
            return out, f"entry at {where}: size {size} is not a multiple of 512 inside the file"
        if hbins < HBIN_ALIGN or hbins % HBIN_ALIGN:
            return out, f"entry at {where}: hive bins data size {hbins} is not a multiple of 4096"
        if count == 0 or ENTRY_HEADER + 8 * count > size:
            return out, f"entry at {where}: {count} pages do not fit its {size} bytes"
        if marvin32(data[off : off + 32]) != h2 or marvin32(data[off + ENTRY_HEADER : off + size]) != h1:
            return out, f"entry at {where} (sequence {seq}): its hashes do not match (torn or overwritten)"
        if seq != expected:
            return out, f"entry at {where}: sequence {seq} where {expected} was next"
        pages: list[tuple[int, int, int]] = []
        pos = off + ENTRY_HEADER + 8 * count
        for i in range(count):
            p_off, p_size = struct.unpack_from("<II", data, off + ENTRY_HEADER + 8 * i)
            if (
                p_size == 0
                or p_size % PAGE
                or p_off % PAGE
                or p_off + p_size > hbins
                or pos + p_size > off + size
            ):
                return out, f"entry at {where} (sequence {seq}): page {i} ({p_off}+{p_size}) is out of bounds"
            pages.append((p_off, pos, p_size))
            pos += p_size
        out.append(Entry(seq, hbins, tuple(pages)))
        off += size
        expected = (expected + 1) & _M32


def old_pages(data: bytes, hbins: int) -> list[tuple[int, int]]:
    """(offset in the hive bins data, offset in the log) of each dirty page of an old-format log."""
    if hbins < HBIN_ALIGN or hbins % HBIN_ALIGN:
        raise HiveError(f"hive bins data size {hbins} is not a multiple of 4096")
    if data[LOG_BASE_SIZE : LOG_BASE_SIZE + 4] != b"DIRT":
        raise HiveError("no 'DIRT' dirty vector at offset 512")
    bitmap = data[LOG_BASE_SIZE + 4 : LOG_BASE_SIZE + 4 + hbins // HBIN_ALIGN]
    if len(bitmap) < hbins // HBIN_ALIGN:
        raise HiveError("the dirty vector is cut off")
    start = LOG_BASE_SIZE + 4 + len(bitmap)
    pos = start + (-start) % PAGE
    out: list[tuple[int, int]] = []
    for byte_i, byte in enumerate(bitmap):
        for bit in range(8):
            if byte >> bit & 1:
                if pos + PAGE > len(data):
                    raise HiveError(f"dirty page {len(out)} is cut off at offset {pos}")
                out.append(((byte_i * 8 + bit) * PAGE, pos))
                pos += PAGE
    if not out:
        raise HiveError("the dirty vector marks no page")
    return out


@dataclass(frozen=True)
class Replayed:
    data: bytes
    applied: tuple[str, ...]  # names of the logs applied, in order
    entries: int  # log entries applied (new format); 0 for an old-format log
    pages: int
    seq: int
    notes: tuple[str, ...]


def _read_log(name: str, data: bytes) -> Log | str:
    """A log, or why it cannot be used."""
    try:
        base = Base.parse(data, name)
    except HiveError as exc:
        return exc.message
    if not base.checksum_ok:
        return f"{name}: its base block checksum is wrong"
    if base.seq1 != base.seq2:
        return f"{name}: its base block is dirty itself (sequence {base.seq1}/{base.seq2})"
    if base.file_type not in (*FILE_TYPES_OLD, FILE_TYPE_NEW):
        return f"{name}: file type {base.file_type} is not a transaction log"
    log = Log(name, data, base)
    if base.file_type == FILE_TYPE_NEW:
        log.entries, log.end = new_entries(data, base.seq1)
        if not log.entries:
            return f"{name}: no valid log entry ({log.end})"
    return log


_CACHE: dict[bytes, Replayed] = {}
_CACHE_SIZE = 2


def replay(hive: bytes, logs: list[tuple[str, bytes]]) -> Replayed:
    """Apply ``logs`` (name, content; LOG1 before LOG2) to the dirty ``hive``; HiveError when none applies.

    The same inputs give the same result, which is kept for the next call (inspect, then personalize,
    read the same dirty hive in one run: Marvin32 in Python costs about 0.4 s per MB of log)."""
    key = hashlib.sha256(hive)
    for name, data in logs:
        key.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    digest = key.digest()
    if digest in _CACHE:
        return _CACHE[digest]
    result = _replay(hive, logs)
    while len(_CACHE) >= _CACHE_SIZE:
        del _CACHE[next(iter(_CACHE))]
    _CACHE[digest] = result
    return result


def _replay(hive: bytes, logs: list[tuple[str, bytes]]) -> Replayed:
    primary = Base.parse(hive, "hive")
    if len(hive) < BASE_BLOCK_SIZE:
        raise HiveError(f"the hive is {len(hive)} bytes, shorter than its base block")
    notes: list[str] = []
    usable: list[Log] = []
    for name, data in logs:
        got = _read_log(name, data)
        if isinstance(got, str):
            notes.append(f"{got}; not applied")
        else:
            usable.append(got)
    new = [lg for lg in usable if lg.base.file_type == FILE_TYPE_NEW]
    old = [lg for lg in usable if lg.base.file_type != FILE_TYPE_NEW]
    if new:
        return _replay_new(hive, primary, new, notes)
    if old:
        return _replay_old(hive, primary, old, notes)
    raise HiveError("no transaction log can be applied: " + "; ".join(notes or ["none given"]))


def _finish(out: bytearray, base_from: bytes, seq: int, hbins: int) -> bytes:
    block = bytearray(base_from[:BASE_BLOCK_SIZE].ljust(BASE_BLOCK_SIZE, b"\0"))
    struct.pack_into("<II", block, 4, seq, seq)
    struct.pack_into("<I", block, 28, FILE_TYPE_PRIMARY)
    struct.pack_into("<I", block, 40, hbins)
    struct.pack_into("<I", block, 508, checksum(bytes(block[:512])))
    out[:BASE_BLOCK_SIZE] = block
    return bytes(out)


def _resized(hive: bytes, hbins: int) -> bytearray:
    """The hive grown to hold ``hbins`` bytes of hive bins data; a longer file keeps its length (as
    Windows keeps it: the Windows 10 recovery of the test hive is byte-identical from offset 4096)."""
    out = bytearray(hive)
    out.extend(b"\0" * max(0, BASE_BLOCK_SIZE + hbins - len(out)))
    return out


def _replay_new(hive: bytes, primary: Base, logs: list[Log], notes: list[str]) -> Replayed:
    logs = list(logs)  # LOG1, LOG2; the lower sequence number goes first
    if len(logs) == 2 and _seq_before(logs[1].base.seq1, logs[0].base.seq1):
        logs.reverse()
    chain: list[Log] = []
    if not primary.checksum_ok:
        chain = [logs[-1]]  # Windows takes the newer log alone when the hive's base block is bad
        notes.append(
            f"the hive's base block checksum is wrong: only {logs[-1].name}, the newer log, is applied"
        )
    else:
        for lg in logs:
            if not chain:
                if _seq_before(lg.base.seq1, primary.seq2):
                    notes.append(
                        f"{lg.name}: stale (sequence {lg.base.seq1}, the hive was written up to "
                        f"{primary.seq2}); not applied"
                    )
                    continue
                chain.append(lg)
            elif lg.base.seq1 == (chain[-1].entries[-1].seq + 1) & _M32:
                chain.append(lg)
            else:
                notes.append(
                    f"{lg.name}: sequence {lg.base.seq1} does not continue {chain[-1].name} "
                    f"(its last entry is {chain[-1].entries[-1].seq}); not applied"
                )
    if not chain:
        raise HiveError("no transaction log can be applied: " + "; ".join(notes))
    hbins = chain[-1].entries[-1].hbins_size
    out = _resized(hive, hbins)
    entries = pages = 0
    for lg in chain:
        for e in lg.entries:
            need = BASE_BLOCK_SIZE + e.hbins_size
            if len(out) < need:
                out.extend(b"\0" * (need - len(out)))
            for p_off, l_off, size in e.pages:
                out[BASE_BLOCK_SIZE + p_off : BASE_BLOCK_SIZE + p_off + size] = lg.data[l_off : l_off + size]
            pages += len(e.pages)
        entries += len(lg.entries)
        first, last = lg.entries[0].seq, lg.entries[-1].seq
        notes.append(f"{lg.name}: entries {first}-{last} applied ({lg.end})")
    base_from = hive if primary.checksum_ok else chain[-1].data[:LOG_BASE_SIZE]
    seq = chain[-1].entries[-1].seq
    return Replayed(
        _finish(out, base_from, seq, hbins), tuple(lg.name for lg in chain), entries, pages, seq, tuple(notes)
    )


def _replay_old(hive: bytes, primary: Base, logs: list[Log], notes: list[str]) -> Replayed:
    eligible = []
    for lg in logs:
        if primary.checksum_ok and lg.base.timestamp < primary.timestamp:
            notes.append(f"{lg.name}: written before the hive (an older log); not applied")
        else:
            eligible.append(lg)
    if not eligible:
        raise HiveError("no transaction log can be applied: " + "; ".join(notes))
    lg = max(eligible, key=lambda x: x.base.timestamp)
    try:
        dirty = old_pages(lg.data, lg.base.hbins_size)
    except HiveError as exc:
        raise HiveError(f"{lg.name}: {exc.message}") from exc
    hbins = lg.base.hbins_size
    out = _resized(hive, hbins)
    for p_off, l_off in dirty:
        if p_off + PAGE > hbins:
            raise HiveError(f"{lg.name}: dirty page at {p_off} lies beyond the hive bins data ({hbins})")
        out[BASE_BLOCK_SIZE + p_off : BASE_BLOCK_SIZE + p_off + PAGE] = lg.data[l_off : l_off + PAGE]
    notes.append(f"{lg.name}: {len(dirty)} dirty page(s) applied (old format)")
    if not primary.checksum_ok:
        notes.append(f"the hive's base block checksum is wrong: its base block is taken from {lg.name}")
    base_from = hive if primary.checksum_ok else lg.data[:LOG_BASE_SIZE]
    seq = primary.seq1 if primary.checksum_ok else lg.base.seq1
    return Replayed(_finish(out, base_from, seq, hbins), (lg.name,), 0, len(dirty), seq, tuple(notes))
