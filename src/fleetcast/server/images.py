"""What the server needs from the image store: names, a summary per image, the manifest file as
stored, and the path of a chunk. Backed by ``fleetcast.store.images.ImageStore``; every name and
chunk id from the network is checked before it becomes a path."""

from __future__ import annotations

import importlib
import json
import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fleetcast.errors import ChunkNotFound, ImageNotFound, NotFoundError, StoreError, UsageError

__all__ = ["ChunkNotFound", "ImageCatalog", "ImageInfo", "check_chunk_id", "check_name"]

logger = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
CHUNK_ID_RE = re.compile(r"^[0-9a-f]{64}\Z")


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
    if not NAME_RE.match(name):
        raise UsageError(
            f"image name {name!r} is not valid: expected letters, digits, '.', '_' or '-' (at most 128)"
        )
    return name


def check_chunk_id(chunk_id: str) -> str:
    if not CHUNK_ID_RE.match(chunk_id):
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
        self._store: Any = None
        self._packs: dict[str, tuple[int, frozenset[str]]] = {}

    def store(self) -> Any:
        if self._store is None:
            module = importlib.import_module("fleetcast.store.images")
            self._store = module.ImageStore(self.root)
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
        return sorted(p.parent.name for p in base.glob("*/manifest.json") if NAME_RE.match(p.parent.name))

    def info(self, name: str) -> ImageInfo:
        """A summary of image ``name``; ImageNotFound when it is not there, StoreError when unreadable."""
        path = self.manifest_path(name)
        try:
            manifest = self.store().open(name)
        except ModuleNotFoundError:  # the store package is older than this server: read the JSON
            return _info_from_json(name, path)
        return ImageInfo(
            name=name,
            disk_size=int(manifest.disk_size),
            logical_sector_size=int(manifest.logical_sector_size),
            os_hint=manifest.os_hint,
            created=getattr(manifest, "created", None),
            chunks=len(manifest.chunk_ids()),
            stored_bytes=int(getattr(manifest, "stored_bytes", 0)),
            data_bytes=int(getattr(manifest, "data_bytes", 0)),
        )

    def list(self) -> list[ImageInfo]:
        found: list[ImageInfo] = []
        for name in self.names():
            try:
                found.append(self.info(name))
            except (StoreError, NotFoundError) as exc:
                logger.warning("image %s skipped: %s", name, exc)
        return found

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


def _info_from_json(name: str, path: Path) -> ImageInfo:
    try:
        raw = json.loads(path.read_bytes())
        disk = raw["disk"]
        chunks = {c["id"]: int(c.get("stored", 0)) for a in raw.get("areas", []) for c in a.get("chunks", [])}
        return ImageInfo(
            name=name,
            disk_size=int(disk["size"]),
            logical_sector_size=int(disk.get("logical_sector_size", 512)),
            os_hint=raw.get("os_hint"),
            created=raw.get("created"),
            chunks=len(chunks),
            stored_bytes=sum(chunks.values()),
            data_bytes=0,
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StoreError(f"manifest {path} cannot be read: {exc.__class__.__name__}: {exc}") from exc
