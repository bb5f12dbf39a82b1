"""The multicast HTTP API: agents join and report, administrators see sessions and change rules.

``POST /api/agent/multicast/{task}/join`` and ``.../report`` (agents), ``GET`` / ``POST
/api/deployments/{id}/multicast`` (administrators); the session manager is server/multicast.py, and
docs/multicast.md describes the fields.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from fleetcast.errors import UsageError
from fleetcast.server.api_admin import require_admin
from fleetcast.server.api_agent import AgentId, peer
from fleetcast.server.multicast import MulticastManager


class MemberReport(BaseModel):
    """What a receiving agent reports about once a second: its interface's received bytes (the drop
    rule compares them), the packs it took from the stream, and at the end how it finished."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid")

    session: str = Field(min_length=32, max_length=32)
    rx_bytes: int | None = Field(default=None, ge=0)
    packs: int = Field(default=0, ge=0)
    done: dict[str, int | str] | None = Field(default=None, max_length=16)


class JoinBody(BaseModel):
    """What a joining agent lacks: ``[start, end)`` ranges of the image's pack order (none: all)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    missing: list[list[int]] | None = Field(default=None, max_length=1_000_000)


class RulesBody(BaseModel):
    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid")

    min_clients: int | None = Field(default=None, ge=1, le=100_000)
    max_wait: float | None = Field(default=None, ge=0, le=86_400)
    repair: str | None = Field(default=None, max_length=16)  # sooner | cycle | http
    start_now: bool = False


def manager(request: Request) -> MulticastManager:
    mgr: MulticastManager = request.app.state.multicast
    return mgr


Manager = Annotated[MulticastManager, Depends(manager)]


agent_router = APIRouter(prefix="/api/agent/multicast", tags=["agent"])
admin_router = APIRouter(prefix="/api/deployments", tags=["admin"], dependencies=[Depends(require_admin)])


@agent_router.post("/{task_id}/join")
def join(
    task_id: int, request: Request, mgr: Manager, client_id: AgentId, body: JoinBody | None = None
) -> dict[str, Any]:
    """Join the batch's session (or its next cycle): ``waiting``/``starting``/``streaming`` with the
    group and port, or ``late`` / ``none`` (then the agent takes the packs it lacks by HTTP)."""
    return mgr.join(client_id, task_id, peer(request), body.missing if body else None)


@agent_router.post("/{task_id}/report")
def report(task_id: int, body: MemberReport, mgr: Manager, client_id: AgentId) -> dict[str, Any]:
    return mgr.report(client_id, task_id, body)


@admin_router.get("/{deployment_id}/multicast")
def show(deployment_id: int, mgr: Manager) -> dict[str, Any]:
    """The deployment's transport, start rules and sessions (members, sender PID, bytes sent)."""
    return mgr.view(deployment_id)


@admin_router.post("/{deployment_id}/multicast")
def rules(deployment_id: int, body: RulesBody, mgr: Manager) -> dict[str, Any]:
    """Change the start rules while the session waits (``fleetcast deployments multicast ID``)."""
    if body.min_clients is None and body.max_wait is None and body.repair is None and not body.start_now:
        raise UsageError("nothing to change: give min_clients, max_wait, repair and/or start_now")
    mgr.set_rules(
        deployment_id, min_clients=body.min_clients, max_wait=body.max_wait, repair=body.repair,
        start_now=body.start_now,
    )  # fmt: skip
    return mgr.view(deployment_id)
