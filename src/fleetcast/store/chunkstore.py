"""Content-addressed chunks: blake3 of the uncompressed bytes names a zstd frame under ``chunks/``.

Layout: ``STORE/chunks/<first two hex digits>/<64 hex digits>``, each file one zstd frame with the content
size in its header. A chunk is only ever created by renaming a complete, fsynced file into place (see
``images.CaptureTransaction``), so a chunk file that exists is whole unless the disk damaged it; ``verify``
and ``store check`` find such damage by decompressing and re-hashing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import blake3
import zstandard

from fleetcast.errors import ChunkCorrupt, PackMissing, StoreError
from fleetcast.store.manifest import CHUNK_ID_RE

logger = logging.getLogger(__name__)

DEFAULT_LEVEL = 3
# Largest uncompressed object accepted (packs are about 16 MiB): a damaged or hostile frame header must
# not make a restore allocate whatever size it declares.
MAX_OBJECT_BYTES = 256 << 20
_local = threading.local()
_CORRUPT_HINT = (
    "run 'fleetcast store check'; re-capture the image unless the chunk can be restored from a backup"
)


def chunk_hash(data: bytes | memoryview) -> str:
    """The chunk id: blake3 of the uncompressed bytes, 64 lower-case hex digits."""
    return str(blake3.blake3(data).hexdigest())


def compress(data: bytes | memoryview, level: int = DEFAULT_LEVEL) -> bytes:
    """One zstd frame (content size recorded); a compressor per thread, since they are not thread-safe."""
    key = f"c{level}"
    comp = getattr(_local, key, None)
    if comp is None:
        comp = zstandard.ZstdCompressor(level=level, write_content_size=True)
        setattr(_local, key, comp)
    return bytes(comp.compress(data))


def decompress_verify(chunk_id: str, stored: bytes, length: int | None, *, what: str) -> bytes:
    """Decompress a stored chunk and check it against its id (and expected length when known).

    ``what`` names the owner for the message, e.g. "image 'win11'". Raises ChunkCorrupt naming the chunk.
    """
    dec = getattr(_local, "d", None)
    if dec is None:
        dec = zstandard.ZstdDecompressor()
        _local.d = dec
    try:
        declared = zstandard.frame_content_size(stored)
        if declared > MAX_OBJECT_BYTES:
            raise ChunkCorrupt(
                f"{what}: chunk {chunk_id} is corrupt: its header declares {declared} bytes of content, "
                f"more than the {MAX_OBJECT_BYTES} a stored object may hold",
                hint=_CORRUPT_HINT,
            )
        data = bytes(dec.decompress(stored, max_output_size=length or 0))
    except zstandard.ZstdError as exc:
        raise ChunkCorrupt(
            f"{what}: chunk {chunk_id} is corrupt: it does not decompress ({exc})",
            hint=_CORRUPT_HINT,
        ) from exc
    if length is not None and len(data) != length:
        raise ChunkCorrupt(
            f"{what}: chunk {chunk_id} is corrupt: expected {length} bytes, found {len(data)}",
            hint="run 'fleetcast store check'",
        )
    found = chunk_hash(data)
    if found != chunk_id:
        raise ChunkCorrupt(
            f"{what}: chunk {chunk_id} is corrupt: its content hashes to {found}",
            hint=_CORRUPT_HINT,
        )
    return data


def decompress_exact(chunk_id: str, stored: bytes, *, what: str, hint: str = _CORRUPT_HINT) -> bytes:
    """Like ``decompress_verify``, and the stored bytes must be exactly one whole zstd frame: bytes after
    it (which a one-shot decompression ignores) or a frame cut off fail. For checks of stored packs whose
    recorded size and hash are not at hand (``store check``, uploads)."""
    try:
        declared = zstandard.frame_content_size(stored)
        if declared > MAX_OBJECT_BYTES:
            raise ChunkCorrupt(
                f"{what}: pack {chunk_id} is corrupt: its header declares {declared} bytes of content, "
                f"more than the {MAX_OBJECT_BYTES} a stored object may hold",
                hint=hint,
            )
        dobj = zstandard.ZstdDecompressor().decompressobj(write_size=max(declared, 0) + 1)
        data = dobj.decompress(stored)
        complete, rest = dobj.eof, dobj.unused_data
    except zstandard.ZstdError as exc:
        raise ChunkCorrupt(
            f"{what}: pack {chunk_id} is corrupt: it does not decompress ({exc})", hint=hint
        ) from exc
    if not complete:
        raise ChunkCorrupt(f"{what}: pack {chunk_id} is corrupt: its zstd frame is cut off", hint=hint)
    if rest:
        raise ChunkCorrupt(
            f"{what}: pack {chunk_id} is corrupt: {len(rest)} bytes follow its zstd frame", hint=hint
        )
    found = chunk_hash(data)
    if found != chunk_id:
        raise ChunkCorrupt(f"{what}: pack {chunk_id} is corrupt: its content hashes to {found}", hint=hint)
    return data


class ChunkStore:
    """The ``chunks/`` directory of a store."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, chunk_id: str) -> Path:
        if not CHUNK_ID_RE.fullmatch(chunk_id):
            raise StoreError(f"chunk id must be 64 lower-case hex digits; found {chunk_id!r}")
        return self.root / chunk_id[:2] / chunk_id

    def has(self, chunk_id: str) -> bool:
        return self.path(chunk_id).is_file()

    def size(self, chunk_id: str) -> int:
        try:
            return self.path(chunk_id).stat().st_size
        except OSError as exc:
            raise StoreError(f"chunk {chunk_id} is missing from the store {self.root.parent}") from exc

    def read(self, chunk_id: str) -> bytes:
        try:
            return self.path(chunk_id).read_bytes()
        except FileNotFoundError as exc:
            raise PackMissing(
                f"pack {chunk_id} is missing from the store {self.root.parent}",
                hint="run 'fleetcast store check'; re-capture the images that use it",
            ) from exc
        except OSError as exc:
            raise StoreError(f"cannot read chunk {chunk_id}: {exc.strerror}") from exc

    def iter_files(self) -> Iterator[tuple[str, Path]]:
        """Every file under chunks/ as (name, path); names that are not chunk ids are reported by check."""
        if not self.root.is_dir():
            return
        for sub in sorted(self.root.iterdir()):
            if not sub.is_dir():
                yield sub.name, sub
                continue
            for f in sorted(sub.iterdir()):
                yield f.name, f


_libc: ctypes.CDLL | None = None


def syncfs(path: Path) -> None:
    """Flush the filesystem holding ``path`` (one call, not an fsync per chunk); falls back to sync()."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise StoreError(f"cannot flush the store filesystem at {path}: {os.strerror(err)}")
    except AttributeError:
        os.sync()
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_durable(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file and fsync it (the caller renames it into place)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_durable(src: Path, dst: Path) -> None:
    """Copy a file to a new file and fsync it."""
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
        fout.flush()
        os.fsync(fout.fileno())
