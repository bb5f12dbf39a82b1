"""The admin API (bearer: the admin token): clients, images, deployments, events, audit."""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from fleetcast.server.api_agent import Catalog, Orch, peer
from fleetcast.server.events import EventBus, load_events
from fleetcast.server.orchestrator import MAX_PAGE, ClientQuery, DeploymentRequest
from fleetcast.server.sessions import COOKIE, actor, is_session, principal, until_ended
from fleetcast.server.views import (
    AuditList,
    ClientList,
    ClientView,
    DeploymentList,
    DeploymentView,
    EventList,
    ImageList,
    ImageView,
    PlanView,
)

logger = logging.getLogger(__name__)

# GET /api/clients pages up to this size are read on the event loop with SQLite (PostgreSQL is another
# process: the loop would wait for it to be scheduled, 690 ms heartbeat p99 at 2,000 agents under load)
INLINE_PAGE = 200


async def require_admin(request: Request, authorization: Annotated[str | None, Header()] = None) -> None:
    """The admin token (CLI, scripts) or a console session cookie (sessions.principal). ``async``: a
    token is a comparison, checked on the event loop; a session's lookup reads the database, in a
    thread. A sync dependency cost every admin request a thread round trip, which under load waits
    for the GIL behind the heartbeats (``GET /api/clients?limit=100``: 55 ms for 3 ms of work)."""
    if authorization or COOKIE not in request.cookies:
        principal(request)
    else:
        await run_in_threadpool(principal, request)


router = APIRouter(prefix="/api", tags=["admin"], dependencies=[Depends(require_admin)])


class DeploymentBody(BaseModel):
    """The body mirrors ``fleetcast deploy``'s flags. Strict: ``"batch": "2"`` or ``"grow": "yes"``
    is refused, not coerced; unknown keys are refused (a typo does not silently drop a setting)."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid")

    image: str = Field(max_length=128)
    clients: str | list[Annotated[str, Field(max_length=32)]] = Field(default="all", max_length=100_000)
    disk: str = Field(default="0", max_length=255)
    batch: int = 1
    name: str | None = Field(default=None, max_length=255)
    ip: str | None = Field(default=None, max_length=64)
    gateway: str | None = Field(default=None, max_length=64)
    dns: str | list[Annotated[str, Field(max_length=64)]] = Field(default_factory=list)
    grow: bool = False
    then: str = "reboot"
    transport: str = Field(default="unicast", max_length=16)  # unicast | multicast | auto
    min_clients: int | None = Field(default=None, ge=1, le=100_000)  # multicast start rules
    max_wait: float | None = Field(default=None, ge=0, le=86_400)
    multicast_from: int | None = Field(default=None, ge=1, le=100_000)  # auto: multicast from K
    drop_below: float | None = Field(default=None, ge=0)  # bytes/s; a slower receiver goes unicast
    repair: str | None = Field(default=None, max_length=16)  # sooner | cycle | http (server/multicast.py)

    # IP list instead of a range, and Windows options (server/presets.py, docs/console.md)
    ip_list: str | None = Field(default=None, max_length=1 << 20)  # CSV lines MAC,NAME,IP/PREFIX
    new_sid: bool = True
    reset_ids: bool = True
    drivers: str | None = Field(default=None, max_length=128)  # a folder DATA/drivers/NAME
    unattend: str = Field(default="auto", max_length=256 * 1024)  # auto | none | an unattend.xml

    def presets(self) -> dict[str, Any]:
        windows = {"new_sid": self.new_sid, "reset_ids": self.reset_ids, "drivers": self.drivers,
                   "unattend": self.unattend}  # fmt: skip
        return {
            "ip_list": self.ip_list if self.ip_list and self.ip_list.strip() else None,
            "windows": windows,
        }

    def multicast_options(self) -> dict[str, Any]:
        given = {
            "min_clients": self.min_clients,
            "max_wait": self.max_wait,
            "multicast_from": self.multicast_from,
            "drop_below": self.drop_below,
            "repair": self.repair,
        }
        return {k: v for k, v in given.items() if v is not None}

    def request(self) -> DeploymentRequest:
        dns = self.dns.split(",") if isinstance(self.dns, str) else self.dns
        return DeploymentRequest(
            image=self.image,
            clients=self.clients,
            disk=self.disk,
            batch=self.batch,
            name=self.name or None,
            ip=self.ip or None,
            gateway=self.gateway or None,
            dns=tuple(d.strip() for d in dns if d.strip()),
            grow=self.grow,
            then=self.then,
            transport=self.transport,
            multicast=self.multicast_options(),
            presets=self.presets(),
        )


@router.get("/clients", response_model=ClientList, response_model_exclude_unset=True)
async def list_clients(
    orch: Orch,
    *,
    limit: Annotated[int | None, Query(ge=1, le=MAX_PAGE)] = None,
    after: Annotated[str | None, Query(max_length=32)] = None,
    online: bool | None = None,
    state: Annotated[str | None, Query(max_length=16)] = None,
    q: Annotated[str | None, Query(max_length=255)] = None,
) -> Response:
    """Clients in MAC order. ``limit`` pages (then ``next`` is the ``after`` of the next page, null
    on the last); ``online``, ``state`` (idle, queued, running) and ``q`` (a substring of the MAC,
    host name or address) filter. Without ``limit``: every client, as before. The views are the
    response model's shape already (tests/unit/server/test_clients.py checks them against it), so
    they are encoded directly: validating 2,000 of them took longer than reading them."""
    query = ClientQuery(limit=limit, after=after, online=online, state=state, search=q or None)
    if limit is not None and limit <= INLINE_PAGE and orch.db.url.startswith("sqlite"):
        clients, after_next = orch.clients(query)  # a few ms in-process: on the loop, no thread round trip
    else:  # the whole list of 5,000 takes 100-200 ms: the loop keeps answering heartbeats meanwhile
        clients, after_next = await run_in_threadpool(orch.clients, query)
    body = {"clients": clients, "next": after_next} if limit is not None else {"clients": clients}
    return Response(
        json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode(),
        media_type="application/json",
    )


@router.get("/clients/{client_id}", response_model=ClientView)
def get_client(client_id: int, orch: Orch) -> dict[str, Any]:
    return orch.client(client_id)


@router.delete("/clients/{client_id}", response_model=ClientView)
def delete_client(client_id: int, request: Request, orch: Orch) -> dict[str, Any]:
    """Forget a client: its row, credential and entries in finished deployments (409 while it is in a
    queued or running one); the machine enrolls again as a new client. Answers the client as it was."""
    return orch.delete_client(client_id, actor=actor(request), address=peer(request))


@router.post("/clients/{client_id}/revoke", response_model=ClientView)
def revoke_client(client_id: int, request: Request, orch: Orch) -> dict[str, Any]:
    """Forget the client's credential (its agent is refused; the machine may enroll again)."""
    return orch.revoke(client_id, actor=actor(request), address=peer(request))


@router.get("/images", response_model=ImageList)
def list_images(cat: Catalog) -> dict[str, Any]:
    return {"images": [i.to_dict() for i in cat.list()]}


@router.get("/images/{name}", response_model=ImageView)
def get_image(name: str, cat: Catalog) -> dict[str, Any]:
    return cat.info(name).to_dict()


@router.post("/deployments/plan", response_model=PlanView)
def plan_deployment(body: DeploymentBody, orch: Orch) -> dict[str, Any]:
    return orch.plan(body.request()).to_dict()


@router.post("/deployments", status_code=201, response_model=DeploymentView)
def create_deployment(body: DeploymentBody, request: Request, orch: Orch) -> dict[str, Any]:
    return orch.create(body.request(), actor=actor(request), address=peer(request))


@router.get("/deployments", response_model=DeploymentList, response_model_exclude_unset=True)
def list_deployments(orch: Orch) -> dict[str, Any]:
    return {"deployments": orch.deployments()}


@router.get("/deployments/{deployment_id}", response_model=DeploymentView)
def get_deployment(deployment_id: int, orch: Orch) -> dict[str, Any]:
    return orch.deployment(deployment_id)


@router.post("/deployments/{deployment_id}/cancel", response_model=DeploymentView)
def cancel_deployment(deployment_id: int, request: Request, orch: Orch) -> dict[str, Any]:
    return orch.cancel(deployment_id, actor=actor(request), address=peer(request))


@router.post("/deployments/{deployment_id}/retry", status_code=201, response_model=DeploymentView)
def retry_deployment(deployment_id: int, request: Request, orch: Orch) -> dict[str, Any]:
    """A new deployment of the failed clients of a finished one (each keeps its name and IP)."""
    return orch.retry(deployment_id, actor=actor(request), address=peer(request))


@router.get("/events/log", response_model=EventList)
def event_log(
    orch: Orch,
    since: Annotated[int, Query(ge=0)] = 0,
    deployment_id: int | None = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
) -> dict[str, Any]:
    with orch.db.sessions() as s:
        return {"events": load_events(s, since=since, deployment_id=deployment_id, limit=limit)}


@router.get("/events", response_class=StreamingResponse)
def events(
    request: Request,
    orch: Orch,
    *,
    since: Annotated[int | None, Query(ge=0)] = None,
    deployment_id: int | None = None,
    follow: bool = True,
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    """Server-Sent Events. ``since=ID`` (or ``Last-Event-ID``) replays the log after ID first;
    ``follow=false`` replays the log and ends (for scripts and tests)."""
    bus: EventBus = request.app.state.bus
    if since is None and last_event_id and last_event_id.isdigit():
        since = int(last_event_id)

    def load_since(after: int) -> list[dict[str, Any]]:
        with orch.db.sessions() as s:
            return load_events(s, since=after, deployment_id=deployment_id)

    stream = bus.stream(load_since, since=since, deployment_id=deployment_id, follow=follow)
    if is_session(request):  # a console page's stream ends with its session (sessions.until_ended)
        stream = until_ended(stream, request)
    return StreamingResponse(
        stream,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get("/audit", response_model=AuditList)
def audit(
    orch: Orch,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
    before: Annotated[int | None, Query(ge=1)] = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
    actor: Annotated[str | None, Query(max_length=64)] = None,
) -> dict[str, Any]:
    """Newest first; ``before=ID`` pages back (pass the last id of the previous page); ``action``
    and ``actor`` filter."""
    return {"audit": orch.audit(limit, before=before, action=action, actor=actor)}
