"""server/pacing.py: the heartbeat interval and the offline threshold stretch together with the
clients online, and a client told a long interval is not judged by a short one later."""

from __future__ import annotations

import time

import pytest
from serverkit import Server

from fleetcast.server.pacing import Pacing


def test_interval_and_stale_after_stretch_with_the_room() -> None:
    online = [1500]
    p = Pacing(interval=2.0, stale_after=15.0, max_rate=1000.0, online=lambda: online[0])
    assert (p.interval(), p.stale_after()) == (2.0, 15.0)  # 750 a second: as configured
    online[0] = 5000
    assert (p.interval(), p.stale_after()) == (5.0, 37.5)  # 1,000 a second, not 2,500
    online[0] = 100  # the room emptied: the 5 s told a moment ago may still be in agents' hands
    assert p.interval() == 2.0
    assert p.stale_after() == 37.5


def test_the_largest_factor_expires_after_its_own_stale_after(monkeypatch: pytest.MonkeyPatch) -> None:
    online = [4000]
    p = Pacing(interval=2.0, stale_after=15.0, max_rate=1000.0, online=lambda: online[0])
    assert p.interval() == 4.0
    online[0] = 10
    now = time.monotonic()
    monkeypatch.setattr(time, "monotonic", lambda: now + 29.0)
    assert p.stale_after() == 30.0  # 15 s x 2, still within 30 s of the last 4 s interval told
    monkeypatch.setattr(time, "monotonic", lambda: now + 31.0)
    assert p.stale_after() == 15.0


def test_heartbeat_replies_tell_the_stretched_interval(server: Server) -> None:
    """The conftest server beats every 0.5 s; at 2 a second allowed, 3 online clients mean 1.5 s."""
    orch = server.http.app.state.orchestrator  # type: ignore[attr-defined]
    orch.pacing.max_rate = 2.0
    agents = [server.agent(f"52:54:00:00:05:0{i}") for i in range(3)]
    for a in agents:
        a.heartbeat()
    assert agents[0].heartbeat()["interval"] == 1.5
    orch.presence.refresh(force=True)
    assert agents[1].heartbeat() == {"task": None, "cancel": False, "interval": 1.5}  # the fast path


def test_a_late_loop_stretches_the_interval_until_it_keeps_time() -> None:
    online = [20]
    p = Pacing(interval=2.0, stale_after=15.0, max_rate=1000.0, online=lambda: online[0])
    p.note_lag(1.0)
    assert p.load_factor == 1.0  # 20 clients' heartbeats do not make the loop late: the machine does
    online[0] = 300
    p.note_lag(0.01)
    assert p.load_factor == 1.0
    for _ in range(2):  # stalls, not yet a lack of CPU
        p.note_lag(1.0)
    assert p.load_factor == 1.0
    p.note_lag(0.1)  # on time again: the count starts over
    for _ in range(2):
        p.note_lag(1.0)
    assert p.load_factor == 1.0
    for _ in range(3):
        p.note_lag(1.0)
    assert p.load_factor == pytest.approx(1.25**3)
    assert p.interval() == 4.0  # 2 s x 1.95, rounded up to 0.1 s
    for _ in range(20):
        p.note_lag(1.0)
    assert p.load_factor == 8.0  # bounded
    assert p.stale_after() == 120.0
    for _ in range(40):
        p.note_lag(0.0)
    assert p.load_factor == 1.0 and p.interval() == 2.0
    assert p.stale_after() == 120.0  # the 16 s told a moment ago may still be in agents' hands
