"""Kit for the server's integration tests: a real `fleetcast serve` process, a real image in its
store, a real PostgreSQL cluster, and a simulated agent that speaks the protocol over HTTP."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from fleetcast.store.capture import capture
from fleetcast.store.chunkstore import decompress_verify
from fleetcast.store.images import ImageStore
from fleetcast.store.manifest import Manifest

FLEETCAST = Path(sys.executable).parent / "fleetcast"
CLIENT_KEYS = ["mac", "name", "ip", "disk", "state", "bytes", "started_at", "finished_at", "error"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETCAST_")}
    proc = subprocess.run(
        [str(FLEETCAST), *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"fleetcast {' '.join(args)} -> {proc.returncode}\n{proc.stderr}")
    return proc


def make_image(store_root: Path, name: str = "tiny") -> Manifest:
    """A small raw disk with some random data captured into the store (a few chunks)."""
    raw = store_root.parent / f"{name}.raw"
    raw.parent.mkdir(parents=True, exist_ok=True)
    with raw.open("wb") as fh:
        fh.truncate(8 << 20)
        fh.seek(1 << 20)
        fh.write(os.urandom(3 << 20))
    store = ImageStore(store_root)
    store.ensure()
    manifest = capture(raw, name, store, pack_size=1 << 20)  # several packs: the agent restarts mid-way
    raw.unlink()
    return manifest


@dataclass
class Serve:
    url: str
    data: Path
    proc: subprocess.Popen[bytes]
    log: Path
    admin: str = ""
    enroll: str = ""

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin}"}

    def get(self, path: str, **params: Any) -> Any:
        r = httpx.get(self.url + path, headers=self.headers, params=params or None, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()


@contextmanager
def serve(data: Path, *, database: str | None = None) -> Iterator[Serve]:
    """`fleetcast serve` on 127.0.0.1:<free port>; always stopped (by its PID) afterwards."""
    port = free_port()
    log = data.parent / f"serve-{port}.log"
    args = [str(FLEETCAST), "serve", "--data", str(data), "--listen", f"127.0.0.1:{port}"]
    if database:
        args += ["--database", database]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETCAST_")}
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = Serve(f"http://127.0.0.1:{port}", data, proc, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"fleetcast serve exited with {proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(server.url + "/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"fleetcast serve did not answer within 60 s:\n{log.read_text()}")
            time.sleep(0.2)
        server.admin = cli("--data", str(data), "admin", "token").stdout.strip()
        server.enroll = cli("admin", "enroll-token", "--data", str(data)).stdout.strip()
        yield server
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


@dataclass
class SimAgent:
    """Drives the protocol as `fleetcast agent` does, one small step per call of ``step()``:
    fetch the manifest, then one chunk per step (each verified), reporting progress with checkpoints."""

    server: Serve
    mac: str
    fail_with: str | None = None
    credential: str = ""
    client_id: int = 0
    task: dict[str, Any] | None = None
    chunks: list[str] = field(default_factory=list)
    next_chunk: int = 0
    finished: list[str] = field(default_factory=list)
    max_chunk_fetched: int = 0

    def post(self, path: str, body: Any) -> Any:
        r = httpx.post(
            self.server.url + path,
            json=body,
            headers={"Authorization": f"Bearer {self.credential}"} if self.credential else None,
            timeout=30,
        )
        assert r.status_code == 200, r.text
        return r.json()

    def enroll(self) -> None:
        inventory = {
            "macs": [self.mac],
            "hostname": f"sim-{self.mac[-2:]}",
            "cpu": {"model": "sim", "cores": 1},
            "ram_bytes": 1 << 30,
            "dmi": {"vendor": "sim", "model": "sim", "serial": self.mac},
            "disks": [{"path": f"/dev/sim{self.mac[-2:]}", "size": 1 << 30}],
            "agent_version": "sim",
        }
        # like the real agent, it proves a re-enrollment with the credential it kept (first enrollment wins)
        request = {
            "enroll_token": self.server.enroll,
            "inventory": inventory,
            "credential": self.credential or None,
        }
        body = self.post("/api/agent/enroll", request)
        self.credential, self.client_id = body["credential"], body["client_id"]

    def restart(self) -> None:
        """The agent process was killed and started again: it forgets its task and enrolls again."""
        self.task = None
        self.enroll()

    def get(self, path: str) -> bytes:
        r = httpx.get(
            self.server.url + path, headers={"Authorization": f"Bearer {self.credential}"}, timeout=30
        )
        assert r.status_code == 200, r.text
        return r.content

    def progress(self, phase: str, done: int, total: int) -> bool:
        assert self.task is not None
        body = {
            "phase": phase,
            "bytes_done": done,
            "bytes_total": total,
            "rate_bps": 1e6,
            "eta_seconds": 1.0,
            "checkpoint_chunk": self.next_chunk,
            "disk": f"/dev/sim{self.mac[-2:]}",
        }
        return bool(self.post(f"/api/agent/tasks/{self.task['task_id']}/progress", body)["cancel"])

    def step(self) -> None:
        if self.task is None:
            reply = self.post("/api/agent/heartbeat", {"inventory": None, "task_id": None})
            if reply["task"] is None:
                return
            self.task = reply["task"]
            manifest = Manifest.from_json(self.get(f"/api/agent/images/{self.task['image']}/manifest"))
            self.chunks = manifest.pack_ids()  # format 2: the packs, from the manifest alone
            self.next_chunk = int(self.task["resume_chunk"])
            self.progress("selecting-disk", 0, len(self.chunks))
            return
        task_id = self.task["task_id"]
        if self.next_chunk < len(self.chunks):
            cid = self.chunks[self.next_chunk]
            decompress_verify(cid, self.get(f"/api/agent/chunks/{cid}"), None, what=f"chunk {cid}")
            self.next_chunk += 1
            self.max_chunk_fetched = max(self.max_chunk_fetched, self.next_chunk)
            self.progress("writing", self.next_chunk, len(self.chunks))
            return
        if self.fail_with:
            result = {
                "state": "failed",
                "error": self.fail_with,
                "disk": None,
                "action": "none",
                "changes": [],
            }
        else:
            result = {"state": "done", "error": None, "disk": None, "action": "none", "changes": ["hostname"]}
        self.post(f"/api/agent/tasks/{task_id}/result", result)
        self.finished.append(result["state"])
        self.task = None


def max_writing(events: list[dict[str, Any]]) -> int:
    writing: set[str] = set()
    most = 0
    for ev in events:
        if ev["type"] == "client-started":
            writing.add(ev["mac"])
        elif ev["type"] in ("client-done", "client-failed", "client-cancelled"):
            writing.discard(ev["mac"])
        most = max(most, len(writing))
    return most


@contextmanager
def postgres_cluster() -> Iterator[str]:
    """A throw-away PostgreSQL (Debian's package) on 127.0.0.1:<free port>; yields its SQLAlchemy URL."""
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    assert bins, "PostgreSQL is not installed (make setup installs it)"
    bindir = bins[-1].parent
    base = Path(tempfile.mkdtemp(prefix="fleetcast-pg-"))
    os.chmod(base, 0o755)
    pgdata, sockets, log = base / "data", base / "sock", base / "pg.log"
    sockets.mkdir()
    shutil.chown(base, "postgres", "postgres")
    shutil.chown(sockets, "postgres", "postgres")

    def as_postgres(*argv: str) -> None:
        proc = subprocess.run(
            ["runuser", "-u", "postgres", "--", *argv],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if proc.returncode != 0:
            extra = log.read_text() if log.exists() else ""
            raise AssertionError(f"{' '.join(argv)} failed: {proc.stderr}\n{extra}")

    port = free_port()
    started = False
    try:
        as_postgres(str(bindir / "initdb"), "-D", str(pgdata), "-A", "trust", "-U", "postgres", "-N")
        opts = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=60"
        as_postgres(
            str(bindir / "pg_ctl"), "-D", str(pgdata), "-l", str(log), "-w", "-t", "60", "-o", opts, "start"
        )
        started = True
        as_postgres(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "fleetcast")
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/fleetcast"
    finally:
        try:
            # also when `pg_ctl start` gave up waiting (or was interrupted) after the server had started
            if started or (pgdata / "postmaster.pid").exists():
                as_postgres(str(bindir / "pg_ctl"), "-D", str(pgdata), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(base, ignore_errors=True)


def json_out(proc: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(proc.stdout)


def deploy_flow(server: Serve, *, fail_mac: str | None = None) -> dict[str, Any]:
    """Three simulated agents, `fleetcast deploy --batch 2 --wait --json` as a real process, one agent
    restarted mid-way; returns the deploy command's JSON after checking what every run must hold."""
    macs = ["52:54:00:12:34:03", "52:54:00:12:34:01", "52:54:00:12:34:02"]
    agents = [SimAgent(server, mac, fail_with="disk too small" if mac == fail_mac else None) for mac in macs]
    for a in agents:
        a.enroll()
    listed = json_out(cli("clients", "list", "--server", server.url, "--token", server.admin, "--json"))
    assert sorted(c["mac"] for c in listed["clients"]) == sorted(macs)

    common = ["--server", server.url, "--token", server.admin, "--clients", "all", "--disk", "0"]
    common += ["--batch", "2", "--name", "LAB-{n:02}", "--ip", "10.0.0.101/24", "--gateway", "10.0.0.1"]
    common += ["--dns", "10.0.0.1", "--then", "none"]
    plan = json_out(cli("deploy", "tiny", *common, "--plan", "--json"))
    assert [(c["mac"], c["name"], c["ip"]) for c in plan["clients"]] == [
        ("52:54:00:12:34:01", "LAB-01", "10.0.0.101/24"),
        ("52:54:00:12:34:02", "LAB-02", "10.0.0.102/24"),
        ("52:54:00:12:34:03", "LAB-03", "10.0.0.103/24"),
    ]
    bad = cli("deploy", "tiny", *common, "--ip", "10.0.0.253/24", "--wait", check=False)
    assert bad.returncode == 2
    assert bad.stderr.splitlines()[-2:] == [
        "fleetcast: error: IP range 10.0.0.253/24 has room for 2 clients (10.0.0.253-10.0.0.254) "
        "but 3 are selected",
        "hint: start lower or use a shorter prefix",
    ]
    missing = cli("deploy", "nope", *common, check=False)
    assert missing.returncode == 3
    assert "fleetcast: error: image 'nope' does not exist in the store" in missing.stderr
    assert server.get("/api/deployments") == {"deployments": []}

    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETCAST_")}
    waiter = subprocess.Popen(
        [str(FLEETCAST), "deploy", "tiny", *common, "--wait", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 120
        while not server.get("/api/deployments")["deployments"]:
            assert waiter.poll() is None, waiter.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        restarted = False
        while any(not a.finished for a in agents):
            assert time.monotonic() < deadline, "deployment did not finish"
            for a in agents:
                if not a.finished:
                    a.step()
                if not restarted and a.task is not None and a.next_chunk == 2:
                    a.restart()  # killed mid-way and started again
                    restarted = True
        out, err = waiter.communicate(timeout=60)
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait()
    assert restarted
    result = json.loads(out)
    assert list(result) == ["deployment", "clients"]
    for c in result["clients"]:
        assert list(c) == CLIENT_KEYS
    events = server.get("/api/events/log")["events"]
    assert max_writing(events) == 2
    resumed = [e for e in events if e["type"] == "client-resumed"]
    assert len(resumed) == 1
    assert resumed[0]["resume_chunk"] == 2
    audit = server.get("/api/audit")["audit"]
    assert [(x["action"], x["address"]) for x in audit] == [("deployment-create", "127.0.0.1")]
    expected_rc = 1 if fail_mac else 0
    assert waiter.returncode == expected_rc, err
    return dict(result)
