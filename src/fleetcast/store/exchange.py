"""Images to and from other disk-image formats: ``image export`` (raw, qcow2) and ``image import``
(raw, qcow2, vhdx). Conversions go through ``qemu-img`` and a sparse raw file in the store's tmp/ directory
(inside a locked work directory, so ``store check`` sees it as a running job, not a leftover)."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fleetcast.errors import CommandError, StoreError, UsageError
from fleetcast.progress import ProgressFn
from fleetcast.run import run, run_text
from fleetcast.store.capture import CaptureStats, capture
from fleetcast.store.images import ImageStore
from fleetcast.store.manifest import Manifest
from fleetcast.store.restore import restore

logger = logging.getLogger(__name__)

EXPORT_FORMATS = {".qcow2": "qcow2", ".img": "raw", ".raw": "raw", "": "raw"}
IMPORT_FORMATS = ("raw", "qcow2", "vhdx")


def export_format(file: Path) -> str:
    fmt = EXPORT_FORMATS.get(file.suffix.lower())
    if fmt is None:
        raise UsageError(
            f"cannot tell the export format of {file} from its extension {file.suffix!r}",
            hint="use .qcow2 for qcow2, or .img / .raw (or no extension) for a raw disk image",
        )
    return fmt


@contextmanager
def _workdir(store: ImageStore, kind: str) -> Iterator[Path]:
    store.ensure()
    d = store.tmp_dir / f"{kind}-{os.getpid()}-{secrets.token_hex(4)}"
    d.mkdir()
    fd = os.open(d / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield d
    finally:
        os.close(fd)
        shutil.rmtree(d, ignore_errors=True)


def export_image(store: ImageStore, name: str, file: Path, *, progress: ProgressFn | None = None) -> str:
    """Write image ``name`` as a disk-image file; returns the format written."""
    file = Path(file)
    fmt = export_format(file)
    manifest = store.open(name)
    if file.exists():
        raise UsageError(f"export target {file} already exists", hint="remove it or pick another file name")
    if not file.parent.is_dir():
        raise UsageError(f"cannot export to {file}: directory {file.parent} does not exist")
    if fmt == "raw":
        try:
            restore(manifest, store.source(), file, progress=progress)
        except BaseException:
            file.unlink(missing_ok=True)
            raise
        return fmt
    with _workdir(store, "export") as work:
        raw = work / "disk.raw"
        restore(manifest, store.source(), raw, progress=progress)
        try:
            run(["qemu-img", "convert", "-f", "raw", "-O", fmt, os.fspath(raw), os.fspath(file)])
        except CommandError as exc:
            file.unlink(missing_ok=True)
            raise StoreError(f"cannot convert image {name!r} to {fmt}: {exc.stderr or exc.message}") from exc
    return fmt


def probe_format(file: Path) -> str:
    """The disk-image format qemu-img sees in ``file`` (raw, qcow2, vhdx, ...)."""
    if not file.exists():
        raise UsageError(f"import source {file} does not exist")
    if file.is_dir():
        raise UsageError(f"import source {file} is a directory, expected a disk-image file")
    try:
        info = json.loads(run_text(["qemu-img", "info", "--output=json", os.fspath(file)]))
        fmt = str(info["format"])
    except CommandError as exc:
        raise UsageError(
            f"{file} is not a disk image qemu-img can read: {exc.stderr or exc.message}"
        ) from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"qemu-img gave unreadable information about {file}") from exc
    if fmt not in IMPORT_FORMATS:
        raise UsageError(
            f"{file} is a {fmt} image; fleetcast imports {', '.join(IMPORT_FORMATS)}",
            hint=f"convert it first: qemu-img convert -O raw {file} disk.raw",
        )
    return fmt


def import_image(
    store: ImageStore,
    file: Path,
    name: str,
    *,
    progress: ProgressFn | None = None,
    stats: CaptureStats | None = None,
) -> Manifest:
    """Capture a raw, qcow2 or vhdx disk-image file as image ``name``."""
    file = Path(file)
    fmt = probe_format(file)
    if store.exists(name):
        return capture(file, name, store)  # raises the "already exists" error before any conversion
    if fmt == "raw":
        return capture(file, name, store, progress=progress, stats=stats)
    with _workdir(store, "import") as work:
        raw = work / "disk.raw"
        try:
            run(["qemu-img", "convert", "-f", fmt, "-O", "raw", os.fspath(file), os.fspath(raw)])
        except CommandError as exc:
            raise StoreError(f"cannot convert {file} from {fmt} to raw: {exc.stderr or exc.message}") from exc
        return capture(raw, name, store, progress=progress, stats=stats)
