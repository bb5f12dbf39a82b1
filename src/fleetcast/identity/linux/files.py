"""Writing inside a mounted foreign root safely: no path may leave the root, even through the image's
own absolute symlinks (``/etc/resolv.conf -> /run/...`` names the *host's* /run once mounted)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from fleetcast.errors import IdentityError


def inside(root: Path, rel: str) -> Path:
    """``root/rel`` after checking that its parent directory resolves inside ``root``."""
    rel = rel.lstrip("/")
    target = root / rel
    real_root = os.path.realpath(root)
    parent = os.path.realpath(target.parent)
    if parent != real_root and not parent.startswith(real_root + os.sep):
        raise IdentityError(
            f"{'/' + rel} in the deployed system resolves outside it (to {parent})",
            hint="the image has a symlinked directory pointing outside its root; fix the golden image",
        )
    return target


def read(root: Path, rel: str) -> str | None:
    target = inside(root, rel)
    if target.is_symlink() or not target.is_file():
        return None
    try:
        return target.read_text(errors="replace")
    except OSError as exc:
        raise IdentityError(
            f"cannot read {'/' + rel.lstrip('/')} in the deployed system: {exc.strerror}"
        ) from exc


def write(root: Path, rel: str, content: str, *, mode: int = 0o644) -> Path:
    """Write-to-temp, fsync, rename; a symlink at the target is replaced, never followed."""
    target = inside(root, rel)
    tmp = target.with_name(f".{target.name}.fleetcast-tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
        try:
            os.write(fd, content.encode())
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):  # never leave the temporary file in the deployed system
            tmp.unlink()
        raise IdentityError(
            f"cannot write {'/' + rel.lstrip('/')} in the deployed system: {exc.strerror}"
        ) from exc
    return target


def remove(root: Path, rel: str) -> bool:
    """Remove a file or symlink; False when there was nothing."""
    target = inside(root, rel)
    if not target.is_symlink() and not target.exists():
        return False
    try:
        target.unlink()
    except OSError as exc:
        raise IdentityError(
            f"cannot remove {'/' + rel.lstrip('/')} in the deployed system: {exc.strerror}"
        ) from exc
    return True


def rename(root: Path, rel: str, new_rel: str) -> None:
    """Rename a file or symlink inside the root; a symlink is moved as it is, never followed."""
    source, target = inside(root, rel), inside(root, new_rel)
    try:
        os.replace(source, target)
    except OSError as exc:
        raise IdentityError(
            f"cannot rename {'/' + rel.lstrip('/')} to {'/' + new_rel.lstrip('/')} in the deployed system: "
            f"{exc.strerror}"
        ) from exc


def symlink(root: Path, rel: str, points_to: str) -> None:
    target = inside(root, rel)
    try:
        if target.is_symlink() or target.exists():
            target.unlink()
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(points_to, target)
    except OSError as exc:
        raise IdentityError(
            f"cannot link {'/' + rel.lstrip('/')} in the deployed system: {exc.strerror}"
        ) from exc


def exists(root: Path, rel: str) -> bool:
    target = root / rel.lstrip("/")
    return target.is_symlink() or target.exists()
