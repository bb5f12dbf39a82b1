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
docs/image-format.md; ``Manifest.from_json`` checks everything it says (``store.validate``) and raises
``ManifestError`` with the exact field and problem. The records (``Area``, ``ChunkRef``, ``PackRef``) and
constants are in ``store.schema``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import blake3

from fleetcast.errors import ManifestError
from fleetcast.store.index import Entry, IndexInfo, IndexReader
from fleetcast.store.schema import (
    CHUNK_ID_RE,
    COMPRESSION,
    FORMAT,
    HASH,
    INDEX_FILE,
    NAME_RE,
    VERSION,
    VERSION_2,
    VERSIONS,
    Area,
    ChunkRef,
    Extent,
    PackRef,
    valid_name,
)
from fleetcast.store.validate import manifest_fields

if TYPE_CHECKING:
    from fleetcast.disk.partitions import PartitionTable

# the schema's records and constants are importable from here too: the public face of the format
__all__ = [
    "CHUNK_ID_RE",
    "FORMAT",
    "INDEX_FILE",
    "NAME_RE",
    "VERSION",
    "VERSIONS",
    "VERSION_2",
    "Area",
    "ChunkRef",
    "Extent",
    "Manifest",
    "PackRef",
    "check_entry",
    "image_id",
    "load_image",
    "valid_name",
]


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
    @classmethod
    def from_dict(cls, raw: object) -> Manifest:
        return cls(**manifest_fields(raw))


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
