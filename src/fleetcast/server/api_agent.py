"""The agent endpoints of docs/agent-protocol.md: enroll, heartbeat, progress, result, manifest, chunks."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from fleetcast.errors import ImageNotFound
from fleetcast.protocol import (
    EnrollReply,
    EnrollRequest,
    HeartbeatReply,
    HeartbeatRequest,
    ProgressReply,
    ProgressReport,
    ResultReply,
    TaskResult,
)
from fleetcast.server.auth import ForbiddenError, Tokens, bearer
from fleetcast.server.enrollment import EnrollItem, EnrollQueue
from fleetcast.server.images import ImageCatalog, check_chunk_id, check_name
from fleetcast.server.orchestrator import Orchestrator

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/api/agent", tags=["agent"])


async def orchestrator(request: Request) -> Orchestrator:
    """A dependency: ``async`` so FastAPI does not hop to a worker thread for it (a sync
    dependency costs a thread round trip on every request, half an idle heartbeat's CPU)."""
    orch: Orchestrator = request.app.state.orchestrator
    return orch


def peer(request: Request) -> str:
    return request.client.host if request.client else ""


async def agent_id(request: Request, authorization: Annotated[str | None, Header()] = None) -> int:
    """The client id behind the bearer credential (401 without a valid one): from the presence
    cache on the event loop when it knows the credential, else a database lookup in a thread."""
    orch: Orchestrator = request.app.state.orchestrator
    credential = bearer(authorization)
    client_id = orch.cached_client(credential)
    if client_id is None:
        client_id = await run_in_threadpool(orch.authenticate, credential)
    return client_id


Orch = Annotated[Orchestrator, Depends(orchestrator)]
AgentId = Annotated[int, Depends(agent_id)]


@router.post("/enroll", response_model=EnrollReply)
async def enroll(body: EnrollRequest, request: Request) -> dict[str, Any]:
    """Written in batches with the enrollments that arrive meanwhile (server/enrollment.py)."""
    tokens: Tokens = request.app.state.tokens
    tokens.check_enroll(body.enroll_token)
    queue: EnrollQueue = request.app.state.enroll_queue
    item = EnrollItem(body.inventory.model_dump(), peer(request), body.credential, tokens.admin.encode())
    client_id, credential = await queue.enroll(item)
    return {"client_id": client_id, "credential": credential}


@router.post("/heartbeat", response_model=HeartbeatReply)
async def heartbeat(
    body: HeartbeatRequest, request: Request, orch: Orch, client_id: AgentId
) -> dict[str, Any]:
    """An idle, online client's heartbeat is answered from memory on the event loop (no thread, no
    query: server/presence.py); anything else goes through the orchestrator in a thread."""
    address = peer(request)
    reply = orch.fast_heartbeat(
        client_id, task_id=body.task_id, inventory=body.inventory is not None, address=address
    )
    if reply is not None:
        return reply
    inventory = body.inventory.model_dump() if body.inventory is not None else None

    def full() -> dict[str, Any]:
        answer = orch.heartbeat(client_id, task_id=body.task_id, inventory=inventory, address=address)
        orch.presence.refresh()
        return answer

    return await run_in_threadpool(full)


@router.post("/tasks/{task_id}/progress", response_model=ProgressReply)
def progress(task_id: int, body: ProgressReport, orch: Orch, client_id: AgentId) -> dict[str, Any]:
    return orch.progress(client_id, task_id, body)


@router.post("/tasks/{task_id}/result", response_model=ResultReply)
def result(task_id: int, body: TaskResult, orch: Orch, client_id: AgentId) -> dict[str, Any]:
    return orch.result(client_id, task_id, body)


async def catalog(request: Request) -> ImageCatalog:
    cat: ImageCatalog = request.app.state.catalog
    return cat


Catalog = Annotated[ImageCatalog, Depends(catalog)]


def task_image(orch: Orchestrator, client_id: int, wanted: str) -> str:
    """The image of the client's running task; 403 when it has none, or ``wanted`` is another."""
    image = orch.task_image(client_id)
    if image is None:
        raise ForbiddenError(
            f"client {client_id} has no running task, so it may not fetch {wanted}",
            hint="an agent fetches only the image of its current task",
        )
    return image


def own_image(orch: Orchestrator, client_id: int, name: str) -> str:
    check_name(name)
    image = task_image(orch, client_id, f"image {name!r}")
    if image != name:
        raise ForbiddenError(
            f"client {client_id}'s task deploys image {image!r}, not {name!r}",
            hint="an agent fetches only the image of its current task",
        )
    return name


def agent_path(cat: ImageCatalog, name: str) -> Path:
    """The manifest of ``name``; when it is gone the agent is told so without the server's store
    path (issue 12 item 9)."""
    try:
        return cat.manifest_path(name)
    except ImageNotFound:
        raise ImageNotFound(
            f"image {name!r} is no longer on the server (removed while this task ran)",
            hint="ask the server's administrator; `fleetcast image list` there shows the images",
        ) from None


@router.get("/images/{name}/manifest", response_class=FileResponse)
def manifest(name: str, cat: Catalog, orch: Orch, client_id: AgentId) -> FileResponse:
    own_image(orch, client_id, name)
    return FileResponse(agent_path(cat, name), media_type="application/json")


@router.get("/images/{name}/index", response_class=FileResponse)
def index(name: str, cat: Catalog, orch: Orch, client_id: AgentId) -> FileResponse:
    """The binary chunk index of a format-2 image (docs/image-format.md), beside its manifest."""
    own_image(orch, client_id, name)
    path = agent_path(cat, name).with_name("index")
    if not path.is_file():
        raise ImageNotFound(f"image {name!r} has no chunk index (it is format version 1)")
    return FileResponse(path, media_type="application/octet-stream")


@router.get("/chunks/{chunk_id}", response_class=FileResponse)
def chunk(chunk_id: str, cat: Catalog, orch: Orch, client_id: AgentId) -> FileResponse:
    check_chunk_id(chunk_id)
    image = task_image(orch, client_id, f"pack {chunk_id}")
    if chunk_id not in cat.pack_ids(image):
        raise ForbiddenError(
            f"pack {chunk_id} is not part of image {image!r}, which client {client_id}'s task deploys",
            hint="an agent fetches only the image of its current task",
        )
    return FileResponse(cat.chunk_path(chunk_id), media_type="application/octet-stream")
