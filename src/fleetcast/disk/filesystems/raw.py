"""Filesystems copied whole: unknown data (raw), Linux swap, and BitLocker (refused unless --force-raw).

The store elides zero ranges itself, so "the whole partition" costs only its non-zero blocks.
"""

from __future__ import annotations

import logging
from typing import BinaryIO

from fleetcast.disk.filesystems.base import Filesystem, FsType, describe
from fleetcast.errors import FilesystemError

logger = logging.getLogger(__name__)

SWAP_MAGICS = (b"SWAPSPACE2", b"SWAP-SPACE")
SWAP_PAGE_SIZES = (4096, 8192, 16384, 65536)
BITLOCKER_OEM = b"-FVE-FS-"


class Raw(Filesystem):
    fstype = FsType.RAW
    priority = 100

    def probe(self, head: bytes) -> bool:
        return True


class Swap(Filesystem):
    fstype = FsType.SWAP
    priority = 60

    @property
    def grow_note(self) -> str:
        return "swap was left at its size; run mkswap on first boot to use the whole partition"

    def probe(self, head: bytes) -> bool:
        return any(head[page - 10 : page] in SWAP_MAGICS for page in SWAP_PAGE_SIZES if len(head) >= page)


class BitLocker(Filesystem):
    fstype = FsType.BITLOCKER
    priority = 10

    def probe(self, head: bytes) -> bool:
        return head[3:11] == BITLOCKER_OEM

    def check_capturable(self, f: BinaryIO, offset: int, size: int, name: str) -> None:
        raise FilesystemError(
            f"{describe(name, size, 'BitLocker')} is encrypted with BitLocker; "
            "fleetcast cannot read its used blocks",
            hint="unlock and decrypt it in Windows first, or capture it with --force-raw",
        )
