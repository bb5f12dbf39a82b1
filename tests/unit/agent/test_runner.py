"""The agent's task runner against an in-process fake server (httpx.MockTransport) serving a real
image captured by the engine; the disk is a plain file allowed with --allow-disk."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetcast.agent.api import AgentApi
from fleetcast.agent.loop import Agent, AgentSettings
from fleetcast.agent.runner import TaskRunner, plan_post_action
from fleetcast.agent.state import StateStore, TaskState
from fleetcast.protocol import parse_task
from fleetcast.store.capture import capture
from fleetcast.store.images import ImageStore
from fleetcast.store.manifest import Manifest
from fleetcast.store.restore import restore

SERVER = "http://fake.test"
CHUNK = 64 * 1024


class FakeServer:
    def __init__(self, store: ImageStore, image: str, task: dict[str, Any] | None = None) -> None:
        self.store = store
        self.image = image
        self.task = task
        self.lock = threading.Lock()
        self.progress: list[dict[str, Any]] = []
        self.results: list[dict[str, Any]] = []
        self.chunk_gets = 0
        self.cancel_after_chunks: int | None = None
        self.chunk_delay = 0.0
        self.heartbeats = 0

    def __call__(self, req: httpx.Request) -> httpx.Response:
        path = req.url.path
        if path == "/api/agent/enroll":
            body = json.loads(req.content)
            assert body["enroll_token"] == "tok"
            return httpx.Response(200, json={"client_id": 7, "credential": "cred"})
        assert req.headers["authorization"] == "Bearer cred"
        if path == "/api/agent/heartbeat":
            with self.lock:
                self.heartbeats += 1
                task, self.task = self.task, None
            return httpx.Response(200, json={"task": task, "cancel": False, "interval": 0.05})
        if path.startswith("/api/agent/tasks/") and path.endswith("/progress"):
            with self.lock:
                self.progress.append(json.loads(req.content))
                cancel = self.cancel_after_chunks is not None and self.chunk_gets >= self.cancel_after_chunks
            return httpx.Response(200, json={"cancel": cancel})
        if path.endswith("/result"):
            self.results.append(json.loads(req.content))
            return httpx.Response(200, json={})
        if path == f"/api/agent/images/{self.image}/index":
            return httpx.Response(200, content=(self.store.images_dir / self.image / "index").read_bytes())
        if path == f"/api/agent/images/{self.image}/manifest":
            return httpx.Response(200, content=self.store.read_manifest_bytes(self.image))
        if path.startswith("/api/agent/chunks/"):
            with self.lock:
                self.chunk_gets += 1
            if self.chunk_delay:
                time.sleep(self.chunk_delay)
            return httpx.Response(200, content=self.store.chunk_path(path.rsplit("/", 1)[1]).read_bytes())
        return httpx.Response(404, json={"error": "NotFound", "message": f"no route {path}"})


@pytest.fixture
def image(tmp_path: Path) -> tuple[ImageStore, Manifest, Path]:
    src = tmp_path / "golden.img"
    with open(src, "wb") as f:
        for i in range(48):
            f.write(bytes([i + 1]) * 40_000 + bytes(CHUNK * 2 - 40_000))
    store = ImageStore(tmp_path / "store")
    store.ensure()
    manifest = capture(src, "golden", store, chunk_size=CHUNK, pack_size=CHUNK)
    assert manifest.entry_count >= 40
    assert len(manifest.chunk_ids()) >= 20  # many small packs: resume and cancel have room
    return store, manifest, src


def _task(**kw: Any) -> dict[str, Any]:
    task: dict[str, Any] = {
        "task_id": 11,
        "deployment_id": 3,
        "kind": "deploy",
        "image": "golden",
        "image_size": 0,
        "disk_rule": "0",
        "grow": False,
        "name": None,
        "ip": None,
        "gateway": None,
        "dns": [],
        "then": "none",
        "resume_chunk": 0,
        "attempt": 1,
    }
    task.update(kw)
    return task


def _runner(server: FakeServer, tmp_path: Path, disk: Path) -> tuple[TaskRunner, AgentApi, StateStore]:
    api = AgentApi(SERVER, transport=httpx.MockTransport(server), outage_limit=5)
    api.enroll("tok", {"macs": ["52:54:00:00:00:01"]})
    state = StateStore(tmp_path / "state")
    runner = TaskRunner(
        api,
        mac="52:54:00:00:00:01",
        allow=[disk],
        state=state,
        stop=threading.Event(),
        workers=2,
        prefetch=4,
        report_interval=0.01,
    )
    return runner, api, state


def _empty_disk(tmp_path: Path, manifest: Manifest) -> Path:
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(manifest.disk_size)
    return disk


def test_deploy_done(tmp_path: Path, image: tuple[ImageStore, Manifest, Path]) -> None:
    store, manifest, src = image
    server = FakeServer(store, "golden")
    disk = _empty_disk(tmp_path, manifest)
    runner, _, state = _runner(server, tmp_path, disk)
    assert runner.run(parse_task(_task(then="reboot"))) == "done"
    assert disk.read_bytes() == src.read_bytes()
    assert server.chunk_gets == len(manifest.chunk_ids())  # every chunk (pack) fetched once
    (result,) = server.results
    assert result["state"] == "done"
    assert result["error"] is None
    assert result["disk"] == str(disk)
    assert result["action"] == "reboot"
    assert (
        result["changes"][-1] == f"post action: would reboot (not performed: {disk} is a loop device or file)"
    )
    phases = [p["phase"] for p in server.progress]
    assert phases[0] == "selecting-disk"
    assert "writing" in phases
    assert phases[-1] == "finishing"
    assert server.progress[-1]["checkpoint_chunk"] == len(manifest.pack_ids())
    assert server.progress[-1]["bytes_done"] == manifest.data_bytes
    assert state.load() is None  # cleared at the end


def test_resume_from_checkpoint(tmp_path: Path, image: tuple[ImageStore, Manifest, Path]) -> None:
    store, manifest, src = image
    server = FakeServer(store, "golden")
    disk = _empty_disk(tmp_path, manifest)
    restore(manifest, store.source(), disk)  # the disk already holds every pack
    done = manifest.pack_ids()[::2]  # the checkpoint: a set of packs, not a prefix
    k = len(done)
    runner, _, state = _runner(server, tmp_path, disk)
    state.save(TaskState(SERVER, 11, 3, "golden", str(disk), k))
    state.path.with_name(state.path.name + ".packs").write_text("\n".join(done))
    assert runner.run(parse_task(_task(resume_chunk=k, attempt=2))) == "done"
    # only the packs not done come again (and those holding the disk's headers: a resumed restore
    # invalidates the headers again and writes them last)
    assert 0 < server.chunk_gets < len(manifest.pack_ids())
    assert disk.read_bytes() == src.read_bytes()
    first_writing = next(p for p in server.progress if p["phase"] == "writing")
    assert first_writing["checkpoint_chunk"] == k


@pytest.mark.parametrize(
    ("server_url", "task_id"),
    [
        (SERVER, 99),  # another task
        ("http://10.9.9.9:8080", 11),  # the same task id, but from another server (or a reset one)
    ],
)
def test_resume_refused_without_matching_state(
    tmp_path: Path, image: tuple[ImageStore, Manifest, Path], server_url: str, task_id: int
) -> None:
    store, manifest, src = image
    server = FakeServer(store, "golden")
    disk = _empty_disk(tmp_path, manifest)
    runner, _, state = _runner(server, tmp_path, disk)
    state.save(TaskState(server_url, task_id, 3, "golden", str(disk), manifest.entry_count))
    assert runner.run(parse_task(_task(resume_chunk=5, attempt=2))) == "done"
    assert server.chunk_gets == len(manifest.chunk_ids())
    assert disk.read_bytes() == src.read_bytes()


def test_cancel_stops_writing(tmp_path: Path, image: tuple[ImageStore, Manifest, Path]) -> None:
    store, manifest, _ = image
    server = FakeServer(store, "golden")
    server.cancel_after_chunks = 3
    server.chunk_delay = 0.02
    disk = _empty_disk(tmp_path, manifest)
    runner, _, _ = _runner(server, tmp_path, disk)
    assert runner.run(parse_task(_task())) == "cancelled"
    (result,) = server.results
    assert result == {
        "state": "cancelled",
        "error": "cancelled by the server",
        "disk": str(disk),
        "action": "none",
        "changes": [],
    }
    assert server.chunk_gets < len(manifest.chunk_ids())


def test_bad_disk_rule_fails_before_writing(tmp_path: Path, image: tuple[ImageStore, Manifest, Path]) -> None:
    store, manifest, _ = image
    server = FakeServer(store, "golden")
    disk = _empty_disk(tmp_path, manifest)
    runner, _, _ = _runner(server, tmp_path, disk)
    assert runner.run(parse_task(_task(disk_rule="serial=NOPE"))) == "failed"
    (result,) = server.results
    assert result["state"] == "failed"
    assert result["error"].startswith(f"disk rule 'serial=NOPE' matches no disk; disks seen: {disk} (0.0 GB)")
    assert server.chunk_gets == 0
    assert disk.read_bytes() == bytes(manifest.disk_size)


def test_the_planned_image_id_is_checked_before_writing(
    tmp_path: Path, image: tuple[ImageStore, Manifest, Path]
) -> None:
    """A task names the image it planned by id (issue 14): the same name with other content (replaced,
    repacked, upgraded since the plan) is refused before any byte is written; the right id deploys."""
    store, manifest, src = image
    server = FakeServer(store, "golden")
    disk = _empty_disk(tmp_path, manifest)
    runner, _, _ = _runner(server, tmp_path, disk)
    other = "ab" * 32
    assert runner.run(parse_task(_task(image_id=other))) == "failed"
    (result,) = server.results
    assert result["error"].startswith(f"image 'golden' has id {manifest.image_id} but {other} was expected")
    assert server.chunk_gets == 0
    assert disk.read_bytes() == bytes(manifest.disk_size)
    server.results.clear()
    assert runner.run(parse_task(_task(image_id=manifest.image_id))) == "done"
    assert disk.read_bytes() == src.read_bytes()


def test_disk_too_small_fails_before_writing(
    tmp_path: Path, image: tuple[ImageStore, Manifest, Path]
) -> None:
    store, manifest, _ = image
    server = FakeServer(store, "golden")
    disk = tmp_path / "small.img"
    disk.write_bytes(bytes(4096))
    runner, _, _ = _runner(server, tmp_path, disk)
    assert runner.run(parse_task(_task())) == "failed"
    assert server.results[0]["error"].startswith(
        f"disk {disk} is 4096 bytes (0.0 GB) but the image needs at least {manifest.disk_size} bytes"
    )
    assert disk.read_bytes() == bytes(4096)


def test_agent_loop_once(tmp_path: Path, image: tuple[ImageStore, Manifest, Path]) -> None:
    store, manifest, src = image
    server = FakeServer(store, "golden", task=_task())
    disk = _empty_disk(tmp_path, manifest)
    agent = Agent(
        AgentSettings(
            SERVER, "tok", allow=(disk,), state_dir=tmp_path / "st", once=True, report_interval=0.01
        )
    )
    agent.api = AgentApi(SERVER, transport=httpx.MockTransport(server), outage_limit=5)
    assert agent.run() == 0
    assert disk.read_bytes() == src.read_bytes()
    assert server.results[0]["state"] == "done"


def test_unusable_task_whose_failure_cannot_be_reported_keeps_the_agent(tmp_path: Path) -> None:
    results: list[str] = []

    def server(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/api/agent/enroll":
            return httpx.Response(200, json={"client_id": 7, "credential": "cred"})
        if req.url.path == "/api/agent/heartbeat":
            return httpx.Response(200, json={"task": {"task_id": 5, "kind": "wipe"}, "interval": 0.05})
        results.append(req.url.path)
        return httpx.Response(404, json={"error": "TaskNotFound", "message": "task 5 does not exist"})

    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(4096))
    agent = Agent(AgentSettings(SERVER, "tok", allow=(disk,), state_dir=tmp_path / "st", once=True))
    agent.api = AgentApi(SERVER, transport=httpx.MockTransport(server), outage_limit=5)
    assert agent.run() == 1  # the task failed; the agent itself did not crash
    assert results == ["/api/agent/tasks/5/result"]


def test_plan_post_action() -> None:
    assert plan_post_action("none", disk=None, execute=True) == (False, "post action: none")
    assert plan_post_action("shutdown", disk=None, execute=False) == (
        False,
        "post action: would shutdown (not performed: agent runs with --post-action report)",
    )
    assert plan_post_action("reboot", disk="/dev/loop0", execute=True) == (
        False,
        "post action: would reboot (not performed: /dev/loop0 is a loop device or file)",
    )


def test_disk_in_use_is_refused(
    tmp_path: Path, image: tuple[ImageStore, Manifest, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, manifest, _ = image
    server = FakeServer(store, "golden")
    disk = _empty_disk(tmp_path, manifest)
    monkeypatch.setattr("fleetcast.disk.discovery.in_use", lambda path: ["disk.img is mounted on /"])
    runner, _, _ = _runner(server, tmp_path, disk)
    assert runner.run(parse_task(_task())) == "failed"
    assert server.results[0]["error"] == (
        f"disk {disk} is in use: disk.img is mounted on / (hint: fleetcast never overwrites a disk in use; "
        "pick another with --disk, or run the agent from the network boot environment)"
    )
    assert server.chunk_gets == 0


def test_progress_reports_rate_and_eta(tmp_path: Path, image: tuple[ImageStore, Manifest, Path]) -> None:
    store, manifest, _ = image
    server = FakeServer(store, "golden")
    server.chunk_delay = 0.01
    disk = _empty_disk(tmp_path, manifest)
    runner, _, _ = _runner(server, tmp_path, disk)
    assert runner.run(parse_task(_task())) == "done"
    writing = [p for p in server.progress if p["phase"] == "writing"]
    assert writing
    assert all(p["bytes_total"] == manifest.data_bytes for p in writing)
    assert any(p["rate_bps"] > 0 and p["eta_seconds"] is not None for p in writing)
    assert [p["bytes_done"] for p in writing] == sorted(p["bytes_done"] for p in writing)
    assert all(p["disk"] == str(disk) for p in writing)


def test_idle_heartbeats_ask_for_a_long_poll_and_an_older_server_is_spared_it(tmp_path: Path) -> None:
    bodies: list[dict[str, Any]] = []

    def server(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/api/agent/enroll":
            return httpx.Response(200, json={"client_id": 7, "credential": "cred"})
        body = json.loads(req.content)
        bodies.append(body)
        if "wait" in body and len(bodies) > 2:  # an older server: the field is unknown to it
            return httpx.Response(422, json={"error": "ValidationError", "message": "wait: extra field"})
        task = {"task_id": 5, "kind": "wipe"} if len(bodies) >= 6 else None
        return httpx.Response(200, json={"task": task, "interval": 0.05})

    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(4096))
    agent = Agent(AgentSettings(SERVER, "tok", allow=(disk,), state_dir=tmp_path / "st", once=True))
    agent.api = AgentApi(SERVER, transport=httpx.MockTransport(server), outage_limit=5)
    agent.run()
    beats = [b for b in bodies if "task_id" in b and "state" not in b]
    assert "wait" not in beats[0]  # the first one carries the inventory: answered at once
    assert beats[1]["wait"] == 0.05  # idle: the server may hold it up to the interval it gave
    assert beats[2]["wait"] == 0.05 and "wait" not in beats[3]  # refused (422), sent again without it
    assert all("wait" not in b for b in beats[3:])
