"""How long the deploy plan's IP-list work takes for a big room (issue 9): parse N lines
``MAC,NAME,IP/PREFIX``, apply them to N assignments, check the conflicts against N enrolled clients.

    .venv/bin/python bench/ip_list.py [N ...]
"""

from __future__ import annotations

import ipaddress
import sys
import time

from fleetcast.server.plan import Assignment, PlanClient
from fleetcast.server.presets import apply_ip_list, conflicts, parse_ip_list


def room(n: int) -> tuple[str, list[Assignment], list[PlanClient], dict[int, str]]:
    net = ipaddress.ip_network("10.0.0.0/16")
    macs = [f"52:54:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}" for i in range(1, n + 1)]
    text = "mac,name,ip\n" + "".join(f"{m},PC-{i:05},{net[i + 10]}/16\n" for i, m in enumerate(macs, 1))
    plan = [Assignment(i, i, m, None, None) for i, m in enumerate(macs, 1)]
    enrolled = [PlanClient(i, m) for i, m in enumerate(macs, 1)]
    addresses = {i: str(net[i + 20000]) for i in range(1, n + 1)}
    return text, plan, enrolled, addresses


def main(sizes: list[int]) -> None:
    for n in sizes:
        text, plan, enrolled, addresses = room(n)
        t0 = time.perf_counter()
        entries = parse_ip_list(text)
        t1 = time.perf_counter()
        planned = apply_ip_list(plan, entries, "10.0.0.1")
        t2 = time.perf_counter()
        found = conflicts(planned, enrolled, addresses)
        t3 = time.perf_counter()
        ms = [f"{1e3 * t:.1f} ms" for t in (t1 - t0, t2 - t1, t3 - t2)]
        print(f"{n:6} clients, {len(text) / 1024:4.0f} KiB: parse {ms[0]}, apply {ms[1]}, "
              f"conflicts {ms[2]} ({len(found)} found)")  # fmt: skip


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [100, 1000, 10000])
