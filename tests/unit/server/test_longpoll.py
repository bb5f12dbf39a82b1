"""The long-poll heartbeat (issue 11 item 1a, issue 12 Scale): an idle agent's heartbeat with ``wait``
is held by the fast lane and answered with its task as soon as a deployment for it commits; without
one, it is answered idle when the wait is over. The interval here is long (60 s), so an answer with
a task can only come from the wake-up, never from the agent's next heartbeat."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from serverkit import Server

from fleetcast.server.presence import Presence
from fleetcast.server.settings import ServerSettings


@pytest.fixture
def settings(tmp_path: Path) -> ServerSettings:
    return ServerSettings(data_dir=tmp_path / "data", heartbeat_interval=60.0, stale_after=300.0)


def presence(server: Server) -> Presence:
    p: Presence = server.http.app.state.orchestrator.presence  # type: ignore[attr-defined]
    return p


def held_heartbeat(server: Server, agent: Any, wait: float) -> dict[str, Any]:
    r = server.http.post("/api/agent/heartbeat", json={"task_id": None, "wait": wait}, headers=agent.headers)
    assert r.status_code == 200, r.text
    reply: dict[str, Any] = r.json()
    return reply


def until(check: Any, what: str) -> None:
    for _ in range(1000):
        if check():
            return
        time.sleep(0.01)
    raise AssertionError(f"not within 10 s: {what}")


def test_a_held_heartbeat_gets_the_task_when_the_deployment_commits(server: Server) -> None:
    a = server.agent("52:54:00:00:00:01")
    a.heartbeat()  # online, credential cached
    presence(server).refresh(force=True)
    replies: list[dict[str, Any]] = []
    poll = threading.Thread(target=lambda: replies.append(held_heartbeat(server, a, 30.0)))
    poll.start()
    until(lambda: presence(server).waiting_count() == 1, "the heartbeat is held")
    dep = server.deploy(clients=[a.mac])
    poll.join(20)
    assert not poll.is_alive()
    assert replies[0]["task"] is not None
    assert (replies[0]["task"]["deployment_id"], replies[0]["task"]["kind"]) == (dep["deployment"], "deploy")
    assert presence(server).waiting_count() == 0


def test_a_held_heartbeat_without_work_is_answered_idle_when_the_wait_is_over(server: Server) -> None:
    a = server.agent("52:54:00:00:00:02")
    a.heartbeat()
    presence(server).refresh(force=True)
    assert held_heartbeat(server, a, 0.2) == {"task": None, "cancel": False, "interval": 60.0}
    assert presence(server).waiting_count() == 0


def test_another_clients_deployment_does_not_wake_a_held_heartbeat(server: Server) -> None:
    a, b = server.agent("52:54:00:00:00:03"), server.agent("52:54:00:00:00:04")
    for agent in (a, b):
        agent.heartbeat()
    presence(server).refresh(force=True)
    replies: list[dict[str, Any]] = []
    poll = threading.Thread(target=lambda: replies.append(held_heartbeat(server, a, 1.0)))
    poll.start()
    until(lambda: presence(server).waiting_count() == 1, "the heartbeat is held")
    server.deploy(clients=[b.mac])
    poll.join(20)
    assert replies == [{"task": None, "cancel": False, "interval": 60.0}]  # answered at the end of its wait


def test_another_servers_client_queued_event_wakes_the_held_client(server: Server) -> None:
    """With several servers on one PostgreSQL, the deployment may commit on another one: its
    ``client-queued`` event (LISTEN/NOTIFY, server/pgfanout.py) wakes the client held here."""
    a = server.agent("52:54:00:00:00:05")
    a.heartbeat()
    p = presence(server)
    p.refresh(force=True)

    async def held() -> bool:
        waiting = asyncio.create_task(p.wait_for_work(a.client_id, 30.0))
        await asyncio.sleep(0)
        p.wake_for_event({"type": "deployment-created", "client_id": a.client_id})  # not for a client
        assert p.idle(a.client_id)
        p.wake_for_event({"type": "client-queued", "client_id": a.client_id + 1})  # another client
        assert not p.idle(a.client_id)  # its busy set is stale now: no fast answer until it is re-read
        await asyncio.sleep(0.05)
        assert not waiting.done()
        event = {"type": "client-queued", "client_id": a.client_id}
        threading.Thread(target=p.wake_for_event, args=(event,)).start()  # the fan-out's thread
        return await asyncio.wait_for(waiting, 20)

    assert asyncio.run(held()) is True
