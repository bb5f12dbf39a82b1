"""Enrollments written in batches (server/enrollment.py): each request gets the answer it would get
alone, in arrival order -- a 409 for one machine does not fail the others -- and concurrent
enrollments share transactions."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from serverkit import Server

from fleetcast.errors import ConflictError, UsageError
from fleetcast.server.auth import hash_credential
from fleetcast.server.db import Client
from fleetcast.server.enrollment import EnrollItem, EnrollQueue
from fleetcast.server.orchestrator import Orchestrator


def orch(server: Server) -> Orchestrator:
    o: Orchestrator = server.http.app.state.orchestrator
    return o


def inv(*macs: str, **extra: Any) -> dict[str, Any]:
    return {"macs": list(macs), "hostname": "pc", **extra}


def test_a_batch_answers_each_item_as_if_one_after_another(server: Server) -> None:
    known = server.agent("52:54:00:00:00:09")  # enrolled before: its MAC is taken
    outcomes = orch(server).enroll_many(
        [
            EnrollItem(inv("52:54:00:00:00:01"), "10.0.0.1"),
            EnrollItem(inv("52:54:00:00:00:09"), "10.0.0.2"),  # known, no credential: 409
            EnrollItem(inv(), "10.0.0.3"),  # no MAC: 400
            EnrollItem(inv("52:54:00:00:00:02", "52:54:00:00:00:01"), "10.0.0.4"),  # [1] is item 0's
            EnrollItem(inv("52:54:00:00:00:01"), "10.0.0.5"),  # item 0 enrolled it a moment ago: 409
        ]
    )
    first, taken, empty, second, again = outcomes
    assert isinstance(first, tuple) and isinstance(second, tuple)
    assert isinstance(taken, ConflictError)
    assert taken.message == (
        f"client 52:54:00:00:00:09 (id {known.client_id}) is already enrolled; enrolling it again "
        "needs its current credential or an admin's approval"
    )
    assert isinstance(empty, UsageError)
    assert empty.message == "inventory.macs is empty: the agent must report at least one MAC address"
    assert isinstance(again, ConflictError)
    with orch(server).db.sessions() as s:
        c1, c2 = s.get(Client, first[0]), s.get(Client, second[0])
        assert c1 is not None and c2 is not None
        assert c1.credential_hash == hash_credential(first[1]) and c1.address == "10.0.0.1"
        assert c2.inventory["macs"] == ["52:54:00:00:00:02"]  # another client's identity dropped
    server.http.post(
        "/api/agent/heartbeat", json={"task_id": None}, headers={"Authorization": f"Bearer {first[1]}"}
    ).raise_for_status()


def test_concurrent_enrollments_share_transactions(server: Server) -> None:
    o = orch(server)
    queue = EnrollQueue(o)
    commits = [0]
    from sqlalchemy import event

    def count(_session: Any) -> None:
        commits[0] += 1

    event.listen(o.db.sessions, "after_commit", count)

    async def run() -> list[Any]:
        items = [EnrollItem(inv(f"52:54:00:00:01:{i:02x}"), "10.0.1.1") for i in range(60)]
        items.append(EnrollItem(inv("52:54:00:00:01:00"), "10.0.1.2"))  # the first one's MAC again
        return await asyncio.gather(*(queue.enroll(item) for item in items), return_exceptions=True)

    try:
        results = asyncio.run(run())
    finally:
        event.remove(o.db.sessions, "after_commit", count)
    ok = [r for r in results[:60] if isinstance(r, tuple)]
    assert len(ok) == 60 and len({cid for cid, _ in ok}) == 60
    assert isinstance(results[60], ConflictError)
    assert queue.batches < 60 and commits[0] == queue.batches  # one commit per batch, not per machine
    listed = server.get("/api/clients")["clients"]
    assert len(listed) == 60


def test_a_failed_batch_fails_each_of_its_requests(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    o = orch(server)

    def broken(_items: Any) -> Any:
        raise RuntimeError("database went away")

    monkeypatch.setattr(o, "enroll_many", broken)
    queue = EnrollQueue(o)

    async def run() -> list[Any]:
        items = [EnrollItem(inv(f"52:54:00:00:02:{i:02x}"), "10.0.2.1") for i in range(3)]
        return await asyncio.gather(*(queue.enroll(item) for item in items), return_exceptions=True)

    results = asyncio.run(run())
    assert [str(r) for r in results] == ["database went away"] * 3


def test_enroll_route_goes_through_the_queue(server: Server) -> None:
    queue: EnrollQueue = server.http.app.state.enroll_queue
    before = queue.batches
    a = server.agent("52:54:00:00:03:01")
    assert a.client_id > 0
    assert queue.batches == before + 1
    r = server.http.post(
        "/api/agent/enroll", json={"enroll_token": server.enroll, "inventory": inv("52:54:00:00:03:01")}
    )
    assert r.status_code == 409
    assert r.json()["error"] == "ConflictError"
