"""CPU per idle heartbeat inside the server application, without sockets or other processes.

    .venv/bin/python bench/heartbeat.py [--count 3000] [--enroll 2000]

A server application (SQLite in a temporary folder, the test kit's one-image catalog) is called
through ASGI directly: one enrolled agent, warmed up, then ``--count`` idle heartbeats; prints the
process CPU time per heartbeat (all threads: the worker-thread hops and SQLite included). On a
shared machine this is the number that holds still when wall-clock latencies swing with other
people's load -- bench/load.py measures the whole server on sockets. Printed, never asserted.

``--enroll N``: also N enrollments of new machines (distinct MACs, the load generator's inventory),
50 at a time as bench/load.py sends them; prints the CPU and the wall time per enrollment.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "unit" / "server"))  # serverkit: the fake catalog

from fastapi.testclient import TestClient  # noqa: E402
from serverkit import FakeCatalog, Server  # noqa: E402

from fleetcast.server.app import create_app  # noqa: E402
from fleetcast.server.settings import ServerSettings  # noqa: E402


def measure(count: int) -> float:
    with tempfile.TemporaryDirectory(prefix="fleetcast-hb-") as tmp:
        settings = ServerSettings(data_dir=Path(tmp) / "data")
        catalog = FakeCatalog(settings.store)
        app = create_app(settings, catalog=catalog)
        with TestClient(app) as http:
            enroll = (settings.secrets_dir / "enroll-token").read_text().strip()
            admin = (settings.secrets_dir / "admin-token").read_text().strip()
            agent = Server(http, admin, enroll, catalog, settings).agent("52:54:00:00:00:01")
            agent.heartbeat()
            presence = getattr(app.state.orchestrator, "presence", None)
            if presence is not None:
                presence.refresh(force=True)
            body = b'{"task_id":null}'
            scope: dict[str, Any] = {
                "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                "scheme": "http", "path": "/api/agent/heartbeat", "raw_path": b"/api/agent/heartbeat",
                "query_string": b"", "root_path": "", "client": ("127.0.0.1", 5000),
                "server": ("127.0.0.1", 8080),
                "headers": [
                    (b"host", b"bench"), (b"authorization", f"Bearer {agent.credential}".encode()),
                    (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                ],
            }  # fmt: skip
            statuses: list[int] = []

            async def receive() -> dict[str, Any]:
                return {"type": "http.request", "body": body, "more_body": False}

            async def send(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    statuses.append(message["status"])

            async def run(n: int) -> float:
                for _ in range(200):  # warm-up
                    await app(dict(scope, state={}), receive, send)
                started = time.process_time()
                for _ in range(n):
                    await app(dict(scope, state={}), receive, send)
                return (time.process_time() - started) / n

            per = asyncio.run(run(count))
            if set(statuses) != {200}:
                raise SystemExit(f"heartbeats answered {sorted(set(statuses))}, not 200")
            return per


def _scope(path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8080), "headers": headers,
    }  # fmt: skip


def measure_enroll(count: int, parallel: int = 50) -> tuple[float, float]:
    """(CPU seconds, wall seconds) per enrollment of ``count`` new machines, ``parallel`` at once."""
    sys.path.insert(0, str(HERE))
    from load import inventory  # the same inventory bench/load.py enrolls with

    with tempfile.TemporaryDirectory(prefix="fleetcast-enroll-") as tmp:
        settings = ServerSettings(data_dir=Path(tmp) / "data")
        app = create_app(settings, catalog=FakeCatalog(settings.store))
        with TestClient(app):  # runs the lifespan (background loops) like a server
            token = (settings.secrets_dir / "enroll-token").read_text().strip()
            statuses: list[int] = []

            async def one(i: int, sem: asyncio.Semaphore) -> None:
                body = json.dumps({"enroll_token": token, "inventory": inventory(i)}).encode()
                headers = [(b"host", b"bench"), (b"content-type", b"application/json"),
                           (b"content-length", str(len(body)).encode())]  # fmt: skip
                sent = [False]

                async def receive() -> dict[str, Any]:
                    if sent[0]:
                        await asyncio.sleep(3600)
                    sent[0] = True
                    return {"type": "http.request", "body": body, "more_body": False}

                async def send(message: dict[str, Any]) -> None:
                    if message["type"] == "http.response.start":
                        statuses.append(message["status"])

                async with sem:
                    await app(dict(_scope("/api/agent/enroll", headers), state={}), receive, send)

            async def run() -> tuple[float, float]:
                sem = asyncio.Semaphore(parallel)
                await asyncio.gather(*(one(i, sem) for i in range(10_000, 10_050)))  # warm-up
                cpu, wall = time.process_time(), time.perf_counter()
                await asyncio.gather(*(one(i, sem) for i in range(count)))
                return (time.process_time() - cpu) / count, (time.perf_counter() - wall) / count

            per = asyncio.run(run())
            if set(statuses) != {200}:
                raise SystemExit(f"enrollments answered {sorted(set(statuses))}, not 200")
            return per


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--enroll", type=int, default=0, help="also time N enrollments of new machines")
    args = parser.parse_args()
    if not 0 < args.count <= 1_000_000 or not 0 <= args.enroll <= 20_000:
        parser.error("count 1-1000000, enroll 0-20000")
    if args.enroll:
        cpu, wall = measure_enroll(args.enroll)
        print(f"enrollment: {cpu * 1e3:.2f} ms of CPU, {wall * 1e3:.2f} ms of wall time each "
              f"({args.enroll} new machines, 50 at once)")  # fmt: skip
    per = measure(args.count)
    print(f"idle heartbeat: {per * 1e6:.0f} µs of CPU each (ASGI application only, {args.count} heartbeats)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
