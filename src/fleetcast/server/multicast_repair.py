"""Next cycle or HTTP: where a late joiner (or a receiver that still lacks packs) gets them sooner.

A client that cannot take the running stream any more (it joined after the start, it was restarted, its
stream broke or ended with packs missing) can wait for the **next cycle** — a new session, started as
soon as the running one ends, that streams the union of what its members still lack — or fetch the
packs by **HTTP** at once. The server estimates both and answers with the sooner one
(docs/multicast.md#late-joiners-and-cycles):

- ``rate`` is the stream's measured rate (bytes sent since its first byte ÷ time), the best figure
  for what this network delivers; before a stream has sent anything, the last measured rate of the
  deployment, else ``GUESS_RATE``;
- **cycle** = the running stream's remaining bytes ÷ rate + ``CYCLE_START`` (the sender starts, the
  receivers connect) + the next cycle's bytes (the union of its members' missing packs, this
  client's included) ÷ rate: the time until the last of them has come;
- **HTTP** shares the server's link with the stream and with the other clients already repairing by
  HTTP: while the stream runs an HTTP client gets rate ÷ (HTTP clients + 2), afterwards
  rate ÷ (HTTP clients + 1). That is the fair share of one link — what the lab's tbf-limited server
  link does, and the cautious assumption for a server whose link is shared by many clients.

So a lone late joiner of a big image takes HTTP (one copy, at once, at about half the link), while a
second and later late joiners, a restarted client near the end of a stream, or a room of latecomers
join the next cycle (one more copy on the wire for all of them, not one each). ``[multicast] repair``
can force ``cycle`` or ``http``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

CYCLE_START = 3.0  # seconds from a cycle's end to the next cycle's first byte
GUESS_RATE = 12.5e6  # bytes/s (100 Mbit/s) when nothing was measured yet


class RepairMode(StrEnum):
    """How a deployment's late joiners are served (``[multicast] repair``, ``POST .../multicast``)."""

    SOONER = "sooner"  # the next cycle or HTTP, by the estimate below
    CYCLE = "cycle"
    HTTP = "http"


REPAIR_MODES = tuple(m.value for m in RepairMode)  # ("sooner", "cycle", "http"), the order errors name


@dataclass(frozen=True)
class Estimate:
    cycle: float  # seconds until the next cycle has brought this client's packs
    http: float  # seconds until HTTP has brought them
    rate: float  # the stream rate both are computed from, bytes/s

    @property
    def sooner(self) -> str:
        return "cycle" if self.cycle <= self.http else "http"

    def to_dict(self) -> dict[str, float]:
        return {"cycle_s": round(self.cycle, 1), "http_s": round(self.http, 1), "rate_bps": round(self.rate)}


def estimate(*, missing: int, union: int, remaining: int, rate: float | None, http_clients: int) -> Estimate:
    """Both estimates for a client lacking ``missing`` bytes; ``union``: the next cycle's bytes with this
    client in it; ``remaining``: what the running stream has still to send (0: none runs);
    ``http_clients``: clients repairing by HTTP now."""
    r = rate if rate and rate > 0 else GUESS_RATE
    streaming = remaining / r  # seconds the running stream still takes
    cycle = streaming + CYCLE_START + union / r
    after = r / (http_clients + 1)  # an HTTP client's share once the stream has ended
    during = r / (http_clients + 2)  # ... and while it runs
    if missing <= during * streaming:
        http = missing / during
    else:
        http = streaming + (missing - during * streaming) / after
    return Estimate(cycle, http, r)


def choose(mode: str, est: Estimate, *, cycle: int, max_cycles: int) -> str:
    """``cycle`` or ``http`` for the ``[multicast] repair`` mode; no cycle beyond ``max_cycles``."""
    if cycle > max_cycles or mode == "http":
        return "http"
    return "cycle" if mode == "cycle" else est.sooner
