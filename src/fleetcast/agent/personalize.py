"""The agent's personalize step: find the OS partition of the written disk, mount it, run the
personalizer registered for its OS, unmount.

The partition is mounted through a loop device with ``offset``/``sizelimit`` on the target, so it
works on kernels that parse no partition tables as well as on a normal Debian kernel (and on a disk
image file). ext2/3/4 mount natively; NTFS through ntfs-3g (FUSE). Candidates are tried in this order:
the partitions the image's manifest marks with an ``os_hint``, then every other ext/NTFS partition.
A Linux root has ``/etc/os-release`` (or ``/usr/lib/os-release``); a Windows system volume has
``Windows/System32/config``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fleetcast.disk import filesystems
from fleetcast.disk.filesystems import FsType, detect
from fleetcast.errors import AgentError, CommandError, FleetcastError, IdentityError
from fleetcast.identity import base
from fleetcast.identity.base import IdentitySettings, OsKind
from fleetcast.run import run
from fleetcast.store.manifest import Manifest

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    number: int
    offset: int  # bytes
    size: int  # bytes
    fstype: FsType
    hint: str | None


def _register_personalizers() -> None:
    import fleetcast.identity.linux  # registers LinuxPersonalizer

    try:
        import fleetcast.identity.windows  # noqa: F401
    except ImportError as exc:  # the Windows personalizer is built elsewhere; say so only when needed
        logger.debug("Windows personalizer not importable: %s", exc)


def candidates(target: Path, manifest: Manifest | None) -> list[Candidate]:
    """Partitions of the written disk that may hold an OS, hinted ones first (no manifest: a disk
    personalized again without an image, issue 13 personalize-only tasks)."""
    from fleetcast.disk.partitions import read_table

    table = read_table(target)
    areas = manifest.areas if manifest is not None else []
    hints = {a.number: a.os_hint for a in areas if a.kind == "partition" and a.number is not None}
    found: list[Candidate] = []
    try:
        with open(target, "rb") as f:
            for part in table.partitions:
                offset, size = part.start * table.sector_size, part.size * table.sector_size
                fstype = detect(f, offset, size)
                if fstype in (FsType.EXT, FsType.NTFS):
                    found.append(Candidate(part.number, offset, size, fstype, hints.get(part.number)))
            if not table.partitions and table.label == "none":
                size = os.lseek(f.fileno(), 0, os.SEEK_END)
                fstype = detect(f, 0, size)
                if fstype in (FsType.EXT, FsType.NTFS):
                    found.append(Candidate(0, 0, size, fstype, manifest.os_hint if manifest else None))
    except OSError as exc:
        raise AgentError(f"cannot read the written disk {target}: {exc.strerror}") from exc
    found.sort(key=lambda c: (c.hint is None, c.number))
    return found


@contextlib.contextmanager
def mounted(target: Path, cand: Candidate) -> Iterator[Path]:
    """Mount one partition of ``target`` read-write on a temporary directory; always unmount."""
    from fleetcast.disk.loop import attach

    with attach(target, offset=cand.offset, sizelimit=cand.size) as dev:
        mountpoint = Path(tempfile.mkdtemp(prefix="fleetcast-root-"))
        try:
            try:
                run(filesystems.get(cand.fstype).mount_argv(dev, mountpoint, read_only=False))
            except CommandError as exc:
                raise AgentError(
                    f"cannot mount partition {cand.number} ({cand.fstype}) of {target}: "
                    f"{exc.stderr or exc.message}"
                ) from exc
            try:
                yield mountpoint
            finally:
                run(["sync", "-f", os.fspath(mountpoint)], check=False)
                proc = run(["umount", os.fspath(mountpoint)], check=False)
                if proc.returncode != 0:
                    logger.warning("umount %s failed; retrying lazily", mountpoint)
                    run(["umount", "-l", os.fspath(mountpoint)], check=False)
        finally:
            with contextlib.suppress(OSError):
                mountpoint.rmdir()


def os_kind(root: Path) -> OsKind | None:
    if (root / "etc" / "os-release").exists() or (root / "usr" / "lib" / "os-release").exists():
        return OsKind.LINUX
    if (root / "Windows" / "System32" / "config").is_dir():
        return OsKind.WINDOWS
    return None


def personalize(
    target: Path, manifest: Manifest | None, settings: IdentitySettings
) -> tuple[OsKind, list[str]]:
    """Personalize the OS on the freshly written ``target`` (``manifest`` None: on a disk deployed
    before, no image written now); return its kind and the change lines."""
    what = f"image {manifest.name!r} on {target}" if manifest is not None else f"disk {target}"
    _register_personalizers()
    cands = candidates(target, manifest)
    if not cands:
        raise AgentError(
            f"{what} has no ext or NTFS partition to personalize",
            hint="deploy it without a name/IP, or capture an image that holds an operating system",
        )
    for cand in cands:
        with mounted(target, cand) as root:
            kind = os_kind(root)
            if kind is None:
                logger.debug("partition %d of %s holds no OS", cand.number, target)
                continue
            logger.info("partition %d of %s holds a %s system", cand.number, target, kind)
            try:
                personalizer = base.get(kind)
            except IdentityError as exc:
                raise AgentError(
                    f"{what} holds a {kind} system (partition {cand.number}) but this agent "
                    f"has no {kind} personalizer: {exc.message}",
                    hint="deploy without --name/--ip, or use an agent with Windows identity support",
                ) from exc
            try:
                return kind, personalizer.personalize(root, settings)
            except FleetcastError:
                raise
            except OSError as exc:
                raise AgentError(f"personalizing partition {cand.number} of {target} failed: {exc}") from exc
    numbers = ", ".join(str(c.number) for c in cands)
    raise AgentError(
        f"{what}: none of partitions {numbers} holds /etc/os-release or Windows/System32/config",
        hint="the image holds no operating system fleetcast can personalize",
    )
