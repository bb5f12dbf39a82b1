"""Resumable uploads of a network capture (issue 11): a pack or the chunk index arriving in pieces.

Each upload is a part named by its key (``upload_key``: task, pack id, stored hash; or ``TASK-index``).
``GET`` answers how many bytes arrived, ``PUT`` at that offset sends the rest; what arrived before a
disconnect is kept. The newest request of a part owns it: an older one still streaming over a dead
connection stops writing (``Superseded``).

- A pack (about 16 MiB) is received into memory, up to ``MEMORY_LIMIT`` bytes of packs at once: it is
  verified and stored from there (no part file written and read back: measured, a third of the server's
  CPU per uploaded byte went to copies through the page cache). A server that stops (SIGTERM, a
  restart: ``spill`` at exit) writes each partly received one to its part file first, so the agent
  continues it after the restart; a killed server (SIGKILL, power loss) loses them, and the agent sends
  them again from the start.
- The chunk index (up to gigabytes) and packs beyond the limit stream to a part file under
  ``DATA/capture-parts/`` in pieces of ``FLUSH_BYTES``: never held in memory beyond one piece.
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
MEMORY_LIMIT = 512 << 20  # announced bytes of packs received in memory at once (others go to files)
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
    data: bytearray | None = None  # an in-memory part (else the bytes are in ``path``)

    def content(self) -> bytes:
        """The complete part's bytes."""
        if self.data is not None:
            return bytes(self.data)
        return self.path.read_bytes()

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

    def __init__(self, root: Path, *, memory_limit: int = MEMORY_LIMIT) -> None:
        self.root = root
        self.memory_limit = memory_limit
        self._parts: dict[str, Part] = {}
        self._lock = threading.Lock()
        self._in_memory = 0  # announced bytes of the in-memory parts

    def path(self, key: str) -> Path:
        return self.root / f"{key}.part"

    def part(self, key: str, stored: int, *, memory: bool = False) -> Part:
        """The part of ``key`` (created when new, or when announced with another size); ``memory``: in
        memory while there is room under the limit."""
        with self._lock:
            p = self._parts.get(key)
            if p is None or p.stored != stored:
                if p is not None:
                    self._forget(p)
                path = self.path(key)
                size = path.stat().st_size if path.is_file() else 0
                if memory and not size and self._in_memory + stored <= self.memory_limit:
                    p = Part(path, stored, data=bytearray())
                    self._in_memory += stored
                else:
                    self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
                    p = Part(path, stored, size=min(size, stored))
                self._parts[key] = p
            return p

    def _forget(self, p: Part) -> None:
        if p.data is not None:
            self._in_memory -= p.stored
            p.data = None

    def received(self, key: str, stored: int) -> int:
        """Bytes of ``key`` that arrived (a part is not made by asking)."""
        with self._lock:
            p = self._parts.get(key)
            if p is not None and p.stored == stored:
                return p.size
        path = self.path(key)
        return min(path.stat().st_size, stored) if path.is_file() else 0

    def begin(self, part: Part, offset: int) -> int:
        with part.lock:
            if offset > part.size:
                raise ConflictError(
                    f"upload offset {offset} is past the {part.size} bytes received",
                    hint="ask for the upload's status and continue from there",
                )
            part.generation += 1
            if part.data is not None:
                del part.data[offset:]
            else:
                with open(part.path, "ab") as f:
                    f.truncate(offset)
            part.size = offset
            return part.generation

    @staticmethod
    def _check(part: Part, generation: int, more: int) -> None:
        if part.generation != generation:
            raise Superseded
        if part.size + more > part.stored:
            raise UsageError(
                f"upload is longer than the announced {part.stored} bytes "
                f"({part.size} arrived, {more} more sent)"
            )

    def _append(self, part: Part, generation: int, piece: bytes) -> None:
        with part.lock:
            self._check(part, generation, len(piece))
            if part.data is None:  # dropped meanwhile (pruned)
                raise Superseded
            part.data += piece
            part.size += len(piece)

    def _write(self, part: Part, generation: int, fd: int, data: bytes | bytearray) -> None:
        with part.lock:
            self._check(part, generation, len(data))
            view = memoryview(data)
            while view:
                n = os.pwrite(fd, view, part.size)
                part.size += n
                view = view[n:]

    async def receive(
        self, part: Part, offset: int, stream: AsyncIterator[bytes], count: Callable[[int], None]
    ) -> None:
        """The body from ``offset`` into the part (file: written in pieces of ``FLUSH_BYTES``); what arrived
        before a disconnect is kept. Raises Superseded when a newer request took the part over."""
        generation = self.begin(part, offset)
        if part.data is not None:
            async for piece in stream:
                self._append(part, generation, piece)
                count(len(piece))
            return
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

    def spill(self) -> int:
        """Write every partly received in-memory pack to its part file (the server is stopping: after the
        restart ``part`` finds the file and the agent continues from its size). Complete ones are being
        stored and are left alone. Returns how many were written."""
        with self._lock:
            parts = [p for p in self._parts.values() if p.data is not None]
        written = 0
        for p in parts:
            with p.lock:
                if p.data is None or not p.size or p.complete:
                    continue
                self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
                tmp = p.path.with_name(p.path.name + ".spill")
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    view = memoryview(p.data)[: p.size]
                    while view:
                        view = view[os.write(fd, view) :]
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, p.path)
                written += 1
        return written

    def drop(self, key: str) -> None:
        with self._lock:
            p = self._parts.pop(key, None)
            if p is not None:
                self._forget(p)
        (p.path if p is not None else self.path(key)).unlink(missing_ok=True)

    def prune(self, running: set[int]) -> None:
        """Remove the parts of tasks that no longer run."""
        with self._lock:
            for key in [k for k in self._parts if int(k.split("-", 1)[0]) not in running]:
                self._forget(self._parts.pop(key))
        if not self.root.is_dir():
            return
        for path in self.root.glob("*.part"):
            task = path.name.split("-", 1)[0]
            if task.isdigit() and int(task) not in running:
                with self._lock:
                    p = self._parts.pop(path.name.removesuffix(".part"), None)
                    if p is not None:
                        self._forget(p)
                path.unlink(missing_ok=True)
