"""server.events: the SSE stream's replay of the event log."""

from __future__ import annotations

import asyncio
from typing import Any

from fleetcast.server.events import EventBus


def _event(i: int) -> dict[str, Any]:
    return {"id": i, "type": "client-progress", "deployment_id": 1}


def test_replay_reads_every_page_of_the_log() -> None:
    log = [_event(i) for i in range(1, 8)]
    asked: list[int] = []

    def load_since(after: int) -> list[dict[str, Any]]:  # pages of 3, like load_events' limit
        asked.append(after)
        return [e for e in log if e["id"] > after][:3]

    async def replay() -> list[str]:
        bus = EventBus()
        return [f async for f in bus.stream(load_since, since=0, deployment_id=None, follow=False)]

    frames = asyncio.run(replay())
    assert [f.splitlines()[0] for f in frames] == [f"id: {i}" for i in range(1, 8)]
    assert asked == [0, 3, 6, 7]
