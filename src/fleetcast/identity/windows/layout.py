"""Where things are on a Windows volume, found case-insensitively (NTFS is case-preserving; a
directory tree copied to Linux may be spelled ``windows/system32/CONFIG``)."""

from __future__ import annotations

import logging
from pathlib import Path

from fleetcast.errors import HiveError, IdentityError

logger = logging.getLogger(__name__)

CONFIG = "Windows/System32/config"
HIVES = ("SYSTEM", "SOFTWARE", "SAM", "SECURITY")


def find(base: Path, rel: str) -> Path | None:
    """``base/rel`` with every component matched case-insensitively, or None -- also when ``rel``
    (which may come from the volume's registry) leads outside ``base``, by ``..`` or a symlink."""
    cur = base
    for part in [p for p in rel.split("/") if p and p != "."]:
        if part == "..":
            return None
        exact = cur / part
        if exact.exists():
            cur = exact
            continue
        try:
            entries = list(cur.iterdir())
        except (NotADirectoryError, FileNotFoundError):
            return None
        match = next((e for e in entries if e.name.lower() == part.lower()), None)
        if match is None:
            return None
        cur = match
    if cur != base and not cur.resolve().is_relative_to(base.resolve()):
        logger.warning("%s leads outside %s; ignored", cur, base)
        return None
    return cur


def target(base: Path, rel: str) -> Path:
    """Where to write ``rel`` below ``base``: existing components keep their spelling. A path that
    would lead outside ``base`` (a symlink on the volume) raises IdentityError."""
    cur = base
    parts = [p for p in rel.split("/") if p]
    for i, part in enumerate(parts):
        found = find(cur, part)
        if found is None:
            cur = cur.joinpath(*parts[i:])
            break
        cur = found
    if not cur.resolve().is_relative_to(base.resolve()):
        raise IdentityError(
            f"cannot write {rel} on {base}: {cur} leads outside the volume (to {cur.resolve()})",
            hint="a symlink or junction on the volume points elsewhere; remove it and retry",
        )
    return cur


def check_root(root: Path) -> None:
    try:
        if not root.is_dir():
            raise IdentityError(
                f"volume {root} is not a readable folder",
                hint="mount the Windows volume first (ntfs-3g DEVICE MOUNTPOINT) and pass the mount point",
            )
        next(iter(root.iterdir()), None)
    except PermissionError as exc:
        raise IdentityError(f"volume {root} cannot be read: permission denied", hint="run as root") from exc
    except OSError as exc:
        raise IdentityError(
            f"volume {root} cannot be read: {exc.strerror or exc}",
            hint="check the disk and the mount (dmesg); run ntfsfix on the device, or chkdsk from Windows",
        ) from exc


def config_dir(root: Path) -> Path:
    check_root(root)
    try:
        found = find(root, CONFIG)
    except OSError as exc:
        raise IdentityError(f"volume {root} cannot be read: {exc.strerror or exc}") from exc
    if found is None or not found.is_dir():
        raise HiveError(
            f"{root} is not a Windows system volume: it has no Windows\\System32\\config folder",
            hint="pass the mount point of the volume that holds the Windows folder (usually the largest "
            "NTFS partition, not the EFI or recovery partition)",
        )
    return found


def hive_path(root: Path, name: str, *, required: bool = True) -> Path | None:
    cfg = config_dir(root)
    found = find(cfg, name)
    if found is None or not found.is_file():
        if required:
            from fleetcast.identity.windows.txn import ORIG_SUFFIX

            backup = find(cfg, name + ORIG_SUFFIX)
            hint = "the volume is incomplete or not a Windows system volume"
            if backup is not None and backup.is_file():
                hint = (
                    f"a fleetcast run was interrupted while replacing it: rename {backup.name} back to "
                    f"{name}, then retry"
                )
            raise HiveError(f"{root} has no {name} hive in Windows\\System32\\config", hint=hint)
        return None
    return found


def is_windows(root: Path) -> bool:
    try:
        found = find(root, f"{CONFIG}/SYSTEM")
    except OSError:
        return False
    return found is not None and found.is_file()
