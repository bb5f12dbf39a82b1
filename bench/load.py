"""Load benchmark: N simulated agents heartbeating against one ``fleetcast serve`` on loopback.

    .venv/bin/python bench/load.py [--agents 500,2000] [--seconds 20] [--interval 2]

For each N: a fresh data directory and server (SQLite, 127.0.0.1, a free port), N agents enrolled,
then for ``--seconds`` every agent heartbeats once per ``--interval`` (spread evenly, as real agents
drift apart), while an admin client fetches ``GET /api/clients`` once a second. Prints p50/p99 of both
and the errors. It measures this code as it is: run it before and after a change, on the same
machine. Bounded: loopback only, at most 10,000 agents, at most 600 s; the server is stopped at the
end even on failure. Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
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
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        try:
            self.writer.write(raw)
            head = await self.reader.readuntil(b"\r\n\r\n")
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


def build(method: str, path: str, token: str, body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n"
    if body or method == "POST":
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


async def run_load(
    url: str, enroll: str, admin: str, *, agents: int, seconds: float, interval: float, page: int
) -> None:
    host, _, port = url.removeprefix("http://").rpartition(":")
    limits = httpx.Limits(max_connections=50, max_keepalive_connections=50)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as http:
        sem = asyncio.Semaphore(50)

        async def enroll_one(i: int) -> str:
            body = {"enroll_token": enroll, "inventory": inventory(i)}
            async with sem:
                for attempt in range(5):  # a keep-alive connection the server closed meanwhile
                    try:
                        r = await http.post("/api/agent/enroll", json=body)
                        break
                    except httpx.TransportError:
                        if attempt == 4:
                            raise
                r.raise_for_status()
                credential: str = r.json()["credential"]
                return credential

        t0 = time.monotonic()
        credentials = await asyncio.gather(*(enroll_one(i) for i in range(agents)))
        print(f"  enrolled {agents} agents in {time.monotonic() - t0:.1f} s", flush=True)
    beats: list[float] = []
    lists: list[float] = []
    full: list[float] = []
    errors: dict[str, int] = {}
    end = time.monotonic() + seconds

    def error(kind: str) -> None:
        errors[kind] = errors.get(kind, 0) + 1

    async def agent(i: int, credential: str) -> None:
        conn = Conn(host, int(port))
        raw = build("POST", "/api/agent/heartbeat", credential, b'{"task_id":null}')
        await asyncio.sleep(interval * i / agents)
        while time.monotonic() < end:
            started = time.monotonic()
            try:
                status, _ = await conn.request(raw)
                if status != 200:
                    error(str(status))
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                error(type(exc).__name__)
            took = time.monotonic() - started
            beats.append(took)
            await asyncio.sleep(max(0.0, interval - took))
        conn.close()

    async def admin_lists() -> None:
        conn = Conn(host, int(port))
        paged = build("GET", f"/api/clients?limit={page}", admin)
        whole = build("GET", "/api/clients", admin)
        n = 0
        while time.monotonic() < end:
            n += 1
            every_tenth = n % 10 == 0
            started = time.monotonic()
            try:
                status, body = await conn.request(whole if every_tenth else paged)
                got = len(json.loads(body)["clients"]) if status == 200 else -1
                if got != (agents if every_tenth else min(page, agents)):
                    error(f"clients {status} {got}")
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
                error(f"clients {type(exc).__name__}")
            (full if every_tenth else lists).append(time.monotonic() - started)
            await asyncio.sleep(1.0)
        conn.close()

    await asyncio.gather(admin_lists(), *(agent(i, c) for i, c in enumerate(credentials)))
    rate = len(beats) / seconds
    print(
        f"  heartbeat p50 {pct(beats, 0.5) * 1000:.0f} ms p99 {pct(beats, 0.99) * 1000:.0f} ms "
        f"({len(beats)} in {seconds:.0f} s = {rate:.0f}/s, wanted {agents / interval:.0f}/s); "
        f"GET /api/clients?limit={page} p50 {pct(lists, 0.5) * 1000:.0f} ms "
        f"p99 {pct(lists, 0.99) * 1000:.0f} ms ({len(lists)}); all {agents} clients "
        f"p50 {pct(full, 0.5) * 1000:.0f} ms ({len(full)}); errors {errors or 'none'}",
        flush=True,
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench(agents: int, seconds: float, interval: float, page: int) -> None:
    with tempfile.TemporaryDirectory(prefix="fleetcast-load-") as tmp:
        data = Path(tmp) / "data"
        port = free_port()
        log = open(Path(tmp) / "server.log", "w")  # noqa: SIM115
        proc = subprocess.Popen(
            [FLEETCAST, "--data", str(data), "serve", "--listen", f"127.0.0.1:{port}"],
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
            print(f"{agents} agents, heartbeat every {interval:g} s, {seconds:g} s:", flush=True)
            server0, own0, wall0 = cpu_seconds(proc.pid), time.process_time(), time.monotonic()
            asyncio.run(
                run_load(url, enroll, admin, agents=agents, seconds=seconds, interval=interval, page=page)
            )
            wall = time.monotonic() - wall0
            print(
                f"  CPU over the run (enrollment included): server {cpu_seconds(proc.pid) - server0:.1f} s, "
                f"load generator {time.process_time() - own0:.1f} s, in {wall:.1f} s wall",
                flush=True,
            )
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
    args = parser.parse_args()
    counts = [int(c) for c in args.agents.split(",")]
    if any(not 0 < c <= MAX_AGENTS for c in counts) or not 0 < args.seconds <= MAX_SECONDS:
        parser.error(f"agents 1-{MAX_AGENTS}, seconds at most {MAX_SECONDS}")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    for n in counts:
        bench(n, args.seconds, args.interval, args.page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
