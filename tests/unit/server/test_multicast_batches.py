"""Multicast sessions of a deployment of several batches: which session a joining agent gets.

No udp-sender is started: the session manager's Sender is replaced by a stand-in that "streams"
at once, and the store by one that opens a two-pack manifest.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
from serverkit import CHUNK_ID, Server

import fleetcast.server.multicast as mc

MACS = [f"52:54:00:00:02:{i:02x}" for i in range(1, 4)]
PACKS = [CHUNK_ID, "cd" * 32]


class FakeSender:
    """Takes the place of transport.multicast.Sender: started, it has sent everything."""

    def __init__(self, channel: Any, session_id: str, image_id: str, packs: Any, **_: Any) -> None:
        self.pid = 4242
        self.bytes_sent = 0
        self.packs_sent = 0
        self.error: str | None = None
        self.finished = threading.Event()

    def start(self) -> None:
        self.bytes_sent = 100
        self.finished.set()

    def stop(self) -> None:
        pass

    @property
    def running(self) -> bool:
        return False


@dataclass
class FakeStore:
    def open(self, name: str) -> Any:
        return SimpleNamespace(
            image_id="ef" * 32, pack_refs=lambda: [SimpleNamespace(id=p, stored=10) for p in PACKS]
        )


@pytest.fixture
def manager(server: Server, monkeypatch: pytest.MonkeyPatch) -> mc.MulticastManager:
    mgr: mc.MulticastManager = server.http.app.state.multicast  # type: ignore[attr-defined]
    monkeypatch.setattr(mc, "Sender", FakeSender)
    return mgr


def _wait_state(mgr: mc.MulticastManager, session: str, state: str) -> None:
    deadline = time.monotonic() + 10
    while mgr.sessions[session].state != state:
        assert time.monotonic() < deadline, f"session {session}: {mgr.sessions[session].state}, not {state}"
        time.sleep(0.05)


def test_a_late_member_of_an_ended_batch_stream_is_late_not_a_new_batch(
    server: Server, manager: mc.MulticastManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b, c = (server.agent(m) for m in MACS)
    dep = server.deploy(batch=2, transport="multicast", max_wait=600.0)["deployment"]
    monkeypatch.setattr(manager.orch.catalog, "store", FakeStore)  # what a session opens
    ta, tb = a.heartbeat()["task"]["task_id"], b.heartbeat()["task"]["task_id"]
    assert c.heartbeat()["task"] is None  # the batch is full
    first = a.call(f"/api/agent/multicast/{ta}/join", {})
    assert (first["state"], first["cycle"]) == ("waiting", 1)
    assert manager.sessions[first["session"]].min_clients == 2  # a and b (c cannot come yet)
    server.post(f"/api/deployments/{dep}/multicast", {"start_now": True})  # b is slow: start without it
    _wait_state(manager, first["session"], "finished")
    a.result(ta)
    tc = c.heartbeat()["task"]["task_id"]  # a's place: c is the next batch
    # b was handed its task before that stream started: late for it (next cycle or HTTP), not the first
    # of a new batch session that would wait max_wait (600 s) for clients that are not coming
    late = b.call(f"/api/agent/multicast/{tb}/join", {})
    assert late["state"] == "late" or late["cycle"] == 2, late
    kinds = [e for e in server.get(f"/api/events/log?deployment_id={dep}")["events"]]
    assert any(e["type"] == "client-multicast-late" and e["mac"] == MACS[1] for e in kinds)
    # c, the next batch: a session (or the cycle) that does not wait for b's finished batch
    nxt = c.call(f"/api/agent/multicast/{tc}/join", {})
    assert nxt["state"] in ("waiting", "starting", "streaming", "late"), nxt
    if nxt["state"] != "late" and nxt.get("cycle") == 1:
        assert manager.sessions[nxt["session"]].min_clients == 1  # c is the only one that can come
