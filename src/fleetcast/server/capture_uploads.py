"""Resumable uploads of a network capture (issue 11): a pack or the chunk index arriving in pieces.

Each upload has a part file under ``DATA/capture-parts/`` named by its key (``upload_key``: task, pack id,
stored hash; or ``TASK-index``). ``GET`` answers how many bytes arrived, ``PUT`` at that offset streams the
rest straight to the file in pieces of ``FLUSH_BYTES`` -- nothing is held in memory beyond one piece, and
what arrived before a disconnect is kept. The newest request of a part owns it: an older one still
streaming over a dead connection stops writing (``Superseded``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from fleetcast.errors import ConflictError, UsageError

PART_DIR = "capture-parts"
FLUSH_BYTES = 1 << 20  # an upload is written to its part file in pieces of this size
_HEX = frozenset("0123456789abcdef")


@dataclass
class Part:
    """One pack (or index) arriving in pieces: ``size`` bytes are in ``path``; the newest request
    (``generation``) owns it, an older one still streaming over a dead connection stops writing."""

    path: Path
    stored: int
    size: int = 0
    generation: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def complete(self) -> bool:
        return self.size == self.stored


class Superseded(Exception):
    """A newer upload of the same part took over."""


def upload_key(task_id: int, pack_id: str, stored_hash: str) -> str:
    if len(stored_hash) != 64 or not set(stored_hash) <= _HEX:
        raise UsageError(f"stored hash {stored_hash[:80]!r} is not 64 lower-case hex digits")
    return f"{task_id}-{pack_id}-{stored_hash[:16]}"


def index_key(task_id: int) -> str:
    return f"{task_id}-index"


class Uploads:
    """The part files of every running capture (thread-safe)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._parts: dict[str, Part] = {}
        self._lock = threading.Lock()

    def path(self, key: str) -> Path:
        return self.root / f"{key}.part"

    def part(self, key: str, stored: int) -> Part:
        with self._lock:
            p = self._parts.get(key)
            if p is None or p.stored != stored:
                self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
                path = self.path(key)
                size = path.stat().st_size if path.is_file() else 0
                p = self._parts[key] = Part(path, stored, size=min(size, stored))
            return p

    def received(self, key: str, stored: int) -> int:
        return self.part(key, stored).size

    def begin(self, part: Part, offset: int) -> int:
        with part.lock:
            if offset > part.size:
                raise ConflictError(
                    f"upload offset {offset} is past the {part.size} bytes received",
                    hint="ask for the upload's status and continue from there",
                )
            part.generation += 1
            with open(part.path, "ab") as f:
                f.truncate(offset)
            part.size = offset
            return part.generation

    def _write(self, part: Part, generation: int, fd: int, data: bytes | bytearray) -> None:
        with part.lock:
            if part.generation != generation:
                raise Superseded
            if part.size + len(data) > part.stored:
                raise UsageError(
                    f"upload is longer than the announced {part.stored} bytes "
                    f"({part.size} arrived, {len(data)} more sent)"
                )
            view = memoryview(data)
            while view:
                n = os.pwrite(fd, view, part.size)
                part.size += n
                view = view[n:]

    async def receive(
        self, part: Part, offset: int, stream: AsyncIterator[bytes], count: Callable[[int], None]
    ) -> None:
        """The body from ``offset`` into the part file, written in pieces of ``FLUSH_BYTES``; what arrived
        before a disconnect is kept. Raises Superseded when a newer request took the part over."""
        generation = self.begin(part, offset)
        fd = os.open(part.path, os.O_WRONLY | os.O_CREAT, 0o600)
        buf = bytearray()
        try:
            try:
                async for piece in stream:
                    buf += piece
                    if len(buf) >= FLUSH_BYTES:
                        self._write(part, generation, fd, buf)
                        count(len(buf))
                        buf.clear()
            finally:
                if buf:
                    try:
                        self._write(part, generation, fd, buf)
                        count(len(buf))
                    except (Superseded, UsageError):
                        pass
        finally:
            os.close(fd)

    def drop(self, key: str) -> None:
        with self._lock:
            p = self._parts.pop(key, None)
        (p.path if p is not None else self.path(key)).unlink(missing_ok=True)

    def prune(self, running: set[int]) -> None:
        """Remove the part files of tasks that no longer run."""
        if not self.root.is_dir():
            return
        for path in self.root.glob("*.part"):
            task = path.name.split("-", 1)[0]
            if task.isdigit() and int(task) not in running:
                with self._lock:
                    self._parts.pop(path.name.removesuffix(".part"), None)
                path.unlink(missing_ok=True)
