"""The binary chunk index of a format-2 image: fixed-size records in compressed, checksummed blocks.

One **entry** per chunk (a window's non-zero used bytes, a slice of one pack). It is never held as one
Python object per entry for the whole image: ``IndexReader.entries()`` streams it, ``block(i)`` reads one
block, and ``blocks_of_pack()`` says which blocks hold a pack's entries (from the block headers alone), so
a restore plans per pack in memory proportional to the number of packs, not of entries.

File layout (all integers little-endian)::

    header   32 B   b"FCINDEX\\0", version u32 (1), record size u32 (64), records per block u32, 12 B zero
    block*          b"BLK\\0", stored length u32, record count u32, pack count u32,
                    pack numbers u32 * pack count (the packs this block's entries use, sorted),
                    blake3 (32 B) of everything in the block before it and of the stored bytes,
                    stored bytes: one zstd frame of record count * 64 B
    footer   32 B   b"FCIEND\\0\\0", entries u64, records u64, blocks u32, 4 B zero

Records (64 B each): an **entry** ``kind=1, extent count u16, area u16, pack u32, pack offset u32,
window u64, chunk hash 32 B, first extent (offset from the window u32, length u32), 2 B zero`` followed by
``ceil((extents - 1) / 7)`` **extent** records ``kind=2, count u16, 7 * (offset u32, length u32), 4 B
zero``. An entry and its extent records are never split across blocks. The whole file's blake3 and size
are recorded in the manifest (and so covered by the image id).
"""

from __future__ import annotations

import os
import struct
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, NamedTuple

import blake3
import zstandard

from fleetcast.errors import ManifestError

MAGIC = b"FCINDEX\x00"
BLOCK_MAGIC = b"BLK\x00"
FOOTER_MAGIC = b"FCIEND\x00\x00"
VERSION = 1
RECORD = 64
BLOCK_RECORDS = 4096  # 256 KiB of records per block before compression
LEVEL = 3
MAX_BLOCK_RECORDS = 1 << 16

_HEADER = struct.Struct("<8sIII12x")
_BLOCK = struct.Struct("<4sIII")
_FOOTER = struct.Struct("<8sQQI4x")
_ENTRY = struct.Struct("<BxHHIIQ32sII2x")
_EXTS = struct.Struct("<BxH56s4x")
_PAIR = struct.Struct("<II")
KIND_ENTRY = 1
KIND_EXTENTS = 2
EXTS_PER_RECORD = 7
assert _ENTRY.size == RECORD and _EXTS.size == RECORD


class Entry(NamedTuple):
    """One chunk: ``area`` (index into the manifest's areas), ``pack`` (index into its packs),
    ``offset`` in the pack's uncompressed content, ``window`` (area offset), ``hash`` (32-byte blake3 of
    the chunk's bytes) and ``extents`` -- area-relative ``(offset, length)`` ranges inside the window."""

    area: int
    pack: int
    offset: int
    window: int
    hash: bytes
    extents: tuple[tuple[int, int], ...]

    @property
    def length(self) -> int:
        return sum(n for _, n in self.extents)


class IndexInfo(NamedTuple):
    """What the manifest records about its index: blake3 of the file (hex), its size and entry count."""

    hash: str
    size: int
    entries: int


def encode_entry(e: Entry) -> bytes:
    """The records of one entry (64 B, plus 64 B per further 7 extents)."""
    if not e.extents:
        raise ValueError("an index entry needs at least one extent")
    first_off, first_len = e.extents[0]
    out = [
        _ENTRY.pack(
            KIND_ENTRY,
            len(e.extents),
            e.area,
            e.pack,
            e.offset,
            e.window,
            e.hash,
            first_off - e.window,
            first_len,
        )
    ]
    rest = e.extents[1:]
    for i in range(0, len(rest), EXTS_PER_RECORD):
        group = rest[i : i + EXTS_PER_RECORD]
        body = b"".join(_PAIR.pack(off - e.window, n) for off, n in group)
        out.append(_EXTS.pack(KIND_EXTENTS, len(group), body.ljust(56, b"\0")))
    return b"".join(out)


class IndexWriter:
    """Writes an index to a binary file, entry by entry (in the image's order: areas, then windows).

    ``add`` buffers at most one block; ``close`` writes the footer and returns the ``IndexInfo`` the
    manifest records. The caller owns the file (and its fsync)."""

    def __init__(self, f: BinaryIO, *, block_records: int = BLOCK_RECORDS, level: int = LEVEL) -> None:
        if not 1 <= block_records <= MAX_BLOCK_RECORDS:
            raise ValueError(f"block_records must be 1..{MAX_BLOCK_RECORDS}; found {block_records}")
        self.f = f
        self.block_records = block_records
        self.comp = zstandard.ZstdCompressor(level=level, write_content_size=True)
        self.hasher = blake3.blake3()
        self.size = 0
        self.entries = 0
        self.records = 0
        self.blocks = 0
        self._buf: list[bytes] = []
        self._buf_records = 0
        self._packs: set[int] = set()
        self._write(_HEADER.pack(MAGIC, VERSION, RECORD, block_records))

    def _write(self, data: bytes) -> None:
        self.f.write(data)
        self.hasher.update(data)
        self.size += len(data)

    def add(self, entry: Entry) -> None:
        recs = encode_entry(entry)
        n = len(recs) // RECORD
        if n > self.block_records:
            raise ValueError(f"an entry of {len(entry.extents)} extents does not fit in one block")
        if self._buf_records + n > self.block_records:
            self._flush()
        self._buf.append(recs)
        self._buf_records += n
        self._packs.add(entry.pack)
        self.entries += 1

    def _flush(self) -> None:
        if not self._buf_records:
            return
        stored = self.comp.compress(b"".join(self._buf))
        packs = sorted(self._packs)
        head = _BLOCK.pack(BLOCK_MAGIC, len(stored), self._buf_records, len(packs)) + struct.pack(
            f"<{len(packs)}I", *packs
        )
        check = blake3.blake3(head)
        check.update(stored)
        self._write(head + check.digest() + stored)
        self.records += self._buf_records
        self.blocks += 1
        self._buf, self._buf_records, self._packs = [], 0, set()

    def close(self) -> IndexInfo:
        self._flush()
        self._write(_FOOTER.pack(FOOTER_MAGIC, self.entries, self.records, self.blocks))
        return IndexInfo(self.hasher.hexdigest(), self.size, self.entries)


def write_index(path: Path, entries: Sequence[Entry] | Iterator[Entry]) -> IndexInfo:
    """Convenience: a whole index file from an iterable of entries (tests, upgrade)."""
    with open(path, "wb") as f:
        w = IndexWriter(f)
        for e in entries:
            w.add(e)
        return w.close()


class BlockInfo(NamedTuple):
    offset: int  # of the stored bytes in the file
    stored: int
    records: int
    packs: tuple[int, ...]
    check: bytes


class IndexReader:
    """A verified index: ``open`` reads the whole file once, checks its size and blake3 against what the
    manifest recorded and every block header, and keeps only the block directory (a few numbers per
    block). Entries are decoded per block on demand; a small cache keeps the last decoded blocks."""

    def __init__(self, fd: int, blocks: list[BlockInfo], entries: int, *, what: str) -> None:
        # the open file, not its name: the index stays readable when the image is removed meanwhile
        self.fd = fd
        self.blocks = blocks
        self.entry_count = entries
        self.what = what
        self._cache: OrderedDict[int, list[Entry]] = OrderedDict()
        self._dec = zstandard.ZstdDecompressor()

    @classmethod
    def open(cls, path: Path, expected: IndexInfo | None, *, what: str = "the index") -> IndexReader:
        """Read ``path`` once as a stream (memory: one block), check its size and blake3 against what the
        manifest recorded (``expected``; None for tools that rebuild) and every block's checksum. Raises
        ManifestError naming ``what`` and the problem."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise ManifestError(f"{what}: cannot read {path}: {exc.strerror}") from exc
        try:
            with open(fd, "rb", closefd=False) as f:
                blocks, entries = _verified(f, expected, what)
        except OSError as exc:
            os.close(fd)
            raise ManifestError(f"{what}: cannot read {path}: {exc.strerror}") from exc
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, blocks, entries, what=what)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:  # a Manifest holding a reader has no owner that could close it
        if getattr(self, "fd", -1) >= 0:
            self.close()

    def blocks_of_pack(self) -> dict[int, list[int]]:
        """pack number -> the blocks holding its entries (from the block headers; no decoding)."""
        out: dict[int, list[int]] = {}
        for i, b in enumerate(self.blocks):
            for p in b.packs:
                out.setdefault(p, []).append(i)
        return out

    def block(self, i: int) -> list[Entry]:
        """The entries of block ``i`` (decoded once, cached among the last 8)."""
        got = self._cache.get(i)
        if got is not None:
            self._cache.move_to_end(i)
            return got
        got = self._decode(i)
        self._cache[i] = got
        if len(self._cache) > 8:
            self._cache.popitem(last=False)
        return got

    def _decode(self, i: int) -> list[Entry]:
        b = self.blocks[i]
        stored = os.pread(self.fd, b.stored, b.offset)
        try:
            raw = self._dec.decompress(stored, max_output_size=b.records * RECORD)
        except zstandard.ZstdError as exc:
            raise ManifestError(f"{self.what}: block {i} does not decompress ({exc})") from exc
        got = decode_block(raw, b.records, f"{self.what} block {i}")
        packs = {e.pack for e in got}
        if packs != set(b.packs):
            raise ManifestError(f"{self.what}: block {i} uses other packs than its header lists")
        return got

    def entries(self) -> Iterator[Entry]:
        """Every entry, in order, one block decoded at a time (not cached: a walk of every entry of
        many images -- repack, check -- holds one block at a time, not 8 per image)."""
        for i in range(len(self.blocks)):
            yield from self._cache.get(i) or self._decode(i)

    def pack_entries(self, pack: int, blocks: Sequence[int]) -> Iterator[Entry]:
        for i in blocks:
            for e in self.block(i):
                if e.pack == pack:
                    yield e


def _verified(f: BinaryIO, expected: IndexInfo | None, what: str) -> tuple[list[BlockInfo], int]:
    size = os.fstat(f.fileno()).st_size
    if expected is not None and size != expected.size:
        raise ManifestError(f"{what} is {size} bytes but the manifest records {expected.size}", hint=_EDITED)
    hasher = blake3.blake3()
    blocks, entries = _parse(_HashingReader(f, hasher), size, what)
    if expected is not None:
        found = hasher.hexdigest()
        if found != expected.hash:
            raise ManifestError(
                f"{what} hashes to {found} but the manifest records {expected.hash}", hint=_EDITED
            )
        if entries != expected.entries:
            raise ManifestError(f"{what} holds {entries} entries but the manifest records {expected.entries}")
    return blocks, entries


_EDITED = "the image's metadata was changed or damaged; re-capture it"


class _HashingReader:
    """Reads exactly the bytes asked for, feeding each to a hasher."""

    def __init__(self, f: BinaryIO, hasher: blake3.blake3) -> None:
        self.f = f
        self.hasher = hasher
        self.pos = 0

    def read(self, n: int, what: str) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise ManifestError(f"{what} is cut off at byte {self.pos + len(data)} (truncated)")
        self.hasher.update(data)
        self.pos += n
        return data


def _parse(r: _HashingReader, size: int, what: str) -> tuple[list[BlockInfo], int]:
    if size < _HEADER.size + _FOOTER.size:
        raise ManifestError(f"{what} is too short ({size} bytes) to be a chunk index")
    magic, version, record, _per_block = _HEADER.unpack(r.read(_HEADER.size, what))
    if magic != MAGIC:
        raise ManifestError(f"{what} does not start with {MAGIC!r}; found {magic!r}")
    if version != VERSION or record != RECORD:
        raise ManifestError(
            f"{what} is index version {version} with {record}-byte records; expected version {VERSION}, "
            f"{RECORD}-byte records"
        )
    end = size - _FOOTER.size
    blocks: list[BlockInfo] = []
    total_records = 0
    while r.pos < end:
        pos = r.pos
        if pos + _BLOCK.size > end:
            raise ManifestError(f"{what}: block {len(blocks)} header is cut off at byte {pos}")
        head = r.read(_BLOCK.size, what)
        bmagic, stored, nrec, npacks = _BLOCK.unpack(head)
        if (
            bmagic != BLOCK_MAGIC
            or not 0 < nrec <= MAX_BLOCK_RECORDS
            or npacks > nrec
            or pos + _BLOCK.size + 4 * npacks + 32 + stored > end
        ):
            raise ManifestError(f"{what}: block {len(blocks)} at byte {pos} has a bad header")
        plist = r.read(4 * npacks, what)
        check = r.read(32, what)
        payload_at = r.pos
        body = r.read(stored, what)
        h = blake3.blake3(head)
        h.update(plist)
        h.update(body)
        if h.digest() != check:
            raise ManifestError(f"{what}: block {len(blocks)} at byte {pos} fails its checksum")
        packs = struct.unpack(f"<{npacks}I", plist)
        blocks.append(BlockInfo(payload_at, stored, nrec, tuple(packs), check))
        total_records += nrec
    if r.pos != end:
        raise ManifestError(f"{what}: the last block runs into the footer")
    fmagic, entries, records, nblocks = _FOOTER.unpack(r.read(_FOOTER.size, what))
    if fmagic != FOOTER_MAGIC:
        raise ManifestError(f"{what} does not end with its footer (truncated?)")
    if len(blocks) != nblocks or total_records != records:
        raise ManifestError(
            f"{what}: the footer records {nblocks} blocks of {records} records; found {len(blocks)} "
            f"blocks of {total_records}"
        )
    return blocks, entries


def decode_block(raw: bytes, records: int, what: str) -> list[Entry]:
    if len(raw) != records * RECORD:
        raise ManifestError(f"{what} holds {len(raw)} bytes; expected {records * RECORD}")
    out: list[Entry] = []
    i = 0
    while i < records:
        kind, n_ext, area, pack, offset, window, h, e_off, e_len = _ENTRY.unpack_from(raw, i * RECORD)
        if kind != KIND_ENTRY or n_ext < 1:
            raise ManifestError(f"{what}: record {i} is not an entry (kind {kind}, {n_ext} extents)")
        i += 1
        extents = [(window + e_off, e_len)]
        while len(extents) < n_ext:
            if i >= records:
                raise ManifestError(f"{what}: an entry's extents run past the end of the block")
            kind, count, body = _EXTS.unpack_from(raw, i * RECORD)
            if kind != KIND_EXTENTS or not 0 < count <= EXTS_PER_RECORD or len(extents) + count > n_ext:
                raise ManifestError(f"{what}: record {i} is not the extent record its entry announces")
            for k in range(count):
                off, n = _PAIR.unpack_from(body, 8 * k)
                extents.append((window + off, n))
            i += 1
        out.append(Entry(area, pack, offset, window, h, tuple(extents)))
    return out
