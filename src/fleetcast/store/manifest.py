"""The image manifest: schemas v1 and v2, their JSON form, and the validation that guards every manifest.

Format version 2 keeps the manifest small (table, areas, totals, pack list) and moves the chunk entries
into a binary index beside it (``store.index``); ``load_image`` reads either version through the same
``Manifest`` interface, checking the image id (blake3 of the manifest bytes, which record the index's
hash) first. What follows describes version 1's in-manifest chunks; version 2's index holds the same
fields per entry.

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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import blake3

from fleetcast.disk.filesystems.base import FsType
from fleetcast.errors import ManifestError
from fleetcast.store.index import Entry, IndexInfo, IndexReader

if TYPE_CHECKING:
    from fleetcast.disk.partitions import PartitionTable

FORMAT = "fleetcast-image"
VERSION = 1
VERSION_2 = 2
VERSIONS = (VERSION, VERSION_2)
INDEX_FILE = "index"  # beside manifest.json in a v2 image directory
HASH = "blake3"
COMPRESSION = "zstd"
AREA_KINDS = ("partition", "disk", "gap")
OS_HINTS = ("windows", "linux")
FSTYPES = tuple(str(t) for t in FsType)  # every filesystem of the registry
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
TOP_KEYS_2 = (*TOP_KEYS, "index", "totals")
AREA_KEYS_2 = (
    "kind",
    "number",
    "start",
    "size",
    "fstype",
    "os_hint",
    "used",
    "data",
    "skipped",
    "entries",
    "zeros",
)
PACK_KEYS_2 = ("id", "stored", "hash")
INDEX_KEYS = ("hash", "size", "entries")
TOTALS_KEYS = ("used", "data", "stored", "entries", "packs")

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
    # format 2 (the entries are in the index): bytes of chunk data, used-zero bytes not listed in
    # ``zeros`` (gaps past the disk's head), entry count; None in v1 (computed from ``chunks``)
    data: int | None = None
    skipped: int = 0
    entries: int | None = None
    # format 2, optional: what an OS inspection found on the area at capture (e.g. Windows version,
    # edition, generalized, machine SID), a small JSON object; absent from the manifest when None
    os_info: dict[str, Any] | None = field(default=None, hash=False)

    @property
    def label(self) -> str:
        if self.kind == "partition":
            return f"partition {self.number}"
        if self.kind == "disk":
            return "whole disk"
        return f"gap at byte {self.start}"

    @property
    def data_bytes(self) -> int:
        return self.data if self.data is not None else sum(c.length for c in self.chunks)

    @property
    def entry_count(self) -> int:
        return self.entries if self.entries is not None else len(self.chunks)

    def to_dict_v2(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "number": self.number,
            "start": self.start,
            "size": self.size,
            "fstype": self.fstype,
            "os_hint": self.os_hint,
            "used": self.used,
            "data": self.data_bytes,
            "skipped": self.skipped,
            "entries": self.entry_count,
            "zeros": [list(z) for z in self.zeros],
        } | ({"os_info": self.os_info} if self.os_info is not None else {})

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
class PackRef:
    """A pack an image uses: ``id`` (blake3 of its uncompressed content), ``stored`` (the size of its one
    zstd frame) and, from format 2 on, ``hash`` -- blake3 of the stored bytes, so a pack is intact only
    when its whole file is exactly ``stored`` bytes hashing to ``hash`` (bytes appended fail)."""

    id: str
    stored: int
    hash: str | None = None


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
    version: int = VERSION
    packs: tuple[PackRef, ...] = ()  # format 2 (v1: derived from the chunks, see pack_refs)
    index_info: IndexInfo | None = None  # format 2: what the manifest records about its index
    index: IndexReader | None = field(default=None, compare=False, repr=False)  # attached by load_image
    image_id: str = field(default="", compare=False)  # blake3 of the manifest bytes, set by load_image
    index_path: Path | None = field(default=None, compare=False, repr=False)  # lazy: opened on first use

    @cached_property
    def table(self) -> PartitionTable:
        from fleetcast.disk.partitions import PartitionTable

        return PartitionTable.from_dict(self.table_dict)

    def open_index(self) -> IndexReader | None:
        """The verified index (opening it now when ``load_image(lazy=True)`` deferred it); None in v1.
        Raises ManifestError when the index does not match the manifest."""
        if self.version == VERSION or self.index is not None:
            return self.index
        if self.index_path is not None:
            index = IndexReader.open(
                self.index_path, self.index_info, what=f"image {self.name!r} chunk index"
            )
            _check_index_packs(self, index)
            object.__setattr__(self, "index", index)
        return self.index

    def _reader(self) -> IndexReader:
        if self.open_index() is None:
            raise ManifestError(
                f"image {self.name!r} is format version 2 and its chunk index was not opened",
                hint="open the image with store.manifest.load_image (ImageStore.open does)",
            )
        assert self.index is not None
        return self.index

    def entries(self) -> Iterator[tuple[Area, ChunkRef]]:
        """Every chunk entry in image order (areas, then windows), streamed from the index in v2."""
        if self.version == VERSION:
            for area in self.areas:
                for chunk in area.chunks:
                    yield area, chunk
            return
        for e in self._reader().entries():
            yield self.areas[e.area], self.chunk_ref(e)

    def chunk_ref(self, e: Entry) -> ChunkRef:
        """The ChunkRef of a v2 index entry (pack id and stored size resolved)."""
        pack = self.packs[e.pack]
        return ChunkRef(pack.id, e.hash.hex(), e.offset, e.window, e.extents, pack.stored)

    @property
    def entry_count(self) -> int:
        if self.index_info is not None:
            return self.index_info.entries
        return sum(len(a.chunks) for a in self.areas)

    def pack_refs(self) -> tuple[PackRef, ...]:
        """The packs this image uses, each once, in first-use order (v1: no stored hash)."""
        if self.version != VERSION:
            return self.packs
        seen: dict[str, PackRef] = {}
        for _, chunk in self.entries():
            if chunk.id not in seen:
                seen[chunk.id] = PackRef(chunk.id, chunk.stored)
        return tuple(seen.values())

    def pack_ids(self) -> list[str]:
        """The distinct packs to fetch, in first-use order."""
        return [p.id for p in self.pack_refs()]

    def chunk_ids(self) -> list[str]:
        """Old name of ``pack_ids`` (it returns packs, not chunks); kept until every caller moved."""
        return self.pack_ids()

    def chunk_sizes(self) -> dict[str, int]:
        """Stored (compressed) size of each distinct pack."""
        return {p.id: p.stored for p in self.pack_refs()}

    @property
    def used_bytes(self) -> int:
        return sum(a.used for a in self.areas)

    @property
    def data_bytes(self) -> int:
        """Bytes of non-zero data the restore writes (duplicates counted each time)."""
        return sum(a.data_bytes for a in self.areas)

    @property
    def stored_bytes(self) -> int:
        """Bytes this image's packs occupy in the store (each distinct pack once)."""
        return sum(p.stored for p in self.pack_refs())

    def _head(self, version: int) -> dict[str, Any]:
        """The fields both versions share, in their order."""
        return {
            "format": FORMAT,
            "version": version,
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
        }

    def to_dict_v2(self) -> dict[str, Any]:
        assert self.index_info is not None
        return self._head(VERSION_2) | {
            "packs": [{"id": p.id, "stored": p.stored, "hash": p.hash} for p in self.packs],
            "areas": [a.to_dict_v2() for a in self.areas],
            "index": {
                "hash": self.index_info.hash,
                "size": self.index_info.size,
                "entries": self.index_info.entries,
            },
            "totals": {
                "used": self.used_bytes,
                "data": self.data_bytes,
                "stored": self.stored_bytes,
                "entries": self.entry_count,
                "packs": len(self.packs),
            },
        }

    def to_dict(self) -> dict[str, Any]:
        sizes = self.chunk_sizes()
        pack_index = {pid: i for i, pid in enumerate(sizes)}
        return self._head(VERSION) | {
            "packs": [{"id": pid, "stored": stored} for pid, stored in sizes.items()],
            "areas": [a.to_dict(pack_index) for a in self.areas],
        }

    def to_json(self) -> bytes:
        d = self.to_dict() if self.version == VERSION else self.to_dict_v2()
        return json.dumps(d, separators=(",", ":")).encode() + b"\n"

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
        if not isinstance(raw, dict):
            raise ManifestError(f"manifest must be an object; found {type(raw).__name__}")
        if "version" not in raw:
            _obj(raw, "manifest", TOP_KEYS)  # names every missing field
        version = raw["version"]
        if version not in VERSIONS or isinstance(version, bool):
            raise ManifestError(
                f"manifest 'version' must be 1 or 2; found {version!r}",
                hint="this fleetcast reads format versions 1 and 2; a newer fleetcast wrote this image",
            )
        d = _obj(raw, "manifest", TOP_KEYS if version == VERSION else TOP_KEYS_2)
        if d["format"] != FORMAT:
            raise ManifestError(f"manifest 'format' must be {FORMAT!r}; found {d['format']!r}")
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
        from fleetcast.disk.partitions import PartitionTable, TableError

        try:
            table = PartitionTable.from_dict(table_dict)
        except TableError as exc:
            raise ManifestError(exc.message, hint=exc.hint) from exc
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
        common: dict[str, Any] = dict(
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
        )
        if version == VERSION_2:
            return _from_dict_v2(cls, d, common, raw_areas, table, disk_size, lss)
        packs = _packs(d["packs"])
        areas = tuple(_area(a, i, chunk_size, disk_size, packs) for i, a in enumerate(raw_areas))
        used_packs = {c.id for a in areas for c in a.chunks}
        for pi, (pid, _) in enumerate(packs):
            if pid not in used_packs:
                raise ManifestError(f"packs[{pi}] ({pid}) is not used by any chunk")
        _check_layout(areas, table, disk_size, lss)
        return cls(**common, areas=areas)


def _from_dict_v2(  # noqa: PLR0917 -- one call site, the parts from_dict already checked
    cls: type[Manifest],
    d: dict[str, Any],
    common: dict[str, Any],
    raw_areas: list[Any],
    table: PartitionTable,
    disk_size: int,
    lss: int,
) -> Manifest:
    raw_packs = d["packs"]
    if not isinstance(raw_packs, list):
        raise ManifestError(f"manifest 'packs' must be a list; found {type(raw_packs).__name__}")
    packs = _packs_fast(raw_packs)
    seen: set[str] = set()
    for i, rp in enumerate(raw_packs if packs is None else ()):
        what = f"packs[{i}]"
        p = _obj(rp, what, PACK_KEYS_2)
        pid, phash = _str(p["id"], f"{what}.id"), _str(p["hash"], f"{what}.hash")
        for key, v in (("id", pid), ("hash", phash)):
            if not CHUNK_ID_RE.fullmatch(v):
                raise ManifestError(f"{what}.{key} must be 64 lower-case hex digits (blake3); found {v!r}")
        if pid in seen:
            raise ManifestError(f"{what}.id {pid} appears twice")
        seen.add(pid)
    if packs is None:  # the checks above found nothing wrong that the fast path saw: the same list
        packs = [PackRef(p["id"], p["stored"], p["hash"]) for p in raw_packs]
    areas = tuple(_area_v2(a, i, disk_size) for i, a in enumerate(raw_areas))
    idx = _obj(d["index"], "manifest 'index'", INDEX_KEYS)
    ihash = _str(idx["hash"], "index.hash")
    if not CHUNK_ID_RE.fullmatch(ihash):
        raise ManifestError(f"index.hash must be 64 lower-case hex digits (blake3); found {ihash!r}")
    info = IndexInfo(ihash, _int(idx["size"], "index.size", minimum=1), _int(idx["entries"], "index.entries"))
    entries = sum(a.entry_count for a in areas)
    if entries != info.entries:
        raise ManifestError(f"the areas hold {entries} entries but index.entries is {info.entries}")
    totals = _obj(d["totals"], "manifest 'totals'", TOTALS_KEYS)
    found = {
        "used": sum(a.used for a in areas),
        "data": sum(a.data_bytes for a in areas),
        "stored": sum(p.stored for p in packs),
        "entries": entries,
        "packs": len(packs),
    }
    for key, value in found.items():
        if _int(totals[key], f"totals.{key}") != value:
            raise ManifestError(f"totals.{key} is {totals[key]} but the areas and packs add up to {value}")
    _check_layout(areas, table, disk_size, lss)
    return cls(**common, areas=areas, version=VERSION_2, packs=tuple(packs), index_info=info)


_HEX_RUN = re.compile(r"[0-9a-f]*")


def _packs_fast(raw: list[Any]) -> list[PackRef] | None:
    """The pack list when every entry is well-formed, checked in bulk (a listing of 100 images parses
    tens of thousands of entries); None when any is not, so the entry-by-entry checks name the problem."""
    ids: list[str] = []
    hashes: list[str] = []
    for rp in raw:
        if type(rp) is not dict or len(rp) != 3:
            return None
        pid, phash, stored = rp.get("id"), rp.get("hash"), rp.get("stored")
        if type(pid) is not str or type(phash) is not str or type(stored) is not int or stored < 1:
            return None
        if len(pid) != 64 or len(phash) != 64:
            return None
        ids.append(pid)
        hashes.append(phash)
    if (
        len(set(ids)) != len(ids)
        or not _HEX_RUN.fullmatch("".join(ids))
        or not _HEX_RUN.fullmatch("".join(hashes))
    ):
        return None
    return [PackRef(p, rp["stored"], h) for p, h, rp in zip(ids, hashes, raw, strict=True)]


MAX_OS_INFO = 8192  # bytes of JSON


def _os_info(v: object, what: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise ManifestError(f"{what} must be an object; found {type(v).__name__}")
    size = len(json.dumps(v, separators=(",", ":")))
    if size > MAX_OS_INFO:
        raise ManifestError(f"{what} is {size} bytes of JSON, more than {MAX_OS_INFO}")
    return v


def _area_v2(raw: object, index: int, disk_size: int) -> Area:
    what = f"areas[{index}]"
    os_info = None
    if isinstance(raw, dict) and "os_info" in raw:
        os_info = _os_info(raw["os_info"], f"{what}.os_info")
        raw = {k: v for k, v in raw.items() if k != "os_info"}
    d = _obj(raw, what, AREA_KEYS_2)
    shell = dict(d, chunks=[])
    for k in ("data", "skipped", "entries"):
        shell.pop(k)
    base = _area(shell, index, MIN_CHUNK_SIZE, disk_size, [])
    data = _int(d["data"], f"{what}.data")
    skipped = _int(d["skipped"], f"{what}.skipped")
    entries = _int(d["entries"], f"{what}.entries")
    zeros = sum(n for _, n in base.zeros)
    if base.used != data + zeros + skipped:
        raise ManifestError(
            f"{what}.used ({base.used}) is not data ({data}) + zeros ({zeros}) + skipped ({skipped})"
        )
    if (data == 0) != (entries == 0):
        raise ManifestError(f"{what} has {entries} entries for {data} bytes of data")
    return Area(
        base.kind,
        base.number,
        base.start,
        base.size,
        base.fstype,
        base.os_hint,
        base.used,
        (),
        base.zeros,
        data=data,
        skipped=skipped,
        entries=entries,
        os_info=os_info,
    )


def image_id(manifest_bytes: bytes) -> str:
    """An image's identity: blake3 of its manifest bytes as stored. In format 2 the manifest records the
    index's size and blake3, so the id covers the manifest and the index."""
    return str(blake3.blake3(manifest_bytes).hexdigest())


def load_image(
    manifest_bytes: bytes,
    index_path: Path | None,
    *,
    expected_id: str | None = None,
    what: str = "",
    lazy: bool = False,
) -> Manifest:
    """Read an image (either format) through one interface, checking in this order: the image id when
    the caller knows which image it expects (a task names the image by id), the manifest, then (v2) the
    index's size and hash against what the manifest records. Raises ManifestError before anything else
    happens; ``what`` names the image for the messages (default: the manifest's name).

    ``lazy=True`` (listings, which need only the manifest) defers the index until ``open_index()`` or
    ``entries()``; ``restore`` opens it before anything else."""
    found = image_id(manifest_bytes)
    if expected_id is not None and found != expected_id:
        raise ManifestError(
            f"{what or 'the image'} has id {found} but {expected_id} was expected",
            hint="the image was changed or replaced since it was planned; plan the deployment again",
        )
    manifest = Manifest.from_json(manifest_bytes)
    index = None
    if manifest.version == VERSION_2 and lazy and index_path is not None:
        object.__setattr__(manifest, "index_path", index_path)
    elif manifest.version == VERSION_2:
        if index_path is None:
            raise ManifestError(f"image {manifest.name!r} is format version 2 but no index was given")
        index = IndexReader.open(
            index_path, manifest.index_info, what=f"image {what or repr(manifest.name)} chunk index"
        )
        _check_index_packs(manifest, index)
    object.__setattr__(manifest, "index", index)
    object.__setattr__(manifest, "image_id", found)
    return manifest


def _check_index_packs(manifest: Manifest, index: IndexReader) -> None:
    """From the block headers alone: every pack number is in 'packs', and every pack is used."""
    used = index.blocks_of_pack()
    bad = [p for p in used if p >= len(manifest.packs)]
    if bad:
        raise ManifestError(
            f"image {manifest.name!r}: the index uses pack number {bad[0]} but 'packs' has "
            f"{len(manifest.packs)} entries"
        )
    for i, p in enumerate(manifest.packs):
        if i not in used:
            raise ManifestError(f"image {manifest.name!r}: packs[{i}] ({p.id}) is not used by any entry")


def check_entry(manifest: Manifest, e: Entry, what: str) -> None:
    """The checks of one v2 entry that need no neighbour: area and pack exist, window aligned and inside
    the area, extents inside the window, sorted and disjoint."""
    if e.area >= len(manifest.areas) or e.pack >= len(manifest.packs):
        raise ManifestError(f"{what}: entry at window {e.window} names area {e.area}, pack {e.pack}")
    size = manifest.areas[e.area].size
    if e.window % manifest.chunk_size or e.window >= size:
        raise ManifestError(f"{what}: entry window {e.window} is not a chunk window of its area")
    end = e.window
    wend = min(e.window + manifest.chunk_size, size)
    for off, n in e.extents:
        if off < end or n <= 0 or off + n > wend:
            raise ManifestError(
                f"{what}: entry at window {e.window} has extent [{off}, {off + n}) outside its window "
                f"[{e.window}, {wend}) or overlapping the previous one"
            )
        end = off + n


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
