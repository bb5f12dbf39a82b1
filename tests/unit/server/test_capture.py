"""server/capture.py on a real store: capture creation and its refusals, the agent's have and resumable,
verified pack uploads, and the leases gc keeps (publish and the agent side: tests/e2e)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blake3
import pytest
from fastapi.testclient import TestClient
from serverkit import Agent, Server

from fleetcast.server.app import create_app
from fleetcast.server.capture import leased_packs
from fleetcast.server.settings import ServerSettings
from fleetcast.store.capture import capture
from fleetcast.store.chunkstore import chunk_hash, compress
from fleetcast.store.images import ImageStore

MAC = "02:00:00:00:00:01"


@pytest.fixture
def store_server(tmp_path: Path) -> Iterator[tuple[Server, ImageStore]]:
    settings = ServerSettings(data_dir=tmp_path / "data", heartbeat_interval=0.5)
    store = ImageStore(settings.store)
    store.ensure()
    disk = tmp_path / "disk.raw"
    disk.write_bytes(os.urandom(1 << 20))
    capture(disk, "existing", store)
    app = create_app(settings)
    with TestClient(app) as http:
        admin = (settings.secrets_dir / "admin-token").read_text().strip()
        enroll = (settings.secrets_dir / "enroll-token").read_text().strip()
        yield Server(http, admin, enroll, app.state.catalog, settings), store


def _db(server: Server) -> Any:
    app: Any = server.http.app
    return app.state.db


def _post(server: Server, body: dict[str, Any], status: int) -> dict[str, Any]:
    r = server.http.post("/api/captures", json=body, headers={"Authorization": f"Bearer {server.admin}"})
    assert r.status_code == status, r.text
    result: dict[str, Any] = r.json()
    return result


def test_an_existing_name_is_refused_before_any_task(store_server: tuple[Server, ImageStore]) -> None:
    server, _ = store_server
    server.agent(MAC, "golden-pc")
    problem = _post(server, {"client": MAC, "name": "existing", "disk": "0"}, 409)
    assert problem["message"] == "image 'existing' already exists on the server"
    assert "--replace" in problem["hint"]
    assert server.get("/api/captures") == {"captures": []}
    assert server.get("/api/deployments")["deployments"] == []


def test_unknown_clients_and_bad_rules_are_refused(store_server: tuple[Server, ImageStore]) -> None:
    server, _ = store_server
    server.agent(MAC, "golden-pc")
    assert _post(server, {"client": "nobody", "name": "new"}, 404)["message"] == (
        "no enrolled client has the MAC or name 'nobody'"
    )
    assert _post(server, {"client": "02:00:00:00:00:99", "name": "new"}, 404)["message"] == (
        "client 02:00:00:00:00:99 is not enrolled"
    )
    assert "image name 'a b' is not valid" in _post(server, {"client": MAC, "name": "a b"}, 400)["message"]
    _post(server, {"client": MAC, "name": "new", "disk": "colour=blue"}, 400)


def _task(server: Server, agent: Agent, name: str = "fresh") -> dict[str, Any]:
    view = _post(server, {"client": "GOLDEN-PC", "name": name, "disk": "0"}, 200)  # by name, any case
    assert view["client"] == MAC and view["state"] == "queued"
    task: dict[str, Any] = agent.heartbeat()["task"]
    assert task["kind"] == "capture" and task["image"] == name and task["replace"] is False
    return task


def _pack(content: bytes) -> tuple[str, bytes, str]:
    stored = compress(content)
    return chunk_hash(content), stored, blake3.blake3(stored).hexdigest()


def test_have_answers_known_chunks_and_checks_its_body(store_server: tuple[Server, ImageStore]) -> None:
    server, store = store_server
    agent = server.agent(MAC, "golden-pc")
    task = _task(server, agent)
    base = f"/api/agent/captures/{task['task_id']}"
    assert server.http.post(f"{base}/begin", headers=agent.headers).json()["image"] == "fresh"
    known = [bytes.fromhex(c.hash) for _, c in store.open("existing").entries()]
    asked = [b"\x01" * 32, known[0], known[0]]
    r = server.http.post(f"{base}/have", content=b"".join(asked), headers=agent.headers)
    assert r.status_code == 200, r.text
    reply = r.json()
    assert [k[0] for k in reply["known"]] == [2]  # the digest's last position; the unknown one absent
    pack = reply["known"][0][1]
    assert pack in reply["packs"] and reply["packs"][pack]["stored"] > 0
    assert pack in leased_packs(_db(server))
    r = server.http.post(f"{base}/have", content=b"\x00" * 33, headers=agent.headers)
    assert r.status_code == 400
    assert r.json()["message"] == ("have request: expected a multiple of 32 bytes of digests, found 33 bytes")
    view = server.get(f"/api/captures/{task['deployment_id']}")
    assert (view["chunks_known"], view["chunks_new"]) == (2, 1)


def test_pack_upload_resumes_at_the_offset_and_is_verified(store_server: tuple[Server, ImageStore]) -> None:
    server, store = store_server
    agent = server.agent(MAC, "golden-pc")
    task = _task(server, agent)
    pid, stored, shash = _pack(os.urandom(200_000))
    url = f"/api/agent/captures/{task['task_id']}/packs/{pid}"
    q = {"stored_hash": shash, "stored": len(stored)}
    half = len(stored) // 2

    r = server.http.put(url, params={**q, "offset": 0}, content=stored[:half], headers=agent.headers)
    assert r.json() == {"received": half, "complete": False}
    assert server.http.get(url, params=q, headers=agent.headers).json() == {
        "received": half,
        "complete": False,
    }
    assert not store.chunks.has(pid)
    assert pid in leased_packs(_db(server))  # before it is stored

    r = server.http.put(url, params={**q, "offset": half + 10}, content=stored[half:], headers=agent.headers)
    assert r.status_code == 409
    assert r.json()["message"] == f"upload offset {half + 10} is past the {half} bytes received"

    r = server.http.put(url, params={**q, "offset": half}, content=stored[half:], headers=agent.headers)
    assert r.json() == {"received": len(stored), "complete": True}
    assert store.chunks.read(pid) == stored
    assert server.http.get(url, params=q, headers=agent.headers).json()["complete"] is True
    assert server.get(f"/api/captures/{task['deployment_id']}")["bytes_sent"] == len(stored)


def test_a_pack_that_does_not_verify_is_refused(store_server: tuple[Server, ImageStore]) -> None:
    server, store = store_server
    agent = server.agent(MAC, "golden-pc")
    task = _task(server, agent)
    _, stored, shash = _pack(b"some content" * 1000)
    wrong = "0" * 64  # the content does not hash to this id
    url = f"/api/agent/captures/{task['task_id']}/packs/{wrong}"
    r = server.http.put(
        url, params={"stored_hash": shash, "stored": len(stored)}, content=stored, headers=agent.headers
    )
    assert r.status_code == 422, r.text
    assert "0000000000000000" in r.json()["message"]
    assert not store.chunks.has(wrong)


def test_only_the_capture_task_of_this_client_may_upload(store_server: tuple[Server, ImageStore]) -> None:
    server, _ = store_server
    agent = server.agent(MAC, "golden-pc")
    other = server.agent("02:00:00:00:00:02", "other")
    task = _task(server, agent)
    r = server.http.post(f"/api/agent/captures/{task['task_id']}/have", content=b"", headers=other.headers)
    assert r.status_code == 403
    assert r.json()["message"] == f"task {task['task_id']} belongs to another client"


def test_replace_is_refused_while_a_deployment_deploys_the_image(
    store_server: tuple[Server, ImageStore],
) -> None:
    server, _ = store_server
    server.agent(MAC, "golden-pc")
    server.agent("02:00:00:00:00:02", "target")
    body = {"image": "existing", "clients": "02:00:00:00:00:02", "disk": "0", "then": "none"}
    dep = server.post("/api/deployments", body, status=201)["deployment"]
    problem = _post(server, {"client": MAC, "name": "existing", "replace": True}, 409)
    assert problem["message"] == f"image 'existing' cannot be replaced while deployment {dep} deploys it"
    server.post(f"/api/deployments/{dep}/cancel")
    assert _post(server, {"client": MAC, "name": "existing", "replace": True}, 200)["replace"] is True


def test_a_failed_capture_is_not_retried_as_a_deployment(store_server: tuple[Server, ImageStore]) -> None:
    """CONSOLE's ask: retry would make a deploy deployment of an image that was never made."""
    server, _ = store_server
    agent = server.agent(MAC, "golden-pc")
    task = _task(server, agent)
    agent.result(task["task_id"], "failed", "disk vanished")
    dep = task["deployment_id"]
    r = server.http.post(f"/api/deployments/{dep}/retry", headers={"Authorization": f"Bearer {server.admin}"})
    assert r.status_code == 400
    assert r.json()["message"] == f"capture {dep} cannot be retried: start a new capture"
    assert r.json()["hint"].startswith("fleetcast capture CLIENT NAME")
    assert [d["deployment"] for d in server.get("/api/deployments")["deployments"]] == [dep]


def test_plan_refuses_a_static_ip_the_image_cannot_take(store_server: tuple[Server, ImageStore]) -> None:
    """The Linux root's os_info records its network stack at capture; none -> the plan says so."""
    import subprocess

    server, store = store_server
    disk = store.root.parent / "minimal.raw"
    disk.write_bytes(bytes(4 << 20))
    subprocess.run(["sfdisk", "-q", str(disk)], input=b"label: gpt\n,2MiB\n", check=True)
    capture(disk, "minimal", store, os_info={1: {"os": "linux", "network_stack": None}})
    server.agent(MAC, "pc")
    body = {"image": "minimal", "clients": "all", "disk": "0", "ip": "10.0.0.101/24", "gateway": "10.0.0.1"}
    r = server.http.post(
        "/api/deployments/plan", json=body, headers={"Authorization": f"Bearer {server.admin}"}
    )
    assert r.status_code == 400, r.text
    assert r.json()["message"].startswith("image 'minimal' uses no network stack fleetcast can configure")
    body.pop("ip"), body.pop("gateway")
    assert server.post("/api/deployments/plan", body)["clients"][0]["ip"] is None
