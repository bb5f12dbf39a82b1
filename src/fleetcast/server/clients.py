"""The admin side of clients: the paged, filtered list, one client, revoke, delete; and the audit log."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Text, select
from sqlalchemy import cast as sql_cast

from fleetcast.errors import (
    ClientNotFound,
    ConflictError,
    NotFoundError,
    UsageError,
)
from fleetcast.server import plan as planner
from fleetcast.server.core import OrchestratorCore, active_target, get_row
from fleetcast.server.db import (
    MAX_INTEGER,
    AuditRow,
    Client,
    Target,
    isoformat,
)
from fleetcast.server.rowviews import ACTIVE_TARGET, client_view

logger = logging.getLogger(__name__)

CLIENT_STATES = ("idle", "queued", "running")
# what client_view reads, as columns: rows with these attribute names stand in for the objects
CLIENT_COLUMNS = (Client.id, Client.mac, Client.hostname, sql_cast(Client.inventory, Text).label("raw"),
                  Client.address, Client.online, Client.last_seen, Client.enrolled_at)  # fmt: skip
TARGET_COLUMNS = (Target.id, Target.client_id, Target.deployment_id, Target.state, Target.phase)
MAX_PAGE = 5000
MAX_CLIENTS_CACHED = 50_000  # decoded inventories kept (deleted clients' entries go with a clear)


@dataclass(frozen=True)
class ClientQuery:
    """``GET /api/clients?limit=&after=&online=&state=&q=``: a page of at most ``limit`` clients
    after MAC ``after``; ``q`` is a case-insensitive substring of the MAC, host name or address."""

    limit: int | None = None
    after: str | None = None
    online: bool | None = None
    state: str | None = None
    search: str | None = None

    def __post_init__(self) -> None:
        if self.limit is not None and not 1 <= self.limit <= MAX_PAGE:
            raise UsageError(f"limit must be 1-{MAX_PAGE}, found {self.limit}")
        if self.state is not None and self.state not in CLIENT_STATES:
            raise UsageError(f"state {self.state!r} is not one of {', '.join(CLIENT_STATES)}")
        if self.after is not None:
            object.__setattr__(self, "after", planner.normalize_mac(self.after))


class ClientsMixin(OrchestratorCore):
    def clients(self, query: ClientQuery | None = None) -> tuple[list[dict[str, Any]], str | None]:
        """One page of clients in MAC order, filtered, in two queries (clients, their active
        targets), not one per client; and the ``after`` of the next page (None: this is the last).
        Columns, not ORM objects: the whole list of 2,000 took 76 ms of CPU as objects, most of it
        building them, while the event loop waited for the GIL (bench/load.py's heartbeat p99)."""
        q = query or ClientQuery()
        with self.db.sessions() as s:
            stmt = select(*CLIENT_COLUMNS).order_by(Client.mac)
            if q.after:
                stmt = stmt.where(Client.mac > q.after)
            if q.online is not None:
                stmt = stmt.where(Client.online.is_(q.online))
            if q.search:
                like = "%" + q.search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
                stmt = stmt.where(
                    Client.mac.ilike(like, escape="\\")
                    | Client.hostname.ilike(like, escape="\\")
                    | Client.address.ilike(like, escape="\\")
                )
            busy = select(Target.client_id).where(Target.state.in_(ACTIVE_TARGET))
            if q.state == "idle":
                stmt = stmt.where(Client.id.not_in(busy))
            elif q.state is not None:
                stmt = stmt.where(Client.id.in_(busy.where(Target.state == q.state)))
            if q.limit is not None:
                stmt = stmt.limit(q.limit + 1)
            rows = list(s.execute(stmt))
            more = q.limit is not None and len(rows) > q.limit
            rows = rows[: q.limit] if q.limit is not None else rows
            active: dict[int, Any] = {}
            ids = [c.id for c in rows]
            targets = select(*TARGET_COLUMNS).where(Target.state.in_(ACTIVE_TARGET)).order_by(Target.id)
            if q.limit is not None:
                targets = targets.where(Target.client_id.in_(ids))
            for t in s.execute(targets):
                active[t.client_id] = t  # the newest wins, as in _client_view
            views = [
                self._seen_view(client_view(cast(Client, c), active.get(c.id), self._inventory(c.id, c.raw)))
                for c in rows
            ]
            if q.state is not None:  # a target may have changed state between the two queries
                views = [v for v in views if v["state"] == q.state]
            return views, (rows[-1].mac if more and rows else None)

    def _inventory(self, client_id: int, raw: str | None) -> dict[str, Any]:
        """A client's decoded inventory, decoded again only when its text changed: decoding was most
        of the whole list's CPU (the text is compared instead; the views share the decoded parts, which
        nothing modifies)."""
        hit = self.inventories.get(client_id)
        if hit is not None and hit[0] == raw:
            return hit[1]
        inventory: dict[str, Any] = json.loads(raw) if raw else {}
        if len(self.inventories) > 2 * MAX_CLIENTS_CACHED:
            self.inventories.clear()
        self.inventories[client_id] = (raw or "", inventory)
        return inventory

    def client(self, client_id: int) -> dict[str, Any]:
        with self.db.sessions() as s:
            c = get_row(s, Client, client_id)
            if c is None:
                raise NotFoundError(f"client {client_id} does not exist", hint="GET /api/clients lists them")
            return self._client_view(s, c)

    def revoke(self, client_id: int, *, actor: str, address: str) -> dict[str, Any]:
        """Forget the client's credential: its agent is refused from now on, and the machine may
        enroll again (keeping its id, its history and a running task, which is handed back)."""
        with self._tx() as s:
            c = get_row(s, Client, client_id)
            if c is None:
                raise ClientNotFound(f"client {client_id} does not exist", hint="GET /api/clients lists them")
            c.credential_hash = None
            self._audit(s, actor=actor, address=address, action="client-revoke",
                        target=f"client {c.id} ({c.mac})", detail={})  # fmt: skip
            logger.info("client %s (%d): credential revoked by %s", c.mac, c.id, actor)
            return self._client_view(s, c)

    def delete_client(self, client_id: int, *, actor: str, address: str) -> dict[str, Any]:
        """Forget a client entirely (issue 12 item 2): its row, its credential and its entries in
        finished deployments (their event log and the audit keep its MAC). Refused (409) while it is
        queued or running in a deployment. The machine enrolls again as a new client."""
        with self._tx() as s:
            c = get_row(s, Client, client_id)
            if c is None:
                raise ClientNotFound(f"client {client_id} does not exist", hint="GET /api/clients lists them")
            active = active_target(s, [c.id])
            if active is not None:
                raise ConflictError(
                    f"client {c.mac} (id {c.id}) is {active.state} in deployment {active.deployment_id}",
                    hint=f"cancel it first: POST /api/deployments/{active.deployment_id}/cancel",
                )
            targets = list(s.scalars(select(Target).where(Target.client_id == c.id)))
            deployments = sorted({t.deployment_id for t in targets})
            view = self._client_view(s, c)
            for t in targets:
                s.delete(t)
            s.flush()  # the targets first: no relationship tells the unit of work their order
            s.delete(c)
            self._audit(s, actor=actor, address=address, action="client-delete",
                        target=f"client {client_id} ({view['mac']})",
                        detail={"hostname": view["hostname"], "deployments": deployments})  # fmt: skip
            logger.info("client %s (%d): deleted by %s", view["mac"], client_id, actor)
        self.presence.offline({client_id})
        return view

    def audit(
        self, limit: int = 1000, *, before: int | None = None, action: str | None = None,
        actor: str | None = None,
    ) -> list[dict[str, Any]]:  # fmt: skip
        """Newest first; ``before`` = an id: the page older than it (the last id of the previous
        page); ``action`` / ``actor`` filter exactly."""
        query = select(AuditRow).order_by(AuditRow.id.desc()).limit(limit)
        if before is not None:
            query = query.where(AuditRow.id < min(before, MAX_INTEGER))
        if action:
            query = query.where(AuditRow.action == action)
        if actor:
            query = query.where(AuditRow.actor == actor)
        with self.db.sessions() as s:
            rows = s.scalars(query)
            return [
                {
                    "id": r.id,
                    "ts": isoformat(r.ts),
                    "actor": r.actor,
                    "address": r.address,
                    "action": r.action,
                    "target": r.target,
                    "detail": r.detail,
                }
                for r in rows
            ]
