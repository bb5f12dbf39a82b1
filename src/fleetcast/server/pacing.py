"""How often agents heartbeat: the configured interval, stretched when so many clients are online that
their heartbeats would pass ``max_heartbeats_per_second`` (issue 12, Scale).

Every heartbeat reply tells the agent when to come back (``interval``), so the server can pace its
own load, as Nomad's servers do with ``max_heartbeats_per_second``: with N clients online the
interval is ``max(heartbeat_interval, N / max_heartbeats_per_second)`` -- 2 s up to 2,000 clients at
the default 1,000 a second, 5 s at 5,000. The silence after which a client is shown offline
(``stale_after``) is stretched by the same factor, and by the largest factor told within the last
stretched ``stale_after``: a client told to come back in 5 s is never judged by the 15 s meant for 2 s
heartbeats after the room got smaller.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

DEFAULT_MAX_HEARTBEATS_PER_SECOND = 1000.0


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

    def factor(self) -> float:
        """By how much the configured interval is stretched now (1.0: not at all)."""
        k = max(1.0, self._online() / (self.max_rate * self.base_interval))
        if k > 1.0:
            now = time.monotonic()
            if k >= self._high or now >= self._high_until:
                with self._lock:
                    self._high = max(k, self._high if now < self._high_until else 1.0)
                    self._high_until = now + self.base_stale_after * k
        return k

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
