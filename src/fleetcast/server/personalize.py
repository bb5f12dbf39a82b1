"""Personalize-only deployments, the server's side (issue 13): ``POST /api/personalizations``.

Machines that were cloned without a new machine SID (``fleetcast audit sids`` lists them) get their
own identity without being imaged again: a deployment whose targets' tasks are of kind "personalize"
(a ``personalizations`` row beside it says so, and carries ``new_sid``/``reset_ids``). Queueing,
hand-out, progress, results, cancel and timeouts are the orchestrator's, as for a capture; the agent
runs the offline personalizer on the disk the rule picks (agent/repersonalize.py). No image is
involved: the deployment's ``image`` is empty and nothing is fetched.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from fleetcast.errors import UsageError
from fleetcast.server import plan as planner
from fleetcast.server.api_admin import require_admin
from fleetcast.server.api_agent import peer
from fleetcast.server.db import Client, Deployment, PersonalizeRow, Target, utcnow
from fleetcast.server.orchestrator import Orchestrator
from fleetcast.server.sessions import actor

logger = logging.getLogger(__name__)

MAX_CLIENTS = 10_000


class PersonalizeBody(BaseModel):
    """``fleetcast personalize CLIENTS --new-sid [--name PATTERN] [--disk RULE]``; strict, unknown
    keys refused. ``clients``: "all" or MACs (as for a deployment)."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid")

    clients: str | list[Annotated[str, Field(max_length=64)]] = Field(max_length=MAX_CLIENTS)
    disk: str = Field(default="0", max_length=255)
    name: str | None = Field(default=None, max_length=255)
    new_sid: bool = True
    reset_ids: bool = True
    batch: int = Field(default=5, ge=1, le=MAX_CLIENTS)
    then: str = Field(default="none", max_length=16)


def create(orch: Orchestrator, body: PersonalizeBody, *, actor: str, address: str) -> dict[str, Any]:
    from sqlalchemy import select

    planner.check_request(body.batch, body.then, body.disk)
    if not (body.new_sid or body.reset_ids or body.name):
        raise UsageError(
            "nothing to personalize: no new SID, no ID reset and no name",
            hint="add --new-sid (what clones sharing a machine SID need) or --name PATTERN",
        )
    with orch._tx() as s:
        enrolled = [
            planner.PlanClient(c.id, c.mac, tuple(c.inventory.get("macs", ()) or ()), c.hostname)
            for c in s.scalars(select(Client).order_by(Client.mac))
        ]
        chosen = planner.select_clients(body.clients, enrolled)
        names: list[str | None] = (
            list(planner.render_names(body.name, len(chosen), max_length=planner.WINDOWS_NAME_MAX))
            if body.name
            else [None] * len(chosen)
        )
        dep = Deployment(
            image="", image_size=0, disk_rule=body.disk.strip(), batch=body.batch, name_pattern=body.name,
            then=body.then, state="running", created_at=utcnow(), created_by=actor,
        )  # fmt: skip
        targets = [
            Target(client_id=c.client_id, position=n, mac=c.mac, name=name, state="queued")
            for n, (c, name) in enumerate(zip(chosen, names, strict=True), start=1)
        ]
        detail = {
            "clients": [c.mac for c in chosen], "disk": body.disk, "name": body.name,
            "new_sid": body.new_sid, "reset_ids": body.reset_ids,
        }  # fmt: skip
        view = orch._start(
            s, dep, targets, actor=actor, address=address, action="personalize-create", detail=detail
        )
        s.add(PersonalizeRow(deployment_id=dep.id, new_sid=body.new_sid, reset_ids=body.reset_ids))
        s.flush()
        logger.info("personalize %d: %d client(s), disk rule %r, new SID %s", dep.id, len(targets),
                    body.disk, body.new_sid)  # fmt: skip
        return {**view, "kind": "personalize", "new_sid": body.new_sid, "reset_ids": body.reset_ids}


router = APIRouter(prefix="/api", tags=["personalize"], dependencies=[Depends(require_admin)])


@router.post("/personalizations", status_code=201)
def create_personalization(body: PersonalizeBody, request: Request) -> dict[str, Any]:
    """A personalize-only deployment: the OS on each client's disk gets a new identity, no image."""
    return create(request.app.state.orchestrator, body, actor=actor(request), address=peer(request))
