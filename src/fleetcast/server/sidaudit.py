"""``GET /api/audit/sids`` (admin): the duplicate-SID audit over the clients' inventories (issue 13),
the same answer as ``fleetcast audit sids --json`` (identity/windows/sidaudit.py), for the console
and scripts."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from fleetcast.server.api_admin import require_admin

router = APIRouter(prefix="/api/audit", tags=["audit"], dependencies=[Depends(require_admin)])


@router.get("/sids")
def audit_sids(request: Request) -> dict[str, Any]:
    """Groups of Windows installations sharing a machine SID, with the consequence and the fix."""
    from fleetcast.identity.windows.sidaudit import duplicate_groups, from_clients, to_json

    clients, _ = request.app.state.orchestrator.clients()  # every client, one page
    installs, unreadable = from_clients(clients)
    return to_json(duplicate_groups(installs), len(installs), unreadable)
