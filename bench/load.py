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


async def run_load(
    url: str, enroll: str, admin: str, *, agents: int, seconds: float, interval: float
) -> None:
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as http:
        sem = asyncio.Semaphore(50)

        async def enroll_one(i: int) -> str:
            async with sem:
                r = await http.post(
                    "/api/agent/enroll", json={"enroll_token": enroll, "inventory": inventory(i)}
                )
                r.raise_for_status()
                credential: str = r.json()["credential"]
                return credential

        t0 = time.monotonic()
        credentials = await asyncio.gather(*(enroll_one(i) for i in range(agents)))
        print(f"  enrolled {agents} agents in {time.monotonic() - t0:.1f} s", flush=True)
        beats: list[float] = []
        lists: list[float] = []
        errors: dict[str, int] = {}
        end = time.monotonic() + seconds

        async def agent(i: int, credential: str) -> None:
            headers = {"Authorization": f"Bearer {credential}"}
            await asyncio.sleep(interval * i / agents)
            while time.monotonic() < end:
                started = time.monotonic()
                try:
                    r = await http.post("/api/agent/heartbeat", json={"task_id": None}, headers=headers)
                    if r.status_code != 200:
                        errors[str(r.status_code)] = errors.get(str(r.status_code), 0) + 1
                except httpx.HTTPError as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                took = time.monotonic() - started
                beats.append(took)
                await asyncio.sleep(max(0.0, interval - took))

        async def admin_lists() -> None:
            headers = {"Authorization": f"Bearer {admin}"}
            while time.monotonic() < end:
                started = time.monotonic()
                try:
                    r = await http.get("/api/clients", headers=headers)
                    if r.status_code != 200 or len(r.json()["clients"]) != agents:
                        errors["clients"] = errors.get("clients", 0) + 1
                except httpx.HTTPError as exc:
                    errors[f"clients {type(exc).__name__}"] = (
                        errors.get(f"clients {type(exc).__name__}", 0) + 1
                    )
                lists.append(time.monotonic() - started)
                await asyncio.sleep(1.0)

        await asyncio.gather(admin_lists(), *(agent(i, c) for i, c in enumerate(credentials)))
        rate = len(beats) / seconds
        print(
            f"  heartbeat p50 {pct(beats, 0.5) * 1000:.0f} ms p99 {pct(beats, 0.99) * 1000:.0f} ms "
            f"({len(beats)} in {seconds:.0f} s = {rate:.0f}/s, wanted {agents / interval:.0f}/s); "
            f"GET /api/clients p50 {pct(lists, 0.5) * 1000:.0f} ms p99 {pct(lists, 0.99) * 1000:.0f} ms "
            f"({len(lists)}); errors {errors or 'none'}",
            flush=True,
        )


def bench(agents: int, seconds: float, interval: float) -> None:
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
            asyncio.run(run_load(url, enroll, admin, agents=agents, seconds=seconds, interval=interval))
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
    args = parser.parse_args()
    counts = [int(c) for c in args.agents.split(",")]
    if any(not 0 < c <= MAX_AGENTS for c in counts) or not 0 < args.seconds <= MAX_SECONDS:
        parser.error(f"agents 1-{MAX_AGENTS}, seconds at most {MAX_SECONDS}")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    for n in counts:
        bench(n, args.seconds, args.interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
