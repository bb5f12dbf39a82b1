"""Which disks this machine has, described well enough to choose a deployment target safely.

``list_disks(allow)`` reads ``/sys/block`` (sizes, sector sizes, removable/rotational flags, model,
serial, WWN) and udev's database (``/run/udev/data/bMAJ:MIN``) where it exists, with block-device
ioctls as the fallback for an allowed device that sysfs does not describe.

The order is documented and stable across identical machines, because ``--disk 0`` means "the
first fixed disk in this order":

1. fixed disks first: not flagged removable by the kernel and not attached over USB;
2. then by bus path (the resolved ``/sys/block/NAME/device`` link, e.g.
   ``/sys/devices/pci0000:00/0000:00:17.0/ata1/...``) in natural order (``ata2`` before ``ata10``);
3. then by kernel name in natural order (``sda``, ``sdb``, ..., ``nvme0n1`` before ``nvme1n1``).

Pseudo-devices are never reported: loop, ram, zram, dm-*, sr*, fd*, nbd*, md*, mtdblock*, and
devices of size 0 (empty card readers). With ``allow`` (the agent's ``--allow-disk``), ONLY those
paths are reported, whatever they are (a loop device, or a plain image file in tests); nothing else
on the machine is listed or touched.

``in_use(path)`` says why a disk must not be overwritten (a partition mounted, active swap, a
device-mapper/md holder); the agent refuses such a disk even when the rule selects it, so an agent
started by mistake on an installed machine never overwrites the disk it runs from.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import stat
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetcast.errors import DiskError

logger = logging.getLogger(__name__)

SYS_ROOT = Path("/sys")
UDEV_ROOT = Path("/run/udev/data")

# Kernel name prefixes that are never a deployment target unless explicitly allowed.
SKIPPED_PREFIXES = ("loop", "ram", "zram", "dm-", "sr", "fd", "nbd", "md", "mtdblock")

_BLKGETSIZE64 = 0x80081272
_BLKSSZGET = 0x1268
_BLKPBSZGET = 0x127B


@dataclass(frozen=True)
class DiskInventory:
    """One disk as the agent reports it (docs/agent-protocol.md ``Disk``)."""

    path: str
    size: int
    logical_sector_size: int = 512
    physical_sector_size: int = 512
    model: str = ""
    serial: str = ""
    wwn: str = ""
    removable: bool = False
    rotational: bool = False
    # Not part of the protocol; used for the documented order.
    bus_path: str = field(default="", compare=False)
    usb: bool = field(default=False, compare=False)

    @property
    def fixed(self) -> bool:
        return not self.removable and not self.usb

    @property
    def name(self) -> str:
        return Path(self.path).name

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "size": self.size,
            "logical_sector_size": self.logical_sector_size,
            "physical_sector_size": self.physical_sector_size,
            "model": self.model,
            "serial": self.serial,
            "wwn": self.wwn,
            "removable": self.removable,
            "rotational": self.rotational,
        }

    def describe(self) -> str:
        """A short human description used in error messages."""
        parts = [f"{self.size / 1e9:.1f} GB"]
        if self.model:
            parts.append(f"model {self.model!r}")
        if self.serial:
            parts.append(f"serial {self.serial!r}")
        if not self.fixed:
            parts.append("removable")
        return f"{self.path} ({', '.join(parts)})"


def natural_key(text: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that orders digit runs numerically: ``ata2`` < ``ata10``."""
    return tuple((0, int(tok)) if tok.isdigit() else (1, tok) for tok in re.findall(r"\d+|\D+", text))


_PCI_RE = re.compile(r"^(pci)?[0-9a-f]{4}:[0-9a-f]{2}(:[0-9a-f]{2}\.[0-9a-f])?$")


def bus_key(bus_path: str) -> tuple[tuple[tuple[int, int | str], ...], ...]:
    """Sort key for a sysfs device path: PCI addresses (fixed-width hex) compare as text, every other
    path component naturally (``ata2`` < ``ata10``, ``host2`` < ``host10``)."""
    return tuple(
        ((2, part),) if _PCI_RE.match(part) else natural_key(part) for part in bus_path.split("/") if part
    )


def sort_key(disk: DiskInventory) -> tuple[Any, ...]:
    return (0 if disk.fixed else 1, bus_key(disk.bus_path), natural_key(disk.name))


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return ""


def _read_int(path: Path, default: int) -> int:
    text = _read(path)
    try:
        return int(text)
    except ValueError:
        return default


def _udev_properties(udev_root: Path, devnum: str) -> dict[str, str]:
    """``E:KEY=VALUE`` lines of udev's database entry for block device ``MAJ:MIN``."""
    props: dict[str, str] = {}
    text = _read(udev_root / f"b{devnum}")
    for line in text.splitlines():
        if line.startswith("E:") and "=" in line:
            key, _, value = line[2:].partition("=")
            props[key] = value.strip()
    return props


def _clean_wwn(text: str) -> str:
    text = text.strip()
    for prefix in ("naa.", "eui.", "t10.", "0x"):
        if text.lower().startswith(prefix):
            return "0x" + text[len(prefix) :].lower() if prefix in ("naa.", "0x") else text.lower()
    return text


def _describe_sysfs(sysdir: Path, udev_root: Path, path: str) -> DiskInventory:
    size = _read_int(sysdir / "size", 0) * 512
    devnum = _read(sysdir / "dev")
    udev = _udev_properties(udev_root, devnum) if devnum else {}
    try:
        bus_path = os.path.realpath(sysdir / "device") if (sysdir / "device").exists() else ""
    except OSError:
        bus_path = ""
    model = _read(sysdir / "device" / "model") or udev.get("ID_MODEL", "").replace("_", " ").strip()
    serial = udev.get("ID_SERIAL_SHORT") or _read(sysdir / "device" / "serial") or _read(sysdir / "serial")
    wwn = udev.get("ID_WWN_WITH_EXTENSION") or udev.get("ID_WWN") or _read(sysdir / "device" / "wwid")
    wwn = wwn or _read(sysdir / "wwid")
    return DiskInventory(
        path=path,
        size=size,
        logical_sector_size=_read_int(sysdir / "queue" / "logical_block_size", 512),
        physical_sector_size=_read_int(sysdir / "queue" / "physical_block_size", 512),
        model=model,
        serial=serial,
        wwn=_clean_wwn(wwn),
        removable=_read(sysdir / "removable") == "1",
        rotational=_read(sysdir / "queue" / "rotational") == "1",
        bus_path=bus_path,
        usb="/usb" in bus_path or udev.get("ID_BUS") == "usb",
    )


def _ioctl_int(fd: int, request: int, fmt: str) -> int:
    buf = fcntl.ioctl(fd, request, b"\0" * struct.calcsize(fmt))
    return int(struct.unpack(fmt, buf)[0])


def _describe_allowed(path: Path, sys_root: Path, udev_root: Path) -> DiskInventory:
    try:
        st = path.stat()
    except OSError as exc:
        raise DiskError(
            f"allowed disk {path} cannot be used: {exc.strerror}",
            hint="--allow-disk takes an existing block device or disk image file",
        ) from exc
    if stat.S_ISREG(st.st_mode):
        return DiskInventory(path=str(path), size=st.st_size, bus_path=str(path))
    if not stat.S_ISBLK(st.st_mode):
        raise DiskError(
            f"allowed disk {path} is neither a block device nor a file",
            hint="--allow-disk takes a block device (/dev/sdX, /dev/loopN) or a disk image file",
        )
    devnum = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    sysdir = sys_root / "dev" / "block" / devnum
    if (sysdir / "size").exists():
        return _describe_sysfs(sysdir, udev_root, str(path))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise DiskError(f"allowed disk {path} cannot be opened: {exc.strerror}") from exc
    try:
        return DiskInventory(
            path=str(path),
            size=_ioctl_int(fd, _BLKGETSIZE64, "Q"),
            logical_sector_size=_ioctl_int(fd, _BLKSSZGET, "i"),
            physical_sector_size=_ioctl_int(fd, _BLKPBSZGET, "I"),
            bus_path=str(path),
        )
    except OSError as exc:
        raise DiskError(f"allowed disk {path}: block-device ioctls failed: {exc.strerror}") from exc
    finally:
        os.close(fd)


def list_disks(
    allow: Sequence[Path] | None = None,
    *,
    sys_root: Path = SYS_ROOT,
    udev_root: Path = UDEV_ROOT,
    dev_root: Path = Path("/dev"),
) -> list[DiskInventory]:
    """The disks a deployment may target, in the documented stable order (see module docstring)."""
    disks: list[DiskInventory] = []
    if allow:
        seen: set[str] = set()
        for entry in allow:
            path = Path(entry)
            if str(path) in seen:
                continue
            seen.add(str(path))
            disks.append(_describe_allowed(path, sys_root, udev_root))
    else:
        block = sys_root / "block"
        try:
            names = sorted(p.name for p in block.iterdir())
        except OSError as exc:
            raise DiskError(f"cannot list disks: {block} is unreadable: {exc.strerror}") from exc
        for name in names:
            if name.startswith(SKIPPED_PREFIXES):
                continue
            disk = _describe_sysfs(block / name, udev_root, str(dev_root / name))
            if disk.size == 0:
                logger.debug("skipping %s: size 0 (no medium)", name)
                continue
            disks.append(disk)
    disks.sort(key=sort_key)
    return disks


def _devnum_name(sys_root: Path, devnum: str) -> str:
    try:
        return Path(os.path.realpath(sys_root / "dev" / "block" / devnum)).name
    except OSError:
        return devnum


def in_use_devnum(devnum: str, *, sys_root: Path = SYS_ROOT, proc_root: Path = Path("/proc")) -> list[str]:
    """Why the block device ``MAJ:MIN`` (or one of its partitions) must not be overwritten: mounted
    filesystems, active swap, holders (device-mapper, md). Empty when it is free."""
    sysdir = sys_root / "dev" / "block" / devnum
    devnums = {devnum}
    holders: list[str] = []
    try:
        children = list(sysdir.iterdir())
    except OSError:
        children = []
    for child in children:
        if (child / "partition").exists():
            part = _read(child / "dev")
            if part:
                devnums.add(part)
    for num in sorted(devnums):
        try:
            held = sorted(p.name for p in (sys_root / "dev" / "block" / num / "holders").iterdir())
        except OSError:
            held = []
        holders += [f"{_devnum_name(sys_root, num)} is held by {h}" for h in held]
    names = {_devnum_name(sys_root, num): num for num in devnums}
    reasons: list[str] = []
    for line in _read(proc_root / "self" / "mountinfo").splitlines():
        fields = line.split()
        if len(fields) <= 4:
            continue
        if fields[2] in devnums:
            reasons.append(f"{_devnum_name(sys_root, fields[2])} is mounted on {fields[4]}")
            continue
        # FUSE mounts (ntfs-3g: fuseblk) carry an anonymous 0:N device; their source names the partition
        sep = fields.index("-", 6) if "-" in fields[6:] else len(fields)
        source = fields[sep + 2] if len(fields) > sep + 2 else ""
        name = Path(os.path.realpath(source)).name if source.startswith("/dev/") else ""
        if name in names:
            reasons.append(f"{name} is mounted on {fields[4]}")
    for line in _read(proc_root / "swaps").splitlines()[1:]:
        name = line.split()[0] if line.split() else ""
        try:
            st = os.stat(name)
        except OSError:
            continue
        if stat.S_ISBLK(st.st_mode) and f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}" in devnums:
            reasons.append(f"{name} is in use as swap")
    return reasons + holders


def in_use(path: Path, *, sys_root: Path = SYS_ROOT, proc_root: Path = Path("/proc")) -> list[str]:
    """``in_use_devnum`` for a device path; plain files (lab disks) are never "in use"."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise DiskError(f"disk {path} cannot be inspected: {exc.strerror}") from exc
    if not stat.S_ISBLK(st.st_mode):
        return []
    return in_use_devnum(
        f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}", sys_root=sys_root, proc_root=proc_root
    )
