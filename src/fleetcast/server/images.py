"""What the server needs from the image store: names, a summary per image, the manifest file as
stored, and the path of a chunk. Backed by ``fleetcast.store.images.ImageStore``; every name and
chunk id from the network is checked before it becomes a path."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fleetcast.errors import ChunkNotFound, ImageNotFound, UsageError
from fleetcast.store.images import ImageStore
from fleetcast.store.manifest import CHUNK_ID_RE, valid_name

__all__ = ["ChunkNotFound", "ImageCatalog", "ImageInfo", "check_chunk_id", "check_name"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageInfo:
    name: str
    disk_size: int
    logical_sector_size: int
    os_hint: str | None
    created: str | None
    chunks: int
    stored_bytes: int
    data_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_name(name: str) -> str:
    if not valid_name(name):
        raise UsageError(
            f"image name {name!r} is not valid: expected letters, digits, '.', '_' or '-' (at most 128)"
        )
    return name


def check_chunk_id(chunk_id: str) -> str:
    if not CHUNK_ID_RE.fullmatch(chunk_id):
        raise UsageError(f"chunk id {chunk_id!r} is not valid: expected 64 lower-case hex digits")
    return chunk_id


def _within(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


class ImageCatalog:
    """Read-only view of the store at ``root`` (``STORE/images/NAME/manifest.json``, chunks)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._store = ImageStore(root)
        self._packs: dict[str, tuple[int, frozenset[str]]] = {}

    def store(self) -> ImageStore:
        return self._store

    def manifest_path(self, name: str) -> Path:
        check_name(name)
        path = self.root / "images" / name / "manifest.json"
        if not path.is_file() or not _within(path, self.root):
            raise ImageNotFound(
                f"image {name!r} does not exist in the store {self.root}",
                hint="'fleetcast image list' shows the images in this store",
            )
        return path

    def names(self) -> list[str]:
        base = self.root / "images"
        if not base.is_dir():
            return []
        return sorted(p.parent.name for p in base.glob("*/manifest.json") if valid_name(p.parent.name))

    def info(self, name: str) -> ImageInfo:
        """A summary of image ``name`` (its manifest only; the index is verified when a task uses it);
        ImageNotFound when it is not there, StoreError when unreadable."""
        self.manifest_path(name)
        manifest = self.store().open(name, lazy=True)
        return ImageInfo(
            name=name,
            disk_size=manifest.disk_size,
            logical_sector_size=manifest.logical_sector_size,
            os_hint=manifest.os_hint,
            created=manifest.created,
            chunks=len(manifest.pack_ids()),
            stored_bytes=manifest.stored_bytes,
            data_bytes=manifest.data_bytes,
        )

    def list(self) -> list[ImageInfo]:
        """Every image's summary, from the store's listing cache (``ImageStore.summaries()``: no manifest's
        pack list parsed again while it is unchanged; damaged images are skipped with a warning)."""
        return [
            ImageInfo(
                name=s["name"],
                disk_size=s["disk_size"],
                logical_sector_size=s["logical_sector_size"],
                os_hint=s["os_hint"],
                created=s["created"],
                chunks=s["packs"],
                stored_bytes=s["stored_bytes"],
                data_bytes=s["data_bytes"],
            )
            for s in self.store().summaries()
        ]

    def pack_ids(self, name: str) -> frozenset[str]:
        """The packs image ``name`` needs (cached until its manifest file changes)."""
        path = self.manifest_path(name)
        stamp = path.stat().st_mtime_ns
        cached = self._packs.get(name)
        if cached is None or cached[0] != stamp:
            cached = (stamp, frozenset(self.store().open(name).pack_ids()))
            self._packs[name] = cached
        return cached[1]

    def chunk_path(self, chunk_id: str) -> Path:
        check_chunk_id(chunk_id)
        path = Path(self.store().chunk_path(chunk_id))
        if not path.is_file() or not _within(path, self.root):
            raise ChunkNotFound(f"chunk {chunk_id} is not in the server's store")
        return path
