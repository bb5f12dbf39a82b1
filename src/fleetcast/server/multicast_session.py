"""A multicast session's state: its members, what it streams, its rate (server/multicast.py runs them).

``Session``: one stream of one batch (``cycle`` 1) or a next cycle (``cycle`` 2, 3, … ``after`` the
session it follows), with its members (``Member``: the packs each lacks, its receive counter) and
what it has still to send; ``TaskInfo`` / ``DeploymentInfo``: what the manager read from the database.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any

from fleetcast.transport.multicast import Channel, Sender

ENDED = ("finished", "ended", "failed")


@dataclass(frozen=True)
class TaskInfo:
    id: int
    client_id: int
    mac: str
    state: str
    attempt: int
    checkpoint_chunk: int
    assigned_at: datetime | None = None  # when the agent was handed the task


@dataclass(frozen=True)
class DeploymentInfo:
    id: int
    image: str
    batch: int
    transport: str
    multicast: dict[str, Any]
    targets: int  # still to deploy (queued or running): a last, smaller batch waits for no more
    total: int = 0  # all its clients: a deployment of one batch has no later batch to make a session for
    pending: frozenset[int] = frozenset()  # ids of its targets still queued or running


@dataclass
class Member:
    target_id: int
    client_id: int
    mac: str
    joined_at: float
    missing: frozenset[str] | None = None  # the packs it lacks (None: all of them)
    state: str = "joined"  # joined | dropped | left
    rx: list[tuple[float, int]] = field(default_factory=list)
    packs: int = 0
    result: dict[str, Any] | None = None

    def rx_rate(self, window: float, now: float) -> float | None:
        recent = [(t, b) for t, b in self.rx if t >= now - window]
        if len(recent) < 2 or recent[-1][0] - recent[0][0] < window / 2:
            return None
        return (recent[-1][1] - recent[0][1]) / (recent[-1][0] - recent[0][0])


@dataclass
class Session:
    id: str
    deployment_id: int
    image: str
    image_id: str
    channel: Channel
    min_clients: int
    max_wait: float
    drop_below: float
    created: float
    state: str = "waiting"
    members: dict[int, Member] = field(default_factory=dict)
    sender: Sender | None = None
    started: float | None = None
    started_utc: datetime | None = None  # the start as wall time (compared with a task's assigned_at)
    finished: float | None = None
    error: str | None = None
    rate: list[tuple[float, int]] = field(default_factory=list)
    last_drop: float = 0.0
    suspect: tuple[int, float] | None = None  # (target id, since): the receiver standing out
    log: IO[bytes] | None = None
    cycle: int = 1  # 2, 3, ...: a next cycle, streaming what the members of the cycle before still lack
    after: str | None = None  # the session this cycle follows (it starts when that one has ended)
    sizes: dict[str, int] = field(default_factory=dict)  # pack id -> stored bytes, in the image's order
    send: list[str] = field(default_factory=list)  # the packs this session streams, fixed at its start
    streaming_at: float | None = None
    start_now: bool = False  # the admin said start (console's Start now): as if max_wait had passed

    @property
    def active(self) -> list[Member]:
        return [m for m in self.members.values() if m.state == "joined"]

    def union(self) -> list[str]:
        """What the members lack together, in the image's order (what this session streams)."""
        wanted: set[str] = set()
        for m in self.active:
            if m.missing is None:
                return list(self.sizes)
            wanted |= m.missing
        return [p for p in self.sizes if p in wanted]

    def stream_rate(self, now: float) -> float | None:
        """Bytes/s since the first byte, or None before it."""
        if self.sender is None or self.streaming_at is None or self.sender.bytes_sent <= 0:
            return None
        end = self.finished if self.finished is not None else now
        return self.sender.bytes_sent / max(end - self.streaming_at, 0.5)

    def remaining(self) -> int:
        """Bytes the stream has still to send (all of them before the start, 0 once ended)."""
        if self.state in ENDED:
            return 0
        send = self.send if self.started is not None else self.union()
        total = sum(self.sizes[p] for p in send)
        return max(0, total - (self.sender.bytes_sent if self.sender else 0))

    def view(self) -> dict[str, Any]:
        sender = self.sender
        return {
            "session": self.id,
            "deployment": self.deployment_id,
            "image": self.image,
            "state": self.state,
            "cycle": self.cycle,
            "group": self.channel.group,
            "port": self.channel.port,
            "interface": self.channel.interface,
            "min_clients": self.min_clients,
            "max_wait": self.max_wait,
            "drop_below": self.drop_below,
            "sender_pid": sender.pid if sender and sender.running else None,
            "bytes_sent": sender.bytes_sent if sender else 0,
            "packs_sent": sender.packs_sent if sender else 0,
            "packs_to_send": len(self.send) if self.started is not None else len(self.union()),
            "error": self.error,
            "members": [
                {"task_id": m.target_id, "mac": m.mac, "state": m.state, "packs": m.packs, "result": m.result}
                for m in self.members.values()
            ],
        }
