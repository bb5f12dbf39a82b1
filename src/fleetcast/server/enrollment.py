"""Enrollment: a machine's inventory and the shared enrollment token exchanged for its own credential.

First enrollment wins: a known identity enrolls again only with its current credential, or after an
admin revoked it (``fleetcast clients revoke``); a secondary MAC that is another client's identity
is dropped (it cannot take that client's place in a ``--clients MAC`` deployment).

**Enrollments are written in batches** (issue 12, Scale). One enrollment alone cost about 3 ms of
server CPU (2.8 ms of it in the orchestrator: two queries, two inserts and a commit, each through
the ORM), and a room of 5,000 machines that boot within a minute sends them faster than one
process answers them while the machines already enrolled heartbeat. ``EnrollQueue`` gathers the
enrollments that arrive while the previous batch is being written and hands them to
``enroll_many`` together: one thread hop, one query for every MAC of the batch, one flush, one
commit. Each request still gets its own answer or its own error (a 409 for one machine does not
fail the others), and the outcome is the same as enrolling them one after another in arrival order.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from fleetcast.errors import ConflictError, FleetcastError, UsageError
from fleetcast.server import plan as planner
from fleetcast.server.auth import TOKEN_PREFIX, hash_credential, new_secret, same
from fleetcast.server.core import OrchestratorCore
from fleetcast.server.db import Client, utcnow

logger = logging.getLogger(__name__)

MAX_BATCH = 200  # enrollments per transaction
_QUERY_CHUNK = 500  # MACs per IN (...) query


def derive(credential: str, key: bytes) -> str:
    """The credential that replaces ``credential`` on re-enrollment (HMAC with the server's key)."""
    digest = hmac.new(key, credential.encode(), hashlib.sha256).digest()
    return TOKEN_PREFIX + base64.urlsafe_b64encode(digest).decode().rstrip("=")


def _proves(credential: str, current_hash: str, key: bytes) -> bool:
    """``credential`` is the client's current one, or the one before it (a retried enrollment)."""
    return same(hash_credential(credential), current_hash) or same(
        hash_credential(derive(credential, key)), current_hash
    )


@dataclass(frozen=True)
class EnrollItem:
    """One enrollment request: the agent's inventory, its address, and its current credential if any."""

    inventory: dict[str, Any]
    address: str
    credential: str | None = None
    key: bytes = b""


def identity_macs(inventory: dict[str, Any]) -> list[str]:
    """The inventory's MACs, normalized, the one it booted from (``boot_mac``) first: the client's
    identity is ``[0]``."""
    macs = [planner.normalize_mac(m) for m in inventory.get("macs", [])]
    if not macs:
        raise UsageError("inventory.macs is empty: the agent must report at least one MAC address")
    boot = inventory.get("boot_mac")
    if boot:
        boot_mac = planner.normalize_mac(boot)
        macs = [boot_mac, *(m for m in macs if m != boot_mac)]
    return macs


class EnrollmentMixin(OrchestratorCore):
    def enroll(
        self, inventory: dict[str, Any], *, address: str, credential: str | None = None, key: bytes = b""
    ) -> tuple[int, str]:
        """A credential for the machine of ``inventory`` (the module's docstring says who may)."""
        (outcome,) = self.enroll_many([EnrollItem(inventory, address, credential, key)])
        if isinstance(outcome, FleetcastError):
            raise outcome
        return outcome

    def enroll_many(self, items: Sequence[EnrollItem]) -> list[tuple[int, str] | FleetcastError]:
        """Enroll ``items`` in one transaction, as if one after another: per item (client id,
        credential) or the error that item alone gets (bad MACs, 409 for a known machine)."""
        outcomes: list[tuple[int, str] | FleetcastError | None] = [None] * len(items)
        wanted: list[tuple[int, list[str]]] = []
        for i, item in enumerate(items):
            try:
                wanted.append((i, identity_macs(item.inventory)))
            except FleetcastError as exc:
                outcomes[i] = exc
        generation = self.presence.credentials_generation
        made: list[tuple[int, int, str]] = []  # (item, client id, credential)
        if wanted:
            with self._tx() as s:
                every = sorted({m for _, macs in wanted for m in macs})
                by_mac: dict[str, Client] = {}
                for start in range(0, len(every), _QUERY_CHUNK):
                    chunk = every[start : start + _QUERY_CHUNK]
                    by_mac.update((c.mac, c) for c in s.scalars(select(Client).where(Client.mac.in_(chunk))))
                enrolled: list[tuple[int, Client, str, bool]] = []
                for i, macs in wanted:
                    try:
                        client, credential, again = self._enroll_one(s, items[i], macs, by_mac)
                    except FleetcastError as exc:
                        outcomes[i] = exc
                        continue
                    enrolled.append((i, client, credential, again))
                s.flush()  # the new clients' ids, in one round of inserts
                for i, client, credential, again in enrolled:
                    self.bus.record(
                        s, "client-enrolled", client_id=client.id, mac=client.mac, address=client.address,
                        hostname=client.hostname, again=again,
                    )  # fmt: skip
                    logger.info("client %s (%s) enrolled from %s", client.mac, client.id, client.address)
                    made.append((i, client.id, credential))
        # committed: their heartbeats may take the fast path at once (a re-enrollment changed a
        # credential, so the generation moved and these are dropped: the first heartbeat looks it up)
        for i, client_id, credential in made:
            self.presence.remember(hash_credential(credential), client_id, generation)
            self.presence.online(client_id)
            outcomes[i] = (client_id, credential)
        return [o if o is not None else UsageError("enrollment was not processed") for o in outcomes]

    def _enroll_one(
        self, s: Session, item: EnrollItem, macs: list[str], by_mac: dict[str, Client]
    ) -> tuple[Client, str, bool]:
        """One enrollment inside the batch's transaction; ``by_mac`` knows every client whose MAC the
        batch names, including the ones enrolled earlier in the batch."""
        client = by_mac.get(macs[0])
        others = {m for m in macs[1:] if m in by_mac}
        if others:
            logger.warning("enrollment of %s: dropping MACs of other clients %s", macs[0], sorted(others))
            macs = [macs[0], *(m for m in macs[1:] if m not in others)]
        again = client is not None
        now = utcnow()
        credential = item.credential
        if client is None:
            client = Client(mac=macs[0], enrolled_at=now)
            s.add(client)
            by_mac[client.mac] = client
        elif client.credential_hash is not None and not (
            credential and _proves(credential, client.credential_hash, item.key)
        ):
            raise ConflictError(
                f"client {client.mac} (id {client.id}) is already enrolled; enrolling it again needs "
                "its current credential or an admin's approval",
                hint=f"if this is the same machine, run `fleetcast clients revoke {client.id}` "
                "and start the agent again",
            )
        # derived from the presented credential: a retried request whose answer was lost gets
        # the same new credential again instead of a 409
        credential = derive(credential, item.key) if again and credential else new_secret()
        client.inventory = {**item.inventory, "macs": macs}
        client.hostname = str(item.inventory.get("hostname", ""))
        client.credential_hash = hash_credential(credential)
        client.address = item.address
        client.last_seen = now
        client.online = True
        return client, credential, again


class EnrollQueue:
    """Enrollments from the event loop, written in batches by ``EnrollmentMixin.enroll_many``: the
    ones that arrive while a batch is written form the next (no waiting when the server is quiet)."""

    def __init__(self, orch: EnrollmentMixin) -> None:
        self.orch = orch
        self._pending: list[tuple[EnrollItem, asyncio.Future[tuple[int, str]]]] = []
        self._writer: asyncio.Task[None] | None = None
        self.batches = 0  # for tests and the benchmark

    async def enroll(self, item: EnrollItem) -> tuple[int, str]:
        future: asyncio.Future[tuple[int, str]] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write())
        return await future

    async def _write(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            self.batches += 1
            try:
                outcomes = await run_in_threadpool(self.orch.enroll_many, [item for item, _ in batch])
            except Exception as exc:  # the whole batch failed (database): every request gets the error
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():  # the request was cancelled (the client went away)
                    continue
                if isinstance(outcome, FleetcastError):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
