"""Dict views of database rows: what the API answers for a deployment, its clients and a client
(docs/server.md lists the keys; server/views.py has their response models)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, object_session

from fleetcast.server.db import (
    CaptureRow,
    Client,
    Deployment,
    PersonalizeRow,
    Target,
    isoformat,
)

ACTIVE_TARGET = ("queued", "running")
TERMINAL_TARGET = ("done", "failed", "cancelled")
ACTIVE_DEPLOYMENT = ("running", "cancelling")


def seconds_between(later: datetime, earlier: datetime | None) -> float | None:
    return (later - earlier).total_seconds() if earlier is not None else None


def target_view(t: Target) -> dict[str, Any]:
    """One client of a deployment; the first nine keys are what ``deploy --wait --json`` prints."""
    return {
        "mac": t.mac,
        "name": t.name,
        "ip": t.ip,
        "disk": t.disk,
        "state": t.state,
        "bytes": t.bytes_done,
        "started_at": isoformat(t.started_at),
        "finished_at": isoformat(t.finished_at),
        "error": t.error,
        "n": t.position,
        "task_id": t.id,
        "client_id": t.client_id,
        "phase": t.phase,
        "bytes_total": t.bytes_total,
        "rate_bps": t.rate_bps,
        "eta_seconds": t.eta_seconds,
        "checkpoint_chunk": t.checkpoint_chunk,
        "attempt": t.attempt,
        "resumes": t.resumes,
        "restarts": t.restarts,
        "action": t.action,
        "changes": list(t.changes or []),
    }


def deployment_kind(s: Session | None, deployment_id: int) -> str:
    """ "capture" (a captures row), "personalize" (a personalizations row) or "deploy", as _task_dict
    hands its tasks out."""
    if s is None:
        return "deploy"
    if s.scalars(select(CaptureRow.id).where(CaptureRow.deployment_id == deployment_id)).first() is not None:
        return "capture"
    by_dep = PersonalizeRow.deployment_id == deployment_id
    return (
        "personalize" if s.scalars(select(PersonalizeRow.id).where(by_dep)).first() is not None else "deploy"
    )


def deployment_view(d: Deployment, *, with_clients: bool = True, kind: str | None = None) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for t in d.targets:
        counts[t.state] = counts.get(t.state, 0) + 1
    view: dict[str, Any] = {
        "deployment": d.id,
        "image": d.image,
        "state": d.state,
        "disk": d.disk_rule,
        "batch": d.batch,
        "name": d.name_pattern,
        "ip": d.ip_range,
        "gateway": d.gateway,
        "dns": list(d.dns or []),
        "grow": d.grow,
        "then": d.then,
        "transport": d.transport,
        "created_at": isoformat(d.created_at),
        "finished_at": isoformat(d.finished_at),
        "created_by": d.created_by,
        "counts": counts,
        "kind": kind or deployment_kind(object_session(d), d.id),
    }
    if with_clients:
        view["clients"] = [target_view(t) for t in d.targets]
    return view


def client_view(c: Client, active: Target | None, inventory: dict[str, Any] | None = None) -> dict[str, Any]:
    """One client of ``GET /api/clients``; ``active`` is its newest queued or running target;
    ``inventory`` its decoded inventory when the caller has it (else ``c.inventory``)."""
    inv = (c.inventory if inventory is None else inventory) or {}
    return {
        "id": c.id,
        "mac": c.mac,
        "macs": inv.get("macs", [c.mac]),
        "hostname": c.hostname,
        "address": c.address,
        "online": c.online,
        "last_seen": isoformat(c.last_seen),
        "enrolled_at": isoformat(c.enrolled_at),
        "state": "idle" if active is None else active.state,
        "deployment_id": active.deployment_id if active else None,
        "task_id": active.id if active else None,
        "phase": active.phase if active else None,
        "cpu": inv.get("cpu"),
        "ram_bytes": inv.get("ram_bytes"),
        "dmi": inv.get("dmi"),
        "disks": inv.get("disks", []),
        "agent_version": inv.get("agent_version"),
        "windows": inv.get("windows", []),  # Windows installations on its disks (issue 13 SID audit)
    }
