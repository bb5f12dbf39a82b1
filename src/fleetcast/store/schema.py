"""The parts of an image manifest (format versions 1 and 2): the schema's constants and keys, and the
records a manifest is made of -- areas, chunk references (v1 entries) and pack references.

``store.manifest`` is the public face (``Manifest``, ``load_image``) and re-exports these; the JSON checks
are ``store.validate``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from fleetcast.disk.filesystems.base import FsType

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

    def _place(self) -> dict[str, Any]:
        """The fields both versions start with, in their order (the bytes of the manifest are its id)."""
        return {
            "kind": self.kind,
            "number": self.number,
            "start": self.start,
            "size": self.size,
            "fstype": self.fstype,
            "os_hint": self.os_hint,
            "used": self.used,
        }

    def to_dict_v2(self) -> dict[str, Any]:
        return (
            self._place()
            | {
                "data": self.data_bytes,
                "skipped": self.skipped,
                "entries": self.entry_count,
                "zeros": [list(z) for z in self.zeros],
            }
            | ({"os_info": self.os_info} if self.os_info is not None else {})
        )

    def to_dict(self, pack_index: dict[str, int]) -> dict[str, Any]:
        return self._place() | {
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
