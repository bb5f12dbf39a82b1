"""Network capture, the server's side (issue 11): a capture task, the agent's upload routes, leases.

A capture is a deployment of one target whose task kind is "capture" (a ``captures`` row beside it), so
queueing, hand-out, progress, results, resume after an agent restart and timeouts are the orchestrator's.
What is new lives in these modules:

- here: the routes, and ``leased_packs`` (what ``store gc`` keeps);
- ``capture_admin``: ``POST /api/captures`` (admin): CLIENT (a MAC or a client name) and NAME; an existing
  image NAME is refused before anything is read, unless ``replace``; the capture view;
- ``capture_service``: the agent routes under ``/api/agent/captures/{task_id}/`` (docs/agent-protocol.md,
  "Capture"): ``begin``, ``have`` (a batch of raw 32-byte chunk digests -> where the store keeps them),
  ``packs/{id}`` and ``index`` (resumable uploads, ``capture_uploads``: ``GET`` says how many bytes
  arrived, ``PUT`` at that offset streams the rest to disk; a body cut off by the network keeps what
  arrived) and ``publish``. Each pack is verified (one zstd frame whose content hashes to its id, whose
  stored bytes hash to the announced hash) before it enters the store (``capture_ingest``);
- leases: every pack a running capture relies on -- answered by ``have`` or uploaded, not yet published --
  has a row in ``capture_leases`` until the publish; ``leased_packs`` is what ``store gc`` keeps. A lease
  expires ``lease_seconds`` after the capture's last request (a killed agent's packs are collected later,
  never under a running capture).
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from fleetcast.errors import UsageError
from fleetcast.protocol import (
    CHUNK_REQUEST,
    DIGEST_BYTES,
    MAX_CHUNK_REQUESTS,
    MAX_HAVE,
    CaptureBeginReply,
    HaveReply,
    PackStatus,
    PublishReply,
)
from fleetcast.server.api_admin import require_admin
from fleetcast.server.api_agent import AgentId, peer
from fleetcast.server.capture_service import CaptureService
from fleetcast.server.db import CaptureLease, Database, utcnow
from fleetcast.server.sessions import actor

MAX_MANIFEST_BYTES = 64 << 20
HEX64 = r"^[0-9a-f]{64}$"


def leased_packs(db: Database, *, now: datetime | None = None) -> set[str]:
    """The packs ``store gc`` must keep: those with an unexpired capture lease."""
    when = now or utcnow()
    with db.sessions() as s:
        return set(s.scalars(select(CaptureLease.pack_id).where(CaptureLease.expires_at > when).distinct()))


# ---- routes -----------------------------------------------------------------------------------------


def service(request: Request) -> CaptureService:
    svc: CaptureService | None = getattr(request.app.state, "captures", None)
    if svc is None:
        settings = request.app.state.settings
        svc = CaptureService(request.app.state.orchestrator, settings.store, settings.data_dir)
        request.app.state.captures = svc
    return svc


Svc = Annotated[CaptureService, Depends(service)]


class CaptureBody(BaseModel):
    """``fleetcast capture CLIENT NAME --disk RULE [--replace]``; strict, unknown keys refused."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid")

    client: str = Field(max_length=255)
    name: str = Field(max_length=128)
    disk: str = Field(default="0", max_length=255)
    replace: bool = False


admin_router = APIRouter(prefix="/api", tags=["captures"], dependencies=[Depends(require_admin)])
agent_router = APIRouter(prefix="/api/agent/captures", tags=["agent"])


@admin_router.post("/captures")
def create_capture(body: CaptureBody, request: Request, svc: Svc) -> dict[str, Any]:
    return svc.create(
        body.client, body.name, body.disk, replace=body.replace, actor=actor(request), address=peer(request)
    )


@admin_router.get("/captures")
def list_captures(svc: Svc) -> dict[str, Any]:
    svc.flush_counters()
    return {"captures": svc.list()}


@admin_router.get("/captures/{capture_id}")
def get_capture(capture_id: int, svc: Svc) -> dict[str, Any]:
    return svc.view(capture_id)


@agent_router.post("/{task_id}/begin", response_model=CaptureBeginReply)
def begin(task_id: int, svc: Svc, client_id: AgentId) -> dict[str, Any]:
    return svc.begin(client_id, task_id)


@agent_router.post("/{task_id}/have", response_model=HaveReply)
async def have(task_id: int, request: Request, svc: Svc, client_id: AgentId) -> dict[str, Any]:
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > MAX_HAVE * DIGEST_BYTES:
            raise UsageError(f"have request: at most {MAX_HAVE} digests ({MAX_HAVE * DIGEST_BYTES} bytes)")
    return await asyncio.to_thread(svc.have, client_id, task_id, bytes(body))


Hash = Annotated[str, Query(pattern=HEX64)]


@agent_router.get("/{task_id}/packs/{pack_id}", response_model=PackStatus)
def pack_status(
    task_id: int,
    pack_id: str,
    *,
    svc: Svc,
    client_id: AgentId,
    stored_hash: Hash,
    stored: Annotated[int, Query(ge=1)],
) -> PackStatus:
    return svc.pack_status(client_id, task_id, pack_id, stored_hash, stored)


@agent_router.put("/{task_id}/packs/{pack_id}", response_model=PackStatus)
async def put_pack(
    task_id: int, pack_id: str, request: Request, *, svc: Svc, client_id: AgentId, stored_hash: Hash,
    stored: Annotated[int, Query(ge=1)], offset: Annotated[int, Query(ge=0)] = 0,
) -> PackStatus:  # fmt: skip
    return await svc.put_pack(
        request, client_id=client_id, task_id=task_id, pack_id=pack_id, stored_hash=stored_hash,
        stored=stored, offset=offset,
    )  # fmt: skip


@agent_router.get("/{task_id}/index", response_model=PackStatus)
def index_status(
    task_id: int, *, svc: Svc, client_id: AgentId, stored: Annotated[int, Query(ge=1)]
) -> PackStatus:
    return svc.index_status(client_id, task_id, stored)


@agent_router.put("/{task_id}/index", response_model=PackStatus)
async def put_index(
    task_id: int,
    *, request: Request, svc: Svc, client_id: AgentId,
    stored: Annotated[int, Query(ge=1)], offset: Annotated[int, Query(ge=0)] = 0,
) -> PackStatus:  # fmt: skip
    return await svc.put_index(request, client_id=client_id, task_id=task_id, stored=stored, offset=offset)


@agent_router.get("/{task_id}/previous/{part}", response_class=FileResponse)
def previous(task_id: int, part: Literal["manifest", "index"], svc: Svc, client_id: AgentId) -> FileResponse:
    """The manifest or index of the image begin named as ``previous`` (streamed from the store)."""
    path = svc.previous_file(client_id, task_id, part)
    return FileResponse(
        path, media_type="application/json" if part == "manifest" else "application/octet-stream"
    )


@agent_router.post("/{task_id}/previous/chunks", response_class=Response)
async def previous_chunks(task_id: int, request: Request, svc: Svc, client_id: AgentId) -> Response:
    """Chunks of the previous image by digest and length (docs/agent-protocol.md: a re-capture reads
    the previous inode tables from them); octet-stream records of a u32 length and the bytes."""
    body = await request.body()
    if len(body) > MAX_CHUNK_REQUESTS * CHUNK_REQUEST.size:
        raise UsageError(f"previous chunks request: at most {MAX_CHUNK_REQUESTS} chunks")
    data = await asyncio.to_thread(svc.previous_chunks, client_id, task_id, body)
    return Response(data, media_type="application/octet-stream")


@agent_router.post("/{task_id}/publish", response_model=PublishReply)
async def publish(
    task_id: int, request: Request, svc: Svc, client_id: AgentId,
    reused: Annotated[int, Query(ge=0, le=2**40)] = 0,
) -> dict[str, Any]:  # fmt: skip
    body = await request.body()
    if len(body) > MAX_MANIFEST_BYTES:
        raise UsageError(f"manifest of {len(body)} bytes; at most {MAX_MANIFEST_BYTES} are accepted")
    return await asyncio.to_thread(svc.publish, client_id, task_id, body, reused=reused)
