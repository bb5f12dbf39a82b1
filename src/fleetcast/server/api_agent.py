"""The agent endpoints of docs/agent-protocol.md: enroll, heartbeat, progress, result, manifest, chunks."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from fleetcast.errors import ImageNotFound
from fleetcast.server.auth import Tokens, bearer
from fleetcast.server.db import MAX_BIG_INTEGER, MAX_INTEGER
from fleetcast.server.images import ImageCatalog
from fleetcast.server.orchestrator import Orchestrator, ProgressReport, TaskResult

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/api/agent", tags=["agent"])


class Cpu(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = ""
    cores: int = 0


class Dmi(BaseModel):
    model_config = ConfigDict(extra="allow")
    vendor: str | None = None
    model: str | None = None
    serial: str | None = None


class Disk(BaseModel):
    model_config = ConfigDict(extra="allow")
    path: str
    size: int = Field(ge=0)
    logical_sector_size: int = 512
    physical_sector_size: int = 512
    model: str | None = None
    serial: str | None = None
    wwn: str | None = None
    removable: bool = False
    rotational: bool = False


class Inventory(BaseModel):
    model_config = ConfigDict(extra="allow")
    macs: list[str] = Field(min_length=1, max_length=64)
    hostname: str = Field(default="", max_length=255)
    cpu: Cpu = Field(default_factory=Cpu)
    ram_bytes: int = Field(default=0, ge=0)
    dmi: Dmi = Field(default_factory=Dmi)
    disks: list[Disk] = Field(default_factory=list, max_length=256)
    agent_version: str = ""


class EnrollBody(BaseModel):
    enroll_token: str = Field(max_length=512)
    inventory: Inventory


class EnrollReply(BaseModel):
    client_id: int
    credential: str


class HeartbeatBody(BaseModel):
    inventory: Inventory | None = None
    task_id: int | None = None


# The columns these land in (server/db.py): BigInteger, Integer, String(255), String(16). Bounds are
# checked here, so a bad report is a 422 naming the field rather than a database error (PostgreSQL
# refuses what does not fit; SQLite would store it).
class ProgressBody(BaseModel):
    phase: str = Field(max_length=32)
    bytes_done: int = Field(default=0, ge=0, le=MAX_BIG_INTEGER)
    bytes_total: int = Field(default=0, ge=0, le=MAX_BIG_INTEGER)
    rate_bps: float = Field(default=0.0, ge=0)
    eta_seconds: float | None = None
    checkpoint_chunk: int | None = Field(default=None, ge=0, le=MAX_INTEGER)
    disk: str | None = Field(default=None, max_length=255)


class ResultBody(BaseModel):
    state: str = Field(max_length=16)
    error: str | None = Field(default=None, max_length=20_000)
    disk: str | None = Field(default=None, max_length=255)
    action: str | None = Field(default=None, max_length=16)
    changes: list[str] = Field(default_factory=list, max_length=10_000)


def orchestrator(request: Request) -> Orchestrator:
    orch: Orchestrator = request.app.state.orchestrator
    return orch


def peer(request: Request) -> str:
    return request.client.host if request.client else ""


def agent_id(request: Request, authorization: Annotated[str | None, Header()] = None) -> int:
    """The client id behind the bearer credential (401 without a valid one)."""
    return orchestrator(request).authenticate(bearer(authorization))


Orch = Annotated[Orchestrator, Depends(orchestrator)]
AgentId = Annotated[int, Depends(agent_id)]


@router.post("/enroll", response_model=EnrollReply)
def enroll(body: EnrollBody, request: Request, orch: Orch) -> dict[str, Any]:
    tokens: Tokens = request.app.state.tokens
    tokens.check_enroll(body.enroll_token)
    client_id, credential = orch.enroll(body.inventory.model_dump(), address=peer(request))
    return {"client_id": client_id, "credential": credential}


@router.post("/heartbeat")
def heartbeat(body: HeartbeatBody, request: Request, orch: Orch, client_id: AgentId) -> dict[str, Any]:
    inventory = body.inventory.model_dump() if body.inventory is not None else None
    return orch.heartbeat(client_id, task_id=body.task_id, inventory=inventory, address=peer(request))


@router.post("/tasks/{task_id}/progress")
def progress(task_id: int, body: ProgressBody, orch: Orch, client_id: AgentId) -> dict[str, Any]:
    return orch.progress(client_id, task_id, ProgressReport(**body.model_dump()))


@router.post("/tasks/{task_id}/result")
def result(task_id: int, body: ResultBody, orch: Orch, client_id: AgentId) -> dict[str, Any]:
    return orch.result(client_id, task_id, TaskResult(**body.model_dump()))


def catalog(request: Request) -> ImageCatalog:
    cat: ImageCatalog = request.app.state.catalog
    return cat


Catalog = Annotated[ImageCatalog, Depends(catalog)]


@router.get("/images/{name}/manifest", response_class=FileResponse)
def manifest(name: str, cat: Catalog, client_id: AgentId) -> FileResponse:
    return FileResponse(cat.manifest_path(name), media_type="application/json")


@router.get("/images/{name}/index", response_class=FileResponse)
def index(name: str, cat: Catalog, client_id: AgentId) -> FileResponse:
    """The binary chunk index of a format-2 image (docs/image-format.md), beside its manifest."""
    path = cat.manifest_path(name).with_name("index")
    if not path.is_file():
        raise ImageNotFound(f"image {name!r} has no chunk index (it is format version 1)")
    return FileResponse(path, media_type="application/octet-stream")


@router.get("/chunks/{chunk_id}", response_class=FileResponse)
def chunk(chunk_id: str, cat: Catalog, client_id: AgentId) -> FileResponse:
    return FileResponse(cat.chunk_path(chunk_id), media_type="application/octet-stream")
