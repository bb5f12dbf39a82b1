"""The filesystem seam: ``FsType``, the ``Filesystem`` base class with its registry, and helpers the
allocation-map parsers share (bounded reads, bitmap → runs, merging extents)."""

from __future__ import annotations

import enum
import logging
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, ClassVar

from fleetcast.errors import FilesystemError
from fleetcast.progress import human_bytes

logger = logging.getLogger(__name__)

Extent = tuple[int, int]  # (byte offset relative to the partition start, length)


class FsType(enum.StrEnum):
    NTFS = "ntfs"
    EXT = "ext"
    FAT = "fat"
    SWAP = "swap"
    XFS = "xfs"
    BTRFS = "btrfs"
    BITLOCKER = "bitlocker"
    RAW = "raw"


class Filesystem:
    """One filesystem kind. Subclasses set ``fstype`` and are registered by ``__init_subclass__``.

    ``probe`` looks at the first bytes of a partition; ``used_extents`` reads the allocation map;
    ``check_capturable`` raises FilesystemError when the used blocks cannot be captured safely.
    All three only read ``f`` (an already-open file or block device) inside [offset, offset+size).

    Capabilities the rest of fleetcast asks the registry for, instead of branching on the type:
    ``probe_os`` (which OS the volume holds, read without a loop device or mount), ``grow`` (grow the
    filesystem on a device to fill it; ``growable`` says whether it can, ``grow_note`` what to tell the
    user when it cannot) and ``mount_argv`` (the command mounting it; ``mountable``).
    """

    fstype: ClassVar[FsType]
    # detection order: lower first (BitLocker before NTFS before FAT, which shares the boot-sector shape)
    priority: ClassVar[int] = 50
    growable: ClassVar[bool] = False
    mountable: ClassVar[bool] = False

    @property
    def grow_note(self) -> str:
        return f"{self.fstype} content was left as is; only the partition grew"

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        REGISTRY[cls.fstype] = cls()

    def probe(self, head: bytes) -> bool:
        return False

    def used_extents(self, f: BinaryIO, offset: int, size: int) -> list[Extent]:
        return [(0, size)] if size else []

    def check_capturable(self, f: BinaryIO, offset: int, size: int, name: str) -> None:
        return None

    def probe_os(self, source: Path, f: BinaryIO, offset: int, size: int) -> str | None:
        """ "windows", "linux" or None: the OS this volume holds (best effort, read-only)."""
        return None

    def grow(self, dev: Path) -> None:
        """Grow the filesystem on ``dev`` (a device limited to the partition) to fill it."""
        raise FilesystemError(f"{self.fstype} cannot be grown here", hint=self.grow_note)

    def mount_argv(self, dev: Path, mountpoint: Path, *, read_only: bool) -> list[str]:
        """The command that mounts the filesystem on ``dev`` at ``mountpoint``."""
        raise FilesystemError(
            f"cannot mount {dev}: {self.fstype} is not mountable on this machine",
            hint="FAT has no kernel driver here; read it with mtools (mcopy -i IMG@@OFFSET)",
        )


def mount_command(tool: str, options: str, dev: Path, mountpoint: Path, fs: str = "") -> list[str]:
    """``tool [-t fs] -o options dev mountpoint``."""
    return [tool, *(["-t", fs] if fs else []), "-o", options, os.fspath(dev), os.fspath(mountpoint)]


REGISTRY: dict[FsType, Filesystem] = {}


def describe(name: str, size: int, what: str) -> str:
    """ "partition 2 (40.0 GiB, NTFS)" -- how messages name a partition."""
    return f"{name} ({human_bytes(size)}, {what})"


def read_at(f: BinaryIO, pos: int, n: int, *, what: str, limit: int) -> bytes:
    """Exactly ``n`` bytes at absolute ``pos``; the read must stay below ``limit`` (the partition end)."""
    if pos < 0 or n < 0 or pos + n > limit:
        raise FilesystemError(
            f"{what} at byte {pos} (+{n}) lies outside the partition, which ends at byte {limit}",
            hint="the filesystem is damaged or the partition is smaller than the filesystem; "
            "capture it with --force-raw",
        )
    try:
        f.seek(pos)
        data = f.read(n)
    except OSError as exc:
        raise FilesystemError(f"cannot read {what} at byte {pos}: {exc.strerror}") from exc
    if len(data) != n:
        raise FilesystemError(f"cannot read {what} at byte {pos}: expected {n} bytes, got {len(data)}")
    return data


_RUNS = re.compile(rb"\xff+|[^\x00\xff]")


def bitmap_runs(bitmap: bytes, nbits: int) -> Iterator[tuple[int, int]]:
    """Runs (first_bit, count) of set bits in an LSB-first bitmap, limited to the first ``nbits`` bits.

    Whole 0xFF/0x00 bytes are skipped by a regular expression, only mixed bytes are looked at bit by bit,
    so a mostly-empty or mostly-full map of millions of bits takes milliseconds.
    """
    for start, count in _raw_runs(bitmap[: (nbits + 7) // 8]):
        end = min(start + count, nbits)
        if end > start:
            yield start, end - start


def _raw_runs(view: bytes) -> Iterator[tuple[int, int]]:
    run_start = -1
    run_end = -1
    for m in _RUNS.finditer(view):
        i = m.start()
        if m.group(0)[0] == 0xFF:
            start, end = i * 8, m.end() * 8
            if start == run_end:
                run_end = end
            else:
                if run_start >= 0:
                    yield run_start, run_end - run_start
                run_start, run_end = start, end
            continue
        byte = view[i]
        for bit in range(8):
            if byte >> bit & 1:
                pos = i * 8 + bit
                if pos == run_end:
                    run_end += 1
                else:
                    if run_start >= 0:
                        yield run_start, run_end - run_start
                    run_start, run_end = pos, pos + 1
    if run_start >= 0:
        yield run_start, run_end - run_start


def merge(extents: Iterable[Extent], size: int) -> list[Extent]:
    """Sort, clip to [0, size) and merge touching or overlapping extents."""
    out: list[Extent] = []
    for first, length in sorted(extents):
        end = min(first + length, size)
        start = max(first, 0)
        if end <= start:
            continue
        if out and start <= out[-1][0] + out[-1][1]:
            prev_start, prev_len = out[-1]
            out[-1] = (prev_start, max(prev_start + prev_len, end) - prev_start)
        else:
            out.append((start, end - start))
    return out


def total(extents: Iterable[Extent]) -> int:
    return sum(length for _, length in extents)
