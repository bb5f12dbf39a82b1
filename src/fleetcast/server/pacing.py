"""How often agents heartbeat: the configured interval, stretched when so many clients are online that
their heartbeats would pass ``max_heartbeats_per_second`` (issue 12, Scale).

Every heartbeat reply tells the agent when to come back (``interval``), so the server can pace its
own load, as Nomad's servers do with ``max_heartbeats_per_second``: with N clients online the
interval is ``max(heartbeat_interval, N / max_heartbeats_per_second)`` -- 2 s up to 5,000 clients at
the default 2,500 a second, 4 s at 10,000. The silence after which a client is shown offline
(``stale_after``) is stretched by the same factor, and by the largest factor told within the last
stretched ``stale_after``: a client told to come back in 5 s is never judged by the 15 s meant for 2 s
heartbeats after the room got smaller. On a machine that gives the server less CPU than that rate
needs, the app's loop wakes late; ``note_lag`` then stretches the interval further (up to 8x) until
it keeps time again.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

DEFAULT_MAX_HEARTBEATS_PER_SECOND = 2500.0  # 5,000 agents at the default 2 s
LAG_HIGH = 0.25  # seconds the event loop answers late: heartbeats are more than the server gets CPU for
LAG_LOW = 0.05
MAX_LOAD_FACTOR = 8.0
LAG_ROUNDS = 3  # late this many rounds in a row: a single stall (a whole list, a GC pause) is not load
LAG_MIN_ONLINE = 200  # fewer clients are not what makes the loop late (a busy machine, a test run)


class Pacing:
    def __init__(
        self, *, interval: float, stale_after: float, max_rate: float, online: Callable[[], int]
    ) -> None:
        self.base_interval = interval
        self.base_stale_after = stale_after
        self.max_rate = max_rate
        self._online = online
        self._lock = threading.Lock()
        self._high = 1.0  # the largest factor told ...
        self._high_until = 0.0  # ... and until when (monotonic) it may still be in an agent's hands
        self.load_factor = 1.0  # grows while the event loop runs late (note_lag), shrinks back after
        self._late_rounds = 0

    def factor(self) -> float:
        """By how much the configured interval is stretched now (1.0: not at all)."""
        k = max(1.0, self._online() / (self.max_rate * self.base_interval)) * self.load_factor
        if k > 1.0:
            now = time.monotonic()
            if k >= self._high or now >= self._high_until:
                with self._lock:
                    self._high = max(k, self._high if now < self._high_until else 1.0)
                    self._high_until = now + self.base_stale_after * k
        return k

    def note_lag(self, lag: float) -> None:
        """How late the app's periodic loop woke (seconds): on a machine where the server gets less
        CPU than its heartbeats need, everything queues behind them (enrollments too: 4,400 of 5,000
        agents enrolled, then a few a second); so the interval grows by a quarter while the loop is
        more than LAG_HIGH late with at least LAG_MIN_ONLINE clients online (a few clients' heartbeats
        are not what makes it late) and shrinks back by a tenth while it is under LAG_LOW. Only from
        the LAG_ROUNDS-th late round in a row: one stall is not a lack of CPU, and stretching at every
        one of them gave up the 2 s default at 2,000 agents on a quiet machine."""
        late = lag > LAG_HIGH and self._online() >= LAG_MIN_ONLINE
        self._late_rounds = self._late_rounds + 1 if late else 0
        if self._late_rounds >= LAG_ROUNDS:
            self.load_factor = min(MAX_LOAD_FACTOR, self.load_factor * 1.25)
        elif not late and lag < LAG_LOW and self.load_factor > 1.0:
            self.load_factor = max(1.0, self.load_factor / 1.1)

    def interval(self) -> float:
        """The ``interval`` a heartbeat reply tells the agent (stretched ones rounded up to 0.1 s, so
        replies stay few distinct texts)."""
        k = self.factor()
        return self.base_interval if k == 1.0 else math.ceil(self.base_interval * k * 10) / 10

    def stale_after(self) -> float:
        """Seconds of silence after which a client is offline, for every interval still in use."""
        k = self.factor()
        if time.monotonic() < self._high_until:
            k = max(k, self._high)
        return self.base_stale_after * k
