"""Load benchmark: N simulated agents heartbeating against one ``fleetcast serve`` on loopback.

    .venv/bin/python bench/load.py [--agents 500,2000] [--seconds 20] [--interval 2] [--page 100]
        [--long-poll] [--postgres]

For each N: a fresh data directory and server (SQLite, 127.0.0.1, a free port); every agent enrolls
(at most 50 at once) and then heartbeats from a random offset, each on its own keep-alive
connection, coming back after the ``interval`` the server's reply says (as the agent does; the server
stretches it past ``max_heartbeats_per_second``, server/pacing.py) -- or every ``--interval`` with
``--fixed-interval``. When all have enrolled and beaten once, a window of ``--seconds`` starts:
heartbeats started in it are timed, an admin fetches ``GET /api/clients?limit=PAGE`` once a second
(every tenth time the whole list), and the server's CPU time is read from /proc. Prints p50/p99,
the errors, and the server's CPU per request -- the number that holds on a busy shared machine
where latencies swing. Run it before and after a change, on the same machine. Bounded: loopback
only, at most 10,000 agents, at most 600 s; the server is stopped at the end even on failure.
Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

MAX_AGENTS = 10_000
MAX_SECONDS = 600
FLEETCAST = str(Path(sys.executable).with_name("fleetcast"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def inventory(i: int) -> dict[str, object]:
    mac = f"52:54:01:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"
    return {
        "macs": [mac],
        "hostname": f"sim-{i}",
        "cpu": {"model": "sim", "cores": 2},
        "ram_bytes": 1 << 30,
        "dmi": {"vendor": "sim", "model": "sim", "serial": mac},
        "disks": [{"path": "/dev/sda", "size": 128 << 30}],
        "agent_version": "bench",
    }


class Conn:
    """One keep-alive HTTP/1.1 connection spoken by hand (a real agent holds one too): requests are
    pre-built bytes, the answer is read by its Content-Length. Cheap enough that the load generator
    is not what is measured (httpx costs about as much CPU per request as the server)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        reused = self.writer is not None
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None and self.writer is not None
        try:
            self.writer.write(raw)
            try:
                head = await self.reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                if not reused or exc.partial:
                    raise
                self.close()  # the server closed the idle connection: again on a new one, as httpx does
                return await self.request(raw)
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            body = await self.reader.readexactly(length) if length else b""
            if b"connection: close" in head.lower():
                self.close()
            return status, body
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            self.close()
            raise

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def build(method: str, path: str, token: str | None, body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: bench\r\n"
    if token:
        head += f"Authorization: Bearer {token}\r\n"
    if body or method == "POST":
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


NETWORK_ERRORS = (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError)


@dataclass
class Run:
    """What one run measured: only requests *started* inside the window count."""

    start: float = 0.0
    end: float = 0.0
    beats: list[float] = field(default_factory=list)
    pages: list[float] = field(default_factory=list)
    whole: list[float] = field(default_factory=list)
    told: list[float] = field(default_factory=list)  # the interval each heartbeat's agent followed
    offline: int = 0  # the most clients a whole list showed offline (all of them beat: should be 0)
    errors: dict[str, int] = field(default_factory=dict)

    def inside(self, t: float) -> bool:
        return self.start <= t < self.end

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


async def run_load(
    host: str, port: int, enroll: str, admin: str, server_cpu: Callable[[], float], *,
    agents: int, seconds: float, interval: float, page: int, fixed: bool = False, long_poll: bool = False,
) -> None:  # fmt: skip
    """Every agent enrolls (at most 50 at once) and then heartbeats every ``interval`` from a random
    offset, like agents booting over a few minutes; the window of ``seconds`` starts when all have
    enrolled and heartbeat once."""
    run = Run()
    sem = asyncio.Semaphore(50)
    enrolled = asyncio.Event()
    count = [0, 0]  # enrolled, first heartbeat done
    t0 = time.monotonic()
    run.start = run.end = float("inf")

    async def agent(i: int) -> None:
        conn = Conn(host, port)
        body = json.dumps({"enroll_token": enroll, "inventory": inventory(i)}).encode()
        status, answer = 0, b""
        async with sem:
            for attempt in range(5):
                try:
                    status, answer = await conn.request(build("POST", "/api/agent/enroll", None, body))
                    if status == 200:
                        break
                    run.error(f"enroll {status}")
                except NETWORK_ERRORS as exc:
                    run.error(f"enroll {type(exc).__name__}")
                if attempt == 4:
                    break
        count[0] += 1  # enrolled or given up: the window must not wait for it
        if count[0] == agents:
            enrolled.set()
        if status != 200:
            count[1] += 1
            return
        credential = json.loads(answer)["credential"]
        raw = build("POST", "/api/agent/heartbeat", credential, b'{"task_id":null}')
        await asyncio.sleep(random.uniform(0, interval))
        first = True
        told = interval  # as a real agent, come back when the reply says (server/pacing.py)
        while time.monotonic() < run.end:
            held = told if long_poll and not first else 0.0  # the agent asks for a hold once idle
            if long_poll:
                body = json.dumps({"task_id": None, "wait": held}, separators=(",", ":")).encode()
                raw = build("POST", "/api/agent/heartbeat", credential, body)
            started = time.monotonic()
            try:
                status, answer = await conn.request(raw)
                if status != 200 and run.inside(started):
                    run.error(str(status))
                if status == 200 and not fixed:
                    told = float(json.loads(answer)["interval"])
            except NETWORK_ERRORS as exc:
                if run.inside(started):
                    run.error(type(exc).__name__)
            took = time.monotonic() - started
            if run.inside(started):
                run.beats.append(max(0.0, took - held))  # a held reply: how late past its hold
                run.told.append(told)
            if first:
                first = False
                count[1] += 1
            await asyncio.sleep(max(0.0, told - took))
        conn.close()

    async def admin_lists() -> None:
        conn = Conn(host, port)
        paged = build("GET", f"/api/clients?limit={page}", admin)
        whole = build("GET", "/api/clients", admin)
        n = 0
        while time.monotonic() < run.end:
            if not run.inside(time.monotonic()):
                await asyncio.sleep(0.2)
                continue
            n += 1
            every_tenth = n % 10 == 0
            started = time.monotonic()
            try:
                status, answer = await conn.request(whole if every_tenth else paged)
                listed = json.loads(answer)["clients"] if status == 200 else None
                got = -1 if listed is None else len(listed)
                if every_tenth and listed is not None:  # no client may be taken for silent
                    run.offline = max(run.offline, sum(1 for c in listed if not c["online"]))
                if got != (agents if every_tenth else min(page, agents)):
                    run.error(f"clients {status} {got}")
            except (*NETWORK_ERRORS, ValueError) as exc:
                run.error(f"clients {type(exc).__name__}")
            (run.whole if every_tenth else run.pages).append(time.monotonic() - started)
            await asyncio.sleep(1.0)
        conn.close()

    async def window() -> None:
        try:
            await asyncio.wait_for(enrolled.wait(), MAX_SECONDS)
        except TimeoutError:
            print(f"  enrolled only {count[0]} of {agents} agents in {MAX_SECONDS} s: gave up", flush=True)
            run.start = run.end = 0.0  # every agent stops
            return
        print(f"  enrolled {agents} agents in {time.monotonic() - t0:.1f} s", flush=True)
        while count[1] < agents:
            await asyncio.sleep(0.1)
        cpu0 = server_cpu()
        run.start = time.monotonic()
        run.end = run.start + seconds
        await asyncio.sleep(seconds)
        cpu = server_cpu() - cpu0
        per = cpu / max(1, len(run.beats) + len(run.pages) + len(run.whole)) * 1000
        print(f"  server CPU in the window: {cpu:.1f} s = {per:.2f} ms per request", flush=True)

    await asyncio.gather(window(), admin_lists(), *(agent(i) for i in range(agents)))
    rate = len(run.beats) / seconds
    told = "/".join(f"{t:g}" for t in sorted(set(run.told))) or f"{interval:g}"
    kind = "held heartbeat lateness" if long_poll else "heartbeat"
    print(
        f"  {kind} p50 {pct(run.beats, 0.5) * 1000:.0f} ms p99 {pct(run.beats, 0.99) * 1000:.0f} ms "
        f"({len(run.beats)} in {seconds:.0f} s = {rate:.0f}/s at the {told} s interval the server told); "
        f"GET /api/clients?limit={page} p50 {pct(run.pages, 0.5) * 1000:.0f} ms "
        f"p99 {pct(run.pages, 0.99) * 1000:.0f} ms ({len(run.pages)}); all {agents} clients "
        f"p50 {pct(run.whole, 0.5) * 1000:.0f} ms ({len(run.whole)}), shown offline at most {run.offline}; "
        f"errors {run.errors or 'none'}",
        flush=True,
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench(
    agents: int, seconds: float, interval: float, page: int, *, fixed: bool = False, long_poll: bool = False,
    postgres: bool = False,
) -> None:  # fmt: skip
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="fleetcast-load-"))
        database: list[str] = []
        if postgres:  # a throwaway cluster on loopback (tests/fixtures/postgres.py), removed at the end
            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "fixtures"))
            from postgres import postgres_cluster

            database = ["--database", stack.enter_context(postgres_cluster())]
        data = Path(tmp) / "data"
        port = free_port()
        log = open(Path(tmp) / "server.log", "w")  # noqa: SIM115
        proc = subprocess.Popen(
            [FLEETCAST, "--data", str(data), "serve", "--listen", f"127.0.0.1:{port}", *database],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            for _ in range(300):
                try:
                    if httpx.get(url + "/api/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            admin = (data / "secrets" / "admin-token").read_text().strip()
            enroll = (data / "secrets" / "enroll-token").read_text().strip()
            where = "PostgreSQL" if postgres else "SQLite"
            print(f"{agents} agents, heartbeat every {interval:g} s, {seconds:g} s, {where}:", flush=True)
            own0 = time.process_time()
            asyncio.run(
                run_load(
                    "127.0.0.1", port, enroll, admin, lambda: cpu_seconds(proc.pid),
                    agents=agents, seconds=seconds, interval=interval, page=page, fixed=fixed,
                    long_poll=long_poll,
                )
            )  # fmt: skip
            print(f"  load generator CPU, whole run: {time.process_time() - own0:.1f} s", flush=True)
            log.flush()
            for line in (Path(tmp) / "server.log").read_text(errors="replace").splitlines():
                if "heartbeats in the last" in line:  # the server's own count: memory vs full path
                    print("  server:", line.split("heartbeats in the last", 1)[1].strip(), flush=True)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", default="500,2000", help="comma-separated agent counts")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--page", type=int, default=100, help="GET /api/clients?limit=PAGE once a second")
    parser.add_argument(
        "--fixed-interval",
        action="store_true",
        help="beat every --interval whatever the replies say (the agent follows the reply's interval)",
    )
    parser.add_argument(
        "--long-poll",
        action="store_true",
        help="idle heartbeats ask the server to hold them for the interval (wait=, as the agent does); "
        "the latency printed is then how late past that hold the reply came",
    )
    parser.add_argument("--postgres", action="store_true", help="the server on a throwaway PostgreSQL")
    args = parser.parse_args()
    counts = [int(c) for c in args.agents.split(",")]
    if any(not 0 < c <= MAX_AGENTS for c in counts) or not 0 < args.seconds <= MAX_SECONDS:
        parser.error(f"agents 1-{MAX_AGENTS}, seconds at most {MAX_SECONDS}")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed run still stops its server
    for n in counts:
        bench(n, args.seconds, args.interval, args.page, fixed=args.fixed_interval, long_poll=args.long_poll,
              postgres=args.postgres)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
