"""The image manifest: schema v1, its JSON form, and the validation that guards every manifest we read.

An image is one manifest plus the chunks it names. The manifest describes the source disk (size, sector
sizes), its partition table exactly (``disk.partitions.PartitionTable.to_dict()``) and the *areas* that were
captured: every partition, the whole disk of an unpartitioned (bare filesystem) disk, and the "gaps" outside
partitions that hold data (MBR boot code, the BIOS boot area after the MBR, GPT headers).

Each area's captured bytes are cut at fixed windows of ``chunk_size`` bytes of area offset; one chunk holds
the non-zero used bytes inside its window, concatenated in offset order, and the chunk entry lists those byte
ranges (``extents``, area-relative). Used blocks that are all zeros are not stored; they are listed in the
area's ``zeros`` so a restore onto a disk that held old data makes them read zero. The full schema is in
docs/image-format.md; ``Manifest.from_json`` checks everything it says and raises ``ManifestError`` with the
exact field and problem.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from fleetcast.errors import ManifestError

if TYPE_CHECKING:
    from fleetcast.disk.partitions import PartitionTable

FORMAT = "fleetcast-image"
VERSION = 1
HASH = "blake3"
COMPRESSION = "zstd"
AREA_KINDS = ("partition", "disk", "gap")
OS_HINTS = ("windows", "linux")
FSTYPES = ("ntfs", "ext", "fat", "swap", "bitlocker", "raw")
CHUNK_ID_RE = re.compile(r"[0-9a-f]{64}")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MIN_CHUNK_SIZE = 4096
MAX_CHUNK_SIZE = 64 << 20

TOP_KEYS = (
    "format",
    "version",
    "name",
    "created",
    "tool_version",
    "disk",
    "table",
    "chunking",
    "os_hint",
    "packs",
    "areas",
)
DISK_KEYS = ("size", "logical_sector_size", "physical_sector_size")
CHUNKING_KEYS = ("hash", "compression", "chunk_size", "zero_block", "pack_size")
AREA_KEYS = ("kind", "number", "start", "size", "fstype", "os_hint", "used", "chunks", "zeros")
CHUNK_KEYS = ("pack", "hash", "offset", "window", "extents")
PACK_KEYS = ("id", "stored")

Extent = tuple[int, int]


def valid_name(name: str) -> bool:
    """Image names: 1-128 characters of letters, digits, '.', '_' and '-', not starting with a symbol."""
    return bool(NAME_RE.fullmatch(name))


@dataclass(frozen=True)
class ChunkRef:
    """One chunk of an area: the bytes of one window, kept as a slice of a stored pack.

    ``id`` names the stored object (the pack, what a ChunkSource fetches), ``offset`` is where the slice
    starts in the pack's uncompressed content, ``hash`` is the blake3 of the slice (the dedupe key),
    ``window`` its area-relative window and ``extents`` the byte ranges it fills; ``stored`` is the
    pack's compressed size."""

    id: str
    hash: str
    offset: int
    window: int
    extents: tuple[Extent, ...]
    stored: int

    @property
    def length(self) -> int:
        """Uncompressed size: the sum of its extents."""
        return sum(n for _, n in self.extents)

    def to_dict(self, pack_index: dict[str, int]) -> dict[str, Any]:
        return {
            "pack": pack_index[self.id],
            "hash": self.hash,
            "offset": self.offset,
            "window": self.window,
            "extents": [list(e) for e in self.extents],
        }


@dataclass(frozen=True)
class Area:
    """A captured region of the disk: a partition, the whole (unpartitioned) disk, or a gap between them."""

    kind: str
    number: int | None
    start: int  # bytes from the start of the disk
    size: int  # bytes
    fstype: str
    os_hint: str | None
    used: int  # bytes the filesystem uses (zero blocks included)
    chunks: tuple[ChunkRef, ...]
    zeros: tuple[Extent, ...]  # area-relative ranges that are used but all zero

    @property
    def label(self) -> str:
        if self.kind == "partition":
            return f"partition {self.number}"
        if self.kind == "disk":
            return "whole disk"
        return f"gap at byte {self.start}"

    @property
    def data_bytes(self) -> int:
        return sum(c.length for c in self.chunks)

    def to_dict(self, pack_index: dict[str, int]) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "number": self.number,
            "start": self.start,
            "size": self.size,
            "fstype": self.fstype,
            "os_hint": self.os_hint,
            "used": self.used,
            "chunks": [c.to_dict(pack_index) for c in self.chunks],
            "zeros": [list(z) for z in self.zeros],
        }


@dataclass(frozen=True)
class Manifest:
    name: str
    created: str  # ISO 8601, UTC
    tool_version: str
    disk_size: int
    logical_sector_size: int
    physical_sector_size: int
    table_dict: dict[str, Any] = field(hash=False, compare=True)
    chunk_size: int
    zero_block: int
    pack_size: int
    os_hint: str | None
    areas: tuple[Area, ...]

    @cached_property
    def table(self) -> PartitionTable:
        from fleetcast.disk.partitions import PartitionTable

        return PartitionTable.from_dict(self.table_dict)

    def entries(self) -> Iterator[tuple[Area, ChunkRef]]:
        """Every chunk entry in manifest order (areas, then chunks by window); restore counts these."""
        for area in self.areas:
            for chunk in area.chunks:
                yield area, chunk

    @property
    def entry_count(self) -> int:
        return sum(len(a.chunks) for a in self.areas)

    def chunk_ids(self) -> list[str]:
        """The distinct stored objects (packs) to fetch, in first-use order."""
        seen: dict[str, None] = {}
        for _, chunk in self.entries():
            seen.setdefault(chunk.id, None)
        return list(seen)

    def chunk_sizes(self) -> dict[str, int]:
        """Stored (compressed) size of each distinct stored object."""
        return {c.id: c.stored for _, c in self.entries()}

    @property
    def used_bytes(self) -> int:
        return sum(a.used for a in self.areas)

    @property
    def data_bytes(self) -> int:
        """Bytes of non-zero data the restore writes (duplicates counted each time)."""
        return sum(c.length for _, c in self.entries())

    @property
    def stored_bytes(self) -> int:
        """Bytes this image occupies in the store (each distinct chunk once)."""
        return sum(self.chunk_sizes().values())

    def to_dict(self) -> dict[str, Any]:
        sizes = self.chunk_sizes()
        pack_index = {pid: i for i, pid in enumerate(sizes)}
        return {
            "format": FORMAT,
            "version": VERSION,
            "name": self.name,
            "created": self.created,
            "tool_version": self.tool_version,
            "disk": {
                "size": self.disk_size,
                "logical_sector_size": self.logical_sector_size,
                "physical_sector_size": self.physical_sector_size,
            },
            "table": self.table_dict,
            "chunking": {
                "hash": HASH,
                "compression": COMPRESSION,
                "chunk_size": self.chunk_size,
                "zero_block": self.zero_block,
                "pack_size": self.pack_size,
            },
            "os_hint": self.os_hint,
            "packs": [{"id": pid, "stored": stored} for pid, stored in sizes.items()],
            "areas": [a.to_dict(pack_index) for a in self.areas],
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes | str) -> Manifest:
        """Parse and validate; raises ManifestError naming the field, what was expected and what was found."""
        try:
            raw = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ManifestError(f"manifest is not valid JSON: {exc}") from exc
        except RecursionError as exc:
            raise ManifestError("manifest is not valid JSON: it is nested too deeply") from exc
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: object) -> Manifest:
        d = _obj(raw, "manifest", TOP_KEYS)
        if d["format"] != FORMAT:
            raise ManifestError(f"manifest 'format' must be {FORMAT!r}; found {d['format']!r}")
        version = d["version"]
        if version != VERSION or isinstance(version, bool):
            raise ManifestError(
                f"manifest 'version' must be {VERSION}; found {version!r}",
                hint="this fleetcast reads format version 1; a newer fleetcast wrote this image",
            )
        name = _str(d["name"], "manifest 'name'")
        if not valid_name(name):
            raise ManifestError(
                f"manifest 'name' must be 1-128 letters, digits, '.', '_' or '-'; found {name!r}"
            )
        created = _str(d["created"], "manifest 'created'")
        tool_version = _str(d["tool_version"], "manifest 'tool_version'")
        disk = _obj(d["disk"], "manifest 'disk'", DISK_KEYS)
        disk_size = _int(disk["size"], "disk.size", minimum=1)
        lss = _sector(disk["logical_sector_size"], "disk.logical_sector_size")
        pss = _sector(disk["physical_sector_size"], "disk.physical_sector_size")
        table_dict = d["table"]
        from fleetcast.disk.partitions import PartitionTable

        table = PartitionTable.from_dict(table_dict)
        if table.sector_size != lss:
            raise ManifestError(
                f"partition table sector size {table.sector_size} differs from disk.logical_sector_size {lss}"
            )
        chunking = _obj(d["chunking"], "manifest 'chunking'", CHUNKING_KEYS)
        if chunking["hash"] != HASH:
            raise ManifestError(f"chunking.hash must be {HASH!r}; found {chunking['hash']!r}")
        if chunking["compression"] != COMPRESSION:
            raise ManifestError(
                f"chunking.compression must be {COMPRESSION!r}; found {chunking['compression']!r}"
            )
        chunk_size = _int(chunking["chunk_size"], "chunking.chunk_size", minimum=MIN_CHUNK_SIZE)
        if chunk_size & (chunk_size - 1) or chunk_size > MAX_CHUNK_SIZE:
            raise ManifestError(
                f"chunking.chunk_size must be a power of two from {MIN_CHUNK_SIZE} to {MAX_CHUNK_SIZE}; "
                f"found {chunk_size}"
            )
        zero_block = _int(chunking["zero_block"], "chunking.zero_block", minimum=512)
        if zero_block & (zero_block - 1) or zero_block > chunk_size:
            raise ManifestError(
                f"chunking.zero_block must be a power of two from 512 to chunk_size; found {zero_block}"
            )
        pack_size = _int(chunking["pack_size"], "chunking.pack_size", minimum=chunk_size)
        os_hint = _os_hint(d["os_hint"], "manifest 'os_hint'")
        raw_areas = d["areas"]
        if not isinstance(raw_areas, list):
            raise ManifestError(f"manifest 'areas' must be a list; found {type(raw_areas).__name__}")
        packs = _packs(d["packs"])
        areas = tuple(_area(a, i, chunk_size, disk_size, packs) for i, a in enumerate(raw_areas))
        used_packs = {c.id for a in areas for c in a.chunks}
        for pi, (pid, _) in enumerate(packs):
            if pid not in used_packs:
                raise ManifestError(f"packs[{pi}] ({pid}) is not used by any chunk")
        _check_layout(areas, table, disk_size, lss)
        return cls(
            name=name,
            created=created,
            tool_version=tool_version,
            disk_size=disk_size,
            logical_sector_size=lss,
            physical_sector_size=pss,
            table_dict=table_dict,
            chunk_size=chunk_size,
            zero_block=zero_block,
            pack_size=pack_size,
            os_hint=os_hint,
            areas=areas,
        )


def _obj(v: object, what: str, keys: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise ManifestError(f"{what} must be an object; found {type(v).__name__}")
    missing = [k for k in keys if k not in v]
    if missing:
        raise ManifestError(f"{what} is missing {', '.join(repr(k) for k in missing)}")
    extra = sorted(str(k) for k in v if k not in keys)
    if extra:
        raise ManifestError(f"{what} has unknown fields {', '.join(repr(k) for k in extra)}")
    return v


def _int(v: object, what: str, *, minimum: int = 0) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise ManifestError(f"{what} must be an integer; found {v!r}")
    if v < minimum:
        raise ManifestError(f"{what} must be at least {minimum}; found {v}")
    return v


def _str(v: object, what: str) -> str:
    if not isinstance(v, str):
        raise ManifestError(f"{what} must be a string; found {v!r}")
    return v


def _sector(v: object, what: str) -> int:
    n = _int(v, what, minimum=512)
    if n & (n - 1) or n > 65536:
        raise ManifestError(f"{what} must be a power of two from 512 to 65536; found {n}")
    return n


def _os_hint(v: object, what: str) -> str | None:
    if v is not None and v not in OS_HINTS:
        raise ManifestError(f"{what} must be null, 'windows' or 'linux'; found {v!r}")
    return v if isinstance(v, str) else None


def _extent(v: object, what: str) -> Extent:
    if (
        not isinstance(v, list)
        or len(v) != 2
        or not all(isinstance(x, int) and not isinstance(x, bool) for x in v)
    ):
        raise ManifestError(f"{what} must be [offset, length] integers; found {v!r}")
    off, length = v
    if off < 0 or length <= 0:
        raise ManifestError(f"{what} must have offset >= 0 and length > 0; found {v!r}")
    return off, length


def _packs(raw: object) -> list[tuple[str, int]]:
    if not isinstance(raw, list):
        raise ManifestError(f"manifest 'packs' must be a list; found {type(raw).__name__}")
    out: list[tuple[str, int]] = []
    seen: set[str] = set()
    for i, rp in enumerate(raw):
        what = f"packs[{i}]"
        p = _obj(rp, what, PACK_KEYS)
        pid = _str(p["id"], f"{what}.id")
        if not CHUNK_ID_RE.fullmatch(pid):
            raise ManifestError(f"{what}.id must be 64 lower-case hex digits (blake3); found {pid!r}")
        if pid in seen:
            raise ManifestError(f"{what}.id {pid} appears twice")
        seen.add(pid)
        out.append((pid, _int(p["stored"], f"{what}.stored", minimum=1)))
    return out


def _area(raw: object, index: int, chunk_size: int, disk_size: int, packs: list[tuple[str, int]]) -> Area:
    what = f"areas[{index}]"
    d = _obj(raw, what, AREA_KEYS)
    kind = d["kind"]
    if kind not in AREA_KINDS:
        raise ManifestError(f"{what}.kind must be one of {', '.join(AREA_KINDS)}; found {kind!r}")
    number = d["number"]
    if kind == "partition":
        number = _int(number, f"{what}.number", minimum=1)
    elif number is not None:
        raise ManifestError(f"{what}.number must be null for a {kind}; found {number!r}")
    start = _int(d["start"], f"{what}.start")
    size = _int(d["size"], f"{what}.size", minimum=1)
    if start + size > disk_size:
        raise ManifestError(
            f"{what} ends at byte {start + size}, beyond the end of the disk ({disk_size} bytes)"
        )
    fstype = d["fstype"]
    if fstype not in FSTYPES:
        raise ManifestError(f"{what}.fstype must be one of {', '.join(FSTYPES)}; found {fstype!r}")
    os_hint = _os_hint(d["os_hint"], f"{what}.os_hint")
    used = _int(d["used"], f"{what}.used")
    if used > size:
        raise ManifestError(f"{what}.used ({used}) is larger than the area ({size} bytes)")
    raw_chunks = d["chunks"]
    if not isinstance(raw_chunks, list):
        raise ManifestError(f"{what}.chunks must be a list; found {type(raw_chunks).__name__}")
    chunks: list[ChunkRef] = []
    prev_end = 0
    prev_window = -1
    for ci, rc in enumerate(raw_chunks):
        cw = f"{what}.chunks[{ci}]"
        c = _obj(rc, cw, CHUNK_KEYS)
        pack = _int(c["pack"], f"{cw}.pack")
        if pack >= len(packs):
            raise ManifestError(f"{cw}.pack {pack} is not in 'packs' ({len(packs)} entries)")
        cid, stored = packs[pack]
        chash = _str(c["hash"], f"{cw}.hash")
        if not CHUNK_ID_RE.fullmatch(chash):
            raise ManifestError(f"{cw}.hash must be 64 lower-case hex digits (blake3); found {chash!r}")
        offset = _int(c["offset"], f"{cw}.offset")
        window = _int(c["window"], f"{cw}.window")
        if window % chunk_size:
            raise ManifestError(
                f"{cw}.window must be a multiple of the chunk size {chunk_size}; found {window}"
            )
        if window <= prev_window:
            raise ManifestError(
                f"{cw}.window must be larger than the previous chunk's ({prev_window}); found {window}"
            )
        if window >= size:
            raise ManifestError(f"{cw}.window {window} is outside the area ({size} bytes)")
        prev_window = window
        raw_ext = c["extents"]
        if not isinstance(raw_ext, list) or not raw_ext:
            raise ManifestError(f"{cw}.extents must be a non-empty list; found {raw_ext!r}")
        extents: list[Extent] = []
        for ei, re_ in enumerate(raw_ext):
            ew = f"{cw}.extents[{ei}]"
            off, length = _extent(re_, ew)
            if off < prev_end:
                raise ManifestError(
                    f"{ew} starts at {off}, before the end of the previous extent ({prev_end})"
                )
            if off < window or off + length > min(window + chunk_size, size):
                raise ManifestError(
                    f"{ew} [{off}, {off + length}) is outside its window "
                    f"[{window}, {min(window + chunk_size, size)})"
                )
            prev_end = off + length
            extents.append((off, length))
        chunks.append(ChunkRef(cid, chash, offset, window, tuple(extents), stored))
    raw_zeros = d["zeros"]
    if not isinstance(raw_zeros, list):
        raise ManifestError(f"{what}.zeros must be a list; found {type(raw_zeros).__name__}")
    zeros: list[Extent] = []
    zend = 0
    for zi, rz in enumerate(raw_zeros):
        zw = f"{what}.zeros[{zi}]"
        off, length = _extent(rz, zw)
        if off < zend:
            raise ManifestError(f"{zw} starts at {off}, before the end of the previous range ({zend})")
        if off + length > size:
            raise ManifestError(f"{zw} [{off}, {off + length}) is outside the area ({size} bytes)")
        zend = off + length
        zeros.append((off, length))
    return Area(kind, number, start, size, fstype, os_hint, used, tuple(chunks), tuple(zeros))


def _check_layout(areas: tuple[Area, ...], table: PartitionTable, disk_size: int, lss: int) -> None:
    """Areas sorted and disjoint; partition areas match the table; a 'disk' area only without a table."""
    end = 0
    for i, area in enumerate(areas):
        if area.start < end:
            raise ManifestError(
                f"areas[{i}] ({area.label}) starts at byte {area.start}, "
                f"inside the previous area (ends at {end})"
            )
        end = area.start + area.size
        if area.kind == "disk" and (table.label != "none" or area.start != 0 or area.size != disk_size):
            raise ManifestError(
                f"areas[{i}]: a 'disk' area must cover the whole disk of an unpartitioned image"
            )
        if area.kind == "partition":
            assert area.number is not None
            try:
                part = table.partition(area.number)
            except Exception as exc:
                raise ManifestError(
                    f"areas[{i}]: partition {area.number} is not in the partition table"
                ) from exc
            if (part.start * lss, part.size * lss) != (area.start, area.size):
                raise ManifestError(
                    f"areas[{i}]: partition {area.number} is at bytes "
                    f"[{area.start}, {area.start + area.size}) "
                    f"but the table puts it at [{part.start * lss}, {part.end * lss})"
                )
