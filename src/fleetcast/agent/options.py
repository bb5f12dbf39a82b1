"""The deployment's personalization options as the agent applies them: ``IdentitySettings`` from a
task, with its driver folder fetched from the server (``GET /api/agent/drivers/NAME``, a tar unpacked
into a temporary folder: only regular files and folders, every path checked to stay inside) and a
given unattend.xml written to a temporary file. Both are removed afterwards."""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Protocol

from fleetcast.errors import AgentError
from fleetcast.identity.base import IdentitySettings
from fleetcast.protocol import Task

logger = logging.getLogger(__name__)

MAX_DRIVER_BYTES = 4 << 30
MAX_DRIVER_FILES = 100_000


class DriverSource(Protocol):
    def drivers(self, name: str) -> bytes: ...


def unpack_drivers(data: bytes, dest: Path) -> int:
    """Unpack a driver folder's tar into ``dest``; return the number of files. Links, devices,
    absolute paths and ``..`` are refused (the server never sends them)."""
    files = total = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar:
                rel = PurePosixPath(member.name)
                if rel.is_absolute() or ".." in rel.parts or not rel.parts:
                    raise AgentError(f"driver folder: entry {member.name!r} leaves the folder")
                path = dest.joinpath(*rel.parts)
                if member.isdir():
                    path.mkdir(parents=True, exist_ok=True)
                    continue
                if not member.isfile():
                    raise AgentError(f"driver folder: entry {member.name!r} is not a file or folder")
                files += 1
                total += member.size
                if files > MAX_DRIVER_FILES or total > MAX_DRIVER_BYTES:
                    raise AgentError(
                        f"driver folder: more than {MAX_DRIVER_FILES} files or {MAX_DRIVER_BYTES} bytes"
                    )
                path.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                if source is None:
                    raise AgentError(f"driver folder: entry {member.name!r} cannot be read")
                with source, path.open("wb") as out:
                    shutil.copyfileobj(source, out)
    except (tarfile.TarError, OSError) as exc:
        raise AgentError(f"driver folder: the server's tar cannot be unpacked: {exc}") from exc
    return files


@contextlib.contextmanager
def identity_settings(task: Task, api: DriverSource, mac: str | None) -> Iterator[IdentitySettings]:
    """``IdentitySettings`` for ``task``: name, IP and the Windows options."""
    drivers_name = task.drivers
    unattend = task.unattend or "auto"
    with tempfile.TemporaryDirectory(prefix="fleetcast-options-") as tmp:
        work = Path(tmp)
        drivers: Path | None = None
        if drivers_name:
            drivers = work / "drivers"
            drivers.mkdir()
            count = unpack_drivers(api.drivers(drivers_name), drivers)
            logger.info("task %d: driver folder %s: %d files", task.task_id, drivers_name, count)
        if unattend not in ("auto", "none"):
            path = work / "unattend.xml"
            path.write_text(unattend, encoding="utf-8")
            unattend = str(path)
        yield IdentitySettings(
            name=task.name,
            ip=task.ip,
            gateway=task.gateway,
            dns=tuple(task.dns),
            mac=mac or None,
            new_sid=task.new_sid,
            reset_ids=task.reset_ids,
            drivers=drivers,
            extra={"unattend": unattend},
        )
