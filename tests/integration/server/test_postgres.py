"""The same deploy flow against a real PostgreSQL started by the test (Debian's package)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from servekit import deploy_flow, make_image, postgres_cluster, serve

pytestmark = pytest.mark.integration


def test_serve_postgres_deploy_flow(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_image(data / "store")
    with postgres_cluster() as url, serve(data, database=url) as server:
        result = deploy_flow(server, fail_mac="52:54:00:12:34:02")
        states = {c["mac"]: (c["state"], c["error"]) for c in result["clients"]}
        assert states == {
            "52:54:00:12:34:01": ("done", None),
            "52:54:00:12:34:02": ("failed", "disk too small"),
            "52:54:00:12:34:03": ("done", None),
        }
        assert not (data / "fleetcast.db").exists()
        assert server.get("/api/deployments")["deployments"][0]["state"] == "failed"


def test_two_servers_on_one_postgres_keep_one_batch_limit(tmp_path: Path) -> None:
    """Issue 12, Scale-out: two `fleetcast serve` on one PostgreSQL, agents split between them, one
    deployment of batch 1 created on the first: a place is taken under the deployment row's lock
    (SELECT ... FOR UPDATE), so never more than one client writes, whichever server it talks to; and
    the live event stream of one server carries the other's events (LISTEN/NOTIFY)."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from servekit import SimAgent, max_writing

    data_a, data_b = tmp_path / "a" / "data", tmp_path / "b" / "data"
    make_image(data_a / "store")
    data_b.mkdir(parents=True)
    (data_b / "store").symlink_to(data_a / "store")  # one store, as a shared mount would be
    with postgres_cluster() as url, serve(data_a, database=url) as a, serve(data_b, database=url) as b:
        seen: list[str] = []  # the live stream of B (LISTEN/NOTIFY: server/pgfanout.py)

        def follow_b() -> None:
            with httpx.stream("GET", b.url + "/api/events", headers=b.headers, timeout=60) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        seen.append(line)
                        if sum('"client-enrolled"' in x for x in seen) == 4:
                            return

        reader = threading.Thread(target=follow_b, daemon=True)
        reader.start()
        time.sleep(1.0)  # B's stream is connected
        agents = [SimAgent(a if i % 2 else b, f"52:54:00:12:35:0{i}") for i in range(4)]  # own tokens
        for agent in agents:
            agent.enroll()
        reader.join(30)
        enrolled = sorted(x.split('"mac": "')[1][:17] for x in seen if '"client-enrolled"' in x)
        assert enrolled == sorted(x.mac for x in agents)  # A's enrollments too, live on B
        assert len(b.get("/api/clients")["clients"]) == 4  # one database: both servers list all four
        r = httpx.post(
            a.url + "/api/deployments",
            json={"image": "tiny", "clients": "all", "disk": "0", "batch": 1, "then": "none"},
            headers=a.headers,
            timeout=30,
        )
        assert r.status_code == 201, r.text
        dep = r.json()["deployment"]
        deadline = time.monotonic() + 240
        with ThreadPoolExecutor(len(agents)) as pool:  # all at once: both servers race for the place
            while any(not x.finished for x in agents):
                assert time.monotonic() < deadline, b.get(f"/api/deployments/{dep}")
                list(pool.map(lambda x: x.finished or x.step(), agents))
        events = b.get("/api/events/log", deployment_id=dep)["events"]
        assert max_writing(events) == 1
        assert sorted(e["mac"] for e in events if e["type"] == "client-done") == sorted(x.mac for x in agents)
        assert b.get(f"/api/deployments/{dep}")["state"] == "done"
