"""CPU per idle heartbeat inside the server application, without sockets or other processes.

    .venv/bin/python bench/heartbeat.py [--count 3000]

A server application (SQLite in a temporary folder, the test kit's one-image catalog) is called
through ASGI directly: one enrolled agent, warmed up, then ``--count`` idle heartbeats; prints the
process CPU time per heartbeat (all threads: the worker-thread hops and SQLite included). On a
shared machine this is the number that holds still when wall-clock latencies swing with other
people's load -- bench/load.py measures the whole server on sockets. Printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=3000)
    args = parser.parse_args()
    if not 0 < args.count <= 1_000_000:
        parser.error("count 1-1000000")
    per = measure(args.count)
    print(f"idle heartbeat: {per * 1e6:.0f} µs of CPU each (ASGI application only, {args.count} heartbeats)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
