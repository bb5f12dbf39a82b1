"""The admin side of a network capture (issue 11): which client, whether the name may be used, and what
``GET /api/captures/{id}`` shows (docs/agent-protocol.md "Capture", /work/team/iface-CAPTURE.md)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleetcast.errors import ClientNotFound, ConflictError, DiskError, FleetcastError, UsageError
from fleetcast.server.db import CaptureRow, Client, Deployment, Target, isoformat
from fleetcast.server.images import check_name
from fleetcast.server.orchestrator import ACTIVE_DEPLOYMENT


def check_request(name: str, disk: str, *, replace: bool, names: set[str] | list[str]) -> None:
    """A valid image name and disk rule; an existing image ``name`` refused unless ``replace``."""
    from fleetcast.disk.rules import parse_rule

    check_name(name)
    try:
        parse_rule(disk)
    except DiskError as exc:
        raise UsageError(exc.message, hint=exc.hint) from exc
    if not replace and name in names:
        raise ConflictError(
            f"image {name!r} already exists on the server",
            hint="pick another name, or replace it: fleetcast capture ... --replace",
        )


def check_free(s: Session, name: str, *, replace: bool) -> None:
    """Refuse a second capture of the same name, and a replace while a deployment deploys the image."""
    busy = s.scalars(
        select(CaptureRow)
        .join(Deployment, Deployment.id == CaptureRow.deployment_id)
        .where(CaptureRow.image == name, Deployment.state.in_(ACTIVE_DEPLOYMENT))
    ).first()
    if busy is not None:
        raise ConflictError(
            f"image {name!r} is already being captured (capture {busy.deployment_id})",
            hint=f"wait for it or cancel it: fleetcast deployments cancel {busy.deployment_id}",
        )
    if replace:
        captures = select(CaptureRow.deployment_id)
        using = s.scalars(
            select(Deployment.id).where(
                Deployment.image == name,
                Deployment.state.in_(ACTIVE_DEPLOYMENT),
                Deployment.id.not_in(captures),
            )
        ).first()
        if using is not None:
            raise ConflictError(
                f"image {name!r} cannot be replaced while deployment {using} deploys it",
                hint=f"wait for it or cancel it: fleetcast deployments cancel {using}",
            )


def resolve_client(s: Session, spec: str) -> Client:
    """CLIENT of ``fleetcast capture``: a MAC (the identity, or one of its inventory's MACs) or a
    client name (case-insensitive; refused when two clients carry it)."""
    from fleetcast.server.plan import normalize_mac

    spec = spec.strip()
    try:
        mac: str | None = normalize_mac(spec)
    except FleetcastError:
        mac = None
    clients = list(s.scalars(select(Client).order_by(Client.mac)))
    if mac is not None:
        for c in clients:
            if c.mac == mac:
                return c
        for c in clients:
            if mac in (c.inventory or {}).get("macs", []):
                return c
        raise ClientNotFound(
            f"client {mac} is not enrolled", hint="`fleetcast clients list` shows the enrolled clients"
        )
    named = [c for c in clients if c.hostname and c.hostname.lower() == spec.lower()]
    if len(named) == 1:
        return named[0]
    if len(named) > 1:
        raise UsageError(
            f"client name {spec!r} is ambiguous: {', '.join(c.mac for c in named)} carry it",
            hint="give the MAC instead",
        )
    raise ClientNotFound(
        f"no enrolled client has the MAC or name {spec!r}",
        hint="`fleetcast clients list` shows the enrolled clients",
    )


def capture_row(s: Session, deployment_id: int) -> CaptureRow | None:
    return s.scalars(select(CaptureRow).where(CaptureRow.deployment_id == deployment_id)).first()


def capture_view(s: Session, dep: Deployment, live: tuple[int, int, int] = (0, 0, 0)) -> dict[str, Any]:
    """One capture as the API shows it; ``live`` = (bytes received, chunks new, chunks known) counted in
    memory and not yet written to its row."""
    row = capture_row(s, dep.id)
    assert row is not None
    t: Target | None = dep.targets[0] if dep.targets else None
    received, new, known = live
    started = t.started_at if t is not None else None
    finished = t.finished_at if t is not None else None
    begun = (t.assigned_at or started) if t is not None else None
    seconds = (finished - begun).total_seconds() if finished is not None and begun is not None else None
    return {
        "capture": dep.id,
        "image": row.image,
        "state": t.state if t is not None else dep.state,
        "client": t.mac if t is not None else None,
        "client_id": t.client_id if t is not None else None,
        "task_id": t.id if t is not None else None,
        "disk_rule": dep.disk_rule,
        "disk": t.disk if t is not None else None,
        "replace": row.replace,
        "phase": t.phase if t is not None else None,
        "bytes_done": t.bytes_done if t is not None else 0,
        "bytes_total": t.bytes_total if t is not None else 0,
        "rate_bps": t.rate_bps if t is not None else 0.0,
        "eta_seconds": t.eta_seconds if t is not None else None,
        "error": t.error if t is not None else None,
        "image_id": row.image_id,
        "bytes_read": row.bytes_read,
        "bytes_sent": row.bytes_received + received,
        "chunks_new": row.chunks_new + new,
        "chunks_known": row.chunks_known + known,
        "packs_new": row.packs_new,
        "seconds": round(seconds, 3) if seconds is not None else None,
        "created_at": isoformat(dep.created_at),
        "started_at": isoformat(started),
        "finished_at": isoformat(finished),
        "attempt": t.attempt if t is not None else 0,
        "resumes": t.resumes if t is not None else 0,
        "restarts": t.restarts if t is not None else 0,
    }
