"""Driver folders of the server (``DATA/drivers/NAME``: INF driver packages for Windows images).

- ``GET /api/drivers`` (admin API): the folders, for the deploy wizard's Windows step.
- ``GET /api/agent/drivers/NAME`` (agent credential): the folder as an uncompressed tar, only to a
  client whose running task names it (as an agent fetches only its own task's image). Only regular
  files and folders go in; a symbolic link inside the folder is left out.
"""

from __future__ import annotations

import io
import logging
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select

from fleetcast.server import presets
from fleetcast.server.api_admin import require_admin
from fleetcast.server.api_agent import AgentId, Orch
from fleetcast.server.auth import ForbiddenError
from fleetcast.server.db import Target

logger = logging.getLogger(__name__)

admin_router = APIRouter(prefix="/api", tags=["admin"], dependencies=[Depends(require_admin)])
agent_router = APIRouter(prefix="/api/agent", tags=["agent"])


class DriverFolder(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    infs: int
    files: int
    bytes: int


class DriverList(BaseModel):
    drivers: list[DriverFolder]


def _data_dir(request: Request) -> Path:
    data: Path = request.app.state.settings.data_dir
    return data


@admin_router.get("/drivers", response_model=DriverList)
def list_drivers(request: Request) -> dict[str, Any]:
    """The driver folders in ``DATA/drivers`` with their INF count, files and bytes."""
    return {"drivers": presets.list_driver_folders(_data_dir(request))}


def task_drivers(orch: Any, client_id: int) -> str | None:
    """The driver folder of the client's running task, if it has one."""
    with orch.db.sessions() as s:
        dep_id = s.scalars(
            select(Target.deployment_id)
            .where(Target.client_id == client_id, Target.state == "running")
            .order_by(Target.id.desc())
        ).first()
        if dep_id is None:
            return None
        windows = presets.stored_options(s, dep_id).get("windows") or {}
    name = windows.get("drivers")
    return str(name) if name else None


def tar_folder(folder: Path) -> Iterator[bytes]:
    """The folder's regular files and subfolders as a tar stream (paths relative to it)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w|") as tar:
        for path in sorted(folder.rglob("*")):
            if path.is_symlink() or not (path.is_file() or path.is_dir()):
                continue
            info = tar.gettarinfo(str(path), arcname=path.relative_to(folder).as_posix())
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if info.isfile():
                with path.open("rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
            if buf.tell() >= 1 << 20:
                yield buf.getvalue()
                buf.seek(0)
                buf.truncate()
    yield buf.getvalue()


@agent_router.get("/drivers/{name}", response_class=StreamingResponse)
def fetch_drivers(name: str, request: Request, orch: Orch, client_id: AgentId) -> StreamingResponse:
    folder = presets.driver_folder(_data_dir(request), name)
    wanted = task_drivers(orch, client_id)
    if wanted != name:
        raise ForbiddenError(
            f"client {client_id}'s running task does not use the driver folder {name!r}",
            hint="an agent fetches only the drivers of its current task",
        )
    logger.info("client %d: driver folder %s", client_id, name)
    return StreamingResponse(tar_folder(folder), media_type="application/x-tar")
