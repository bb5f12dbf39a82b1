"""The heartbeat fast path (server/presence.py): no query for an idle heartbeat, and nothing it
skips is lost -- tasks, revocations, last_seen, offline and back."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from serverkit import Server
from sqlalchemy import event, select, update

from fleetcast.server.auth import hash_credential
from fleetcast.server.db import Client, utcnow
from fleetcast.server.fastlane import FastLane
from fleetcast.server.orchestrator import Orchestrator
from fleetcast.server.presence import BUSY_SHARED_MAX_AGE, BUSY_TTL


def orch(server: Server) -> Orchestrator:
    o: Orchestrator = server.http.app.state.orchestrator
    return o


@contextmanager
def counting(server: Server) -> Iterator[list[str]]:
    statements: list[str] = []
    engine = orch(server).db.engine

    def before(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", before)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", before)


def warm(server: Server, agent: Any) -> None:
    """One full heartbeat (online, credential cached), then a fresh busy set."""
    agent.heartbeat()
    orch(server).presence.refresh(force=True)


def test_idle_heartbeat_runs_no_query(server: Server) -> None:
    a = server.agent("52:54:00:00:00:01")
    warm(server, a)
    with counting(server) as statements:
        for _ in range(5):
            assert a.heartbeat() == {"task": None, "cancel": False, "interval": 0.5}
    assert statements == []


def test_new_deployment_reaches_a_fast_path_client_at_once(server: Server) -> None:
    a = server.agent("52:54:00:00:00:01")
    warm(server, a)
    server.deploy()
    task = a.heartbeat()["task"]  # the commit made the busy set stale: the full path answers
    assert task is not None and task["image"] == "golden"


def test_revoked_credential_is_refused_at_once(server: Server) -> None:
    a = server.agent("52:54:00:00:00:01")
    warm(server, a)
    server.post(f"/api/clients/{a.client_id}/revoke")
    r = server.http.post("/api/agent/heartbeat", json={"task_id": None}, headers=a.headers)
    assert r.status_code == 401
    assert r.json()["message"] == "the agent credential is not known (or was replaced by a newer enrollment)"


def test_reenrollment_retires_the_cached_credential(server: Server) -> None:
    a = server.agent("52:54:00:00:00:01")
    warm(server, a)
    old = dict(a.headers)
    a.enroll()
    assert server.http.post("/api/agent/heartbeat", json={"task_id": None}, headers=old).status_code == 401
    assert a.heartbeat()["task"] is None


def test_fast_heartbeats_are_seen_and_written(server: Server) -> None:
    a = server.agent("52:54:00:00:00:01")
    warm(server, a)
    o = orch(server)
    o.presence.flush()
    long_ago = utcnow() - timedelta(hours=1)
    with o.db.transaction() as s:
        s.execute(update(Client).where(Client.id == a.client_id).values(last_seen=long_ago))
    before = utcnow()
    a.heartbeat()
    view = server.get(f"/api/clients/{a.client_id}")
    assert view["last_seen"] >= before.isoformat()  # the note not yet written is shown
    listed = server.get("/api/clients")["clients"][0]
    assert listed["last_seen"] == view["last_seen"]
    assert o.presence.flush() == 1
    with o.db.sessions() as s:
        seen = s.scalars(select(Client.last_seen).where(Client.id == a.client_id)).one()
    assert seen >= before


def test_sweep_writes_fast_heartbeats_before_judging(server: Server) -> None:
    """A client that beats only on the fast path is never marked offline; one that went silent is,
    and its next heartbeat (full path again) brings it back with a client-seen event."""
    a = server.agent("52:54:00:00:00:01")
    b = server.agent("52:54:00:00:00:02")
    warm(server, a)
    warm(server, b)
    o = orch(server)
    o.presence.flush()
    silent = utcnow() - timedelta(seconds=server.settings.stale_after + 5)
    with o.db.transaction() as s:
        s.execute(update(Client).values(last_seen=silent))
    a.heartbeat()  # fast path: only noted in memory
    o.sweep()
    online = {c["mac"]: c["online"] for c in server.get("/api/clients")["clients"]}
    assert online == {"52:54:00:00:00:01": True, "52:54:00:00:00:02": False}
    b.heartbeat()
    assert server.get(f"/api/clients/{b.client_id}")["online"] is True
    types = [e["type"] for e in server.get("/api/events/log")["events"] if e.get("client_id") == b.client_id]
    assert types[-2:] == ["client-stale", "client-seen"]


def test_clients_pages_and_filters(server: Server) -> None:
    agents = [server.agent(f"52:54:00:00:00:{i:02x}", hostname=f"lab-{i}") for i in range(1, 8)]
    server.deploy(clients="52:54:00:00:00:03")
    agents[2].heartbeat()  # takes the task: running
    macs: list[str] = []
    after = None
    pages = 0
    while True:
        query = "limit=3" + (f"&after={after}" if after else "")
        page = server.get(f"/api/clients?{query}")
        assert len(page["clients"]) <= 3
        macs += [c["mac"] for c in page["clients"]]
        pages += 1
        after = page["next"]
        if after is None:
            break
    assert macs == [f"52:54:00:00:00:{i:02x}" for i in range(1, 8)]
    assert pages == 3
    assert "next" not in server.get("/api/clients")  # no limit: everything, as before
    running = server.get("/api/clients?state=running")["clients"]
    assert [c["mac"] for c in running] == ["52:54:00:00:00:03"]
    assert len(server.get("/api/clients?state=idle")["clients"]) == 6
    assert [c["hostname"] for c in server.get("/api/clients?q=LAB-5")["clients"]] == ["lab-5"]
    assert server.get("/api/clients?q=%25")["clients"] == []  # % is a character, not a wildcard
    assert len(server.get("/api/clients?online=true")["clients"]) == 7
    assert server.get("/api/clients?online=false")["clients"] == []
    r = server.http.get("/api/clients?state=gone", headers={"Authorization": f"Bearer {server.admin}"})
    assert r.status_code == 400
    assert r.json()["message"] == "state 'gone' is not one of idle, queued, running"
    r = server.http.get("/api/clients?after=zz", headers={"Authorization": f"Bearer {server.admin}"})
    assert r.status_code == 400
    assert r.json()["message"] == "client 'zz' is not a MAC address: expected aa:bb:cc:dd:ee:ff"
    r = server.http.get("/api/clients?limit=0", headers={"Authorization": f"Bearer {server.admin}"})
    assert r.status_code == 422


def test_credentials_are_read_whole_and_a_stale_read_is_dropped(server: Server) -> None:
    a = server.agent("52:54:00:00:00:01")
    b = server.agent("52:54:00:00:00:02")
    p = orch(server).presence
    p.refresh_credentials(force=True)
    assert p.client_for(hash_credential(a.credential)) == a.client_id
    assert p.client_for(hash_credential(b.credential)) == b.client_id
    generation = p.credentials_generation
    server.post(f"/api/clients/{b.client_id}/revoke")
    assert p.client_for(hash_credential(b.credential)) is None
    p.remember(hash_credential(b.credential), b.client_id, generation)  # a lookup from before the revoke
    assert p.client_for(hash_credential(b.credential)) is None


def fast_lane(server: Server) -> FastLane:
    lane: Any = server.http.app.fastlane  # called before the framework (server/app.py)
    assert isinstance(lane, FastLane)
    return lane


def test_fast_lane_answers_idle_heartbeats_and_passes_the_rest(server: Server) -> None:
    a = server.agent("52:54:00:00:00:01")
    warm(server, a)
    lane = fast_lane(server)
    before = lane.answered
    assert a.heartbeat() == {"task": None, "cancel": False, "interval": 0.5}
    assert lane.answered == before + 1
    # refused bodies reach the route and get its answers, unchanged
    r = server.http.post("/api/agent/heartbeat", json={"task_id": "1"}, headers=a.headers)
    assert r.status_code == 422
    assert r.json()["error"] == "ValidationError"
    assert "task_id" in r.json()["message"]
    r = server.http.post("/api/agent/heartbeat", content=b"{", headers=a.headers)
    assert r.status_code == 422
    r = server.http.post(
        "/api/agent/heartbeat", json={"task_id": None}, headers={"Authorization": "Bearer x"}
    )
    assert r.status_code == 401
    r = server.http.post("/api/agent/heartbeat", json={"task_id": None, "extra": 1}, headers=a.headers)
    assert r.status_code == 422
    assert lane.answered == before + 1
    server.deploy()
    task = a.heartbeat()["task"]  # busy now: the full path hands out the task
    assert task is not None
    assert lane.answered == before + 1


def test_busy_set_is_read_again_before_it_expires(server: Server) -> None:
    """The app's loop re-reads the busy set at half the age idle() accepts, so no heartbeat falls
    into a gap between expiry and the next read (2.5 % of them took the full path)."""
    a = server.agent("52:54:00:00:00:01")
    warm(server, a)
    p = orch(server).presence
    p._busy_read_at = time.monotonic() - BUSY_TTL * 0.75  # still fresh for idle(), due for refresh()
    assert p.idle(a.client_id)
    p.refresh()
    assert time.monotonic() - p._busy_read_at < BUSY_TTL / 4
    assert p.idle(a.client_id)


def test_one_server_database_keeps_the_fast_path_when_the_read_is_late(server: Server) -> None:
    """With SQLite this process is the only writer: a busy set older than BUSY_TTL (the loop's
    re-read came late under load) still answers idle heartbeats, so they do not all fall onto the
    full path at once; a change of targets still retires it at once."""
    a = server.agent("52:54:00:00:00:01")
    warm(server, a)
    p = orch(server).presence
    p._busy_read_at = time.monotonic() - BUSY_TTL * 5
    assert p.idle(a.client_id)
    server.deploy()
    assert not p.idle(a.client_id)  # the new target moved the generation
    assert a.heartbeat()["task"] is not None


def test_shared_database_expires_the_busy_set_by_age() -> None:
    """Several servers on one PostgreSQL: another may have started a deployment; its notification
    makes the set stale (wake_for_event), and age counts past BUSY_SHARED_MAX_AGE as a backstop."""
    from sqlalchemy import create_engine
    from sqlalchemy.orm import sessionmaker

    from fleetcast.server.presence import Presence

    p = Presence(sessionmaker(create_engine("sqlite://")), shared=True)
    p.online(7)
    p._busy_gen, p._busy_read_at = p._gen, time.monotonic()
    assert p.idle(7)
    p._busy_read_at = time.monotonic() - BUSY_TTL * 1.5
    assert p.idle(7)  # a late re-read (the loop busy) does not send every heartbeat the full path
    p._busy_read_at = time.monotonic() - BUSY_SHARED_MAX_AGE * 1.1
    assert not p.idle(7)
