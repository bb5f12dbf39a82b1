"""Server + agents in network namespaces, each agent with its own loop-device disk: the harness behind
``make demo`` (issue 3), the end-to-end tests (tests/e2e) and ``bench/unicast.py``.

``python -m fleetcast.lab.deploy_demo`` builds the sample Linux disk (GPT: ESP + ext4 root), captures it
with the engine into a fresh data directory, starts ``fleetcast serve`` in the server namespace and
three ``fleetcast agent`` processes in client namespaces (``--allow-disk`` on their own loop device,
``--post-action report``), deploys with names ``LAB-{n:02}`` and static IPs, prints one row per client
(name, IP, disk, state, seconds, MB/s) and the server's URL, and removes everything again: processes
(by PID), loop devices (by path), namespaces and the work directory.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from fleetcast.errors import FleetcastError
from fleetcast.lab.netns import LabNetwork, Node, stop_process
from fleetcast.progress import human_bytes, human_duration
from fleetcast.run import run

logger = logging.getLogger(__name__)

MiB = 1 << 20
PORT = 8080
FLEETCAST = Path(sys.executable).parent / "fleetcast"

# Runs inside a namespace: one admin API call, JSON on stdout.
_API_SCRIPT = """
import json, sys, httpx
method, url, token, body = sys.argv[1:5]
r = httpx.request(method, url, headers={"Authorization": "Bearer " + token},
                  json=json.loads(body) if body else None, timeout=30, trust_env=False)
print(json.dumps({"status": r.status_code, "body": r.json() if r.content else None}))
"""
_WAIT_SCRIPT = """
import sys, time, httpx
deadline = time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    try:
        if httpx.get(sys.argv[1], timeout=2, trust_env=False).status_code == 200:
            sys.exit(0)
    except httpx.HTTPError:
        pass
    time.sleep(0.2)
sys.exit(1)
"""


class LabRunError(FleetcastError):
    pass


@dataclass
class Agent:
    node: Node
    disk: Path  # the loop device
    backing: Path  # its file
    state_dir: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None


class FleetLab:
    """A server and ``clients`` agents on a lab network. Use as a context manager; everything it made
    is removed on exit, also on failure."""

    def __init__(
        self,
        workdir: Path,
        clients: int,
        *,
        disk_size: int = 256 * MiB,
        disk_sizes: Sequence[int] | None = None,
        database: str | None = None,
        server_config: dict[str, float] | None = None,
        agent_args: Sequence[str] = (),
        net_prefix: str = "fc",
    ) -> None:
        self.workdir = Path(workdir)
        self.data = self.workdir / "data"
        self.net = LabNetwork(clients=clients, prefix=net_prefix)  # net_prefix: e.g. "fc-mc-" (LabNetwork)
        self.disk_size = disk_size
        self.disk_sizes = list(disk_sizes) if disk_sizes is not None else [disk_size] * clients
        if len(self.disk_sizes) != clients:
            raise LabRunError(f"disk_sizes has {len(self.disk_sizes)} entries for {clients} clients")
        self.database = database
        self.server_config = server_config or {}
        self.agent_args = list(agent_args)
        self.agents: list[Agent] = []
        self.server_proc: subprocess.Popen[bytes] | None = None
        self._stack = contextlib.ExitStack()
        self.admin_token = ""
        self.enroll_token = ""

    # -- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> FleetLab:
        try:
            self.data.mkdir(parents=True, exist_ok=True)
            self._stack.enter_context(self.net)
            self._stack.callback(self.net.stop_processes)  # before loop devices are detached
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    @property
    def url(self) -> str:
        return self.net.server_url(PORT)

    def fleetcast(self, *args: str) -> str:
        """Run the CLI locally (admin commands that only read the data directory)."""
        proc = subprocess.run([str(FLEETCAST), *args], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise LabRunError(f"fleetcast {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.stdout

    def capture_image(self, source: Path, name: str, *, pack_size: int | None = None) -> Any:
        """Capture ``source`` into the server's store; ``pack_size`` overrides the engine's default
        (tests use small packs so that a short deployment has several checkpoints)."""
        from fleetcast.store.capture import capture
        from fleetcast.store.images import ImageStore

        store = ImageStore(self.data / "store")
        store.ensure()
        if pack_size is None:
            return capture(source, name, store)
        return capture(source, name, store, pack_size=pack_size)

    def start_server(self) -> None:
        if self.server_config:
            config = self.workdir / "fleetcast.toml"
            lines = ["[server]"] + [f"{k} = {v}" for k, v in self.server_config.items()]
            config.write_text("\n".join(lines) + "\n")
            extra = ["--config", str(config)]
        else:
            extra = []
        argv = [
            str(FLEETCAST),
            "serve",
            "--data",
            str(self.data),
            "--listen",
            f"{self.net.server.ip}:{PORT}",
            *extra,
        ]
        if self.database:
            argv += ["--database", self.database]
        self.server_proc = self.net.server.spawn(argv, log=self.workdir / "server.log")
        self.admin_token = self.fleetcast("--data", str(self.data), "admin", "token").strip()
        self.enroll_token = self.fleetcast("--data", str(self.data), "admin", "enroll-token").strip()
        self.wait_server()

    def wait_server(self, timeout: float = 60.0) -> None:
        node = self.net.clients[0]
        proc = node.run(
            [sys.executable, "-c", _WAIT_SCRIPT, f"{self.url}/api/openapi.json", str(timeout)], check=False
        )
        if proc.returncode != 0:
            raise LabRunError(
                f"server at {self.url} did not answer within {timeout:.0f} s; see {self.workdir}/server.log"
            )

    def add_disks(self) -> None:
        from fleetcast.disk import loop

        for node, size in zip(self.net.clients, self.disk_sizes, strict=True):
            backing = self.workdir / f"{node.label}.img"
            with open(backing, "wb") as f:
                f.truncate(size)
            dev = self._stack.enter_context(loop.attach(backing))
            # like a real disk: no second page cache for the backing file (less CPU, no flush storms)
            proc = run(["losetup", "--direct-io=on", dev], check=False)
            if proc.returncode != 0:
                logger.debug("direct I/O not available for %s: %s", dev, proc.stderr.decode(errors="replace"))
            self.agents.append(
                Agent(
                    node,
                    dev,
                    backing,
                    self.workdir / f"{node.label}-state",
                    self.workdir / f"{node.label}.log",
                )
            )
        # processes must end before the loop devices they use are detached (ExitStack is LIFO)
        self._stack.callback(self.net.stop_processes)

    def start_agent(self, agent: Agent) -> None:
        argv = [
            str(FLEETCAST),
            "agent",
            "--server",
            self.url,
            f"--enroll-token={self.enroll_token}",  # a token may start with "-"
            "--allow-disk",
            str(agent.disk),
            "--state-dir",
            str(agent.state_dir),
            "--post-action",
            "report",
            *self.agent_args,
        ]
        agent.proc = agent.node.spawn(argv, log=agent.log)

    def start_agents(self) -> None:
        for agent in self.agents:
            self.start_agent(agent)

    def kill_agent(self, agent: Agent) -> None:
        """kill -9 by PID (``ip netns exec`` execs, so the PID is the agent's)."""
        if agent.proc is not None:
            agent.proc.kill()
            agent.proc.wait(timeout=10)
            agent.node.procs.remove(agent.proc)
            agent.proc = None

    def stop_agent(self, agent: Agent) -> None:
        if agent.proc is not None:
            stop_process(agent.proc)
            agent.node.procs.remove(agent.proc)
            agent.proc = None

    # -- talking to the server from inside the lab ----------------------------------------------

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        node = self.net.clients[0]
        proc = node.run(
            [sys.executable, "-c", _API_SCRIPT, method, f"{self.url}{path}", self.admin_token,
             json.dumps(body) if body is not None else ""],
            check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise LabRunError(
                f"{method} {path} failed: {proc.stderr.decode(errors='replace').strip()[-500:]}"
            )
        reply = json.loads(proc.stdout)
        return int(reply["status"]), reply["body"]

    def get(self, path: str) -> Any:
        status, body = self.api("GET", path)
        if status != 200:
            raise LabRunError(f"GET {path}: status {status}: {body}")
        return body

    def cli(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[bytes]:
        """A fleetcast CLI command run inside the first client namespace (it can reach the server)."""
        node = self.net.clients[0]
        return subprocess.run(
            node.cmd([str(FLEETCAST), *args]), capture_output=True, timeout=timeout, check=False
        )

    def cli_spawn(self, *args: str, log: Path) -> subprocess.Popen[bytes]:
        """Start a CLI command in the first client namespace (stdout piped, stderr to ``log``); like
        every process of the lab it is ended by PID when the lab closes, also on failure."""
        node = self.net.clients[0]
        with open(log, "wb") as fh:
            return node.spawn([str(FLEETCAST), *args], stdout=subprocess.PIPE, stderr=fh.fileno())

    def wait_enrolled(self, count: int, timeout: float = 60.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        clients: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            for agent in self.agents:
                if agent.proc is not None and agent.proc.poll() is not None:
                    tail = agent.log.read_text(errors="replace")[-1500:]
                    raise LabRunError(
                        f"agent in {agent.node.name} exited with status {agent.proc.returncode}:\n{tail}"
                    )
            clients = self.get("/api/clients").get("clients", [])
            if len(clients) >= count:
                return clients
            time.sleep(0.5)
        raise LabRunError(f"only {len(clients)} of {count} agents enrolled within {timeout:.0f} s")

    def events(self, deployment_id: int | None = None) -> list[dict[str, Any]]:
        path = "/api/events/log" + (f"?deployment_id={deployment_id}" if deployment_id is not None else "")
        events: list[dict[str, Any]] = self.get(path)["events"]
        return events


def build_golden(path: Path, *, size: int = 256 * MiB, extra_mib: int = 0, seed: int = 1) -> None:
    """The sample Linux disk, with ``extra_mib`` MiB of incompressible files added to its root so a
    deployment takes long enough to watch (and to interrupt, in tests)."""
    from fleetcast.lab.sample_disk import build_linux_disk, mount_partition

    build_linux_disk(path, size=size, seed=seed)
    if extra_mib:
        with mount_partition(path, 2) as root:
            data = root / "srv" / "data"
            data.mkdir(parents=True, exist_ok=True)
            for i in range(extra_mib // 4):
                (data / f"blob-{i:03}.bin").write_bytes(os.urandom(4 * MiB))


def seconds_and_rate(client: dict[str, Any]) -> tuple[float | None, float | None]:
    if not client.get("started_at") or not client.get("finished_at"):
        return None, None
    secs = (
        datetime.fromisoformat(client["finished_at"]) - datetime.fromisoformat(client["started_at"])
    ).total_seconds()
    return secs, (client.get("bytes") or 0) / secs / 1e6 if secs > 0 else None


def print_rows(result: dict[str, Any]) -> None:
    from fleetcast.cli.common import print_table

    rows = []
    for c in result["clients"]:
        secs, rate = seconds_and_rate(c)
        rows.append(
            [
                c.get("name") or "-",
                c.get("ip") or "dhcp",
                c.get("disk") or "-",
                c["state"],
                f"{secs:.1f}" if secs is not None else "-",
                f"{rate:.1f}" if rate is not None else "-",
            ]
        )
    print_table(["name", "IP", "disk", "state", "seconds", "MB/s"], rows)


@contextlib.contextmanager
def _workdir(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="fleetcast-demo-"))
    try:
        yield path
    finally:
        if keep:
            print(f"work directory kept: {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def _running_cell(c: dict[str, Any]) -> str:
    """'writing  45% 30.6 MiB/68.0 MiB 15.2 MiB/s ETA 0:03' for one running client."""
    done, total = int(c.get("bytes", 0)), int(c["bytes_total"])
    cell = (
        f"{c.get('phase') or 'writing'} {100 * done / total:3.0f}% {human_bytes(done)}/{human_bytes(total)}"
    )
    rate, eta = c.get("rate_bps"), c.get("eta_seconds")
    if rate:
        cell += f" {human_bytes(float(rate))}/s"
    if eta is not None:
        cell += f" ETA {human_duration(float(eta))}"
    return cell


def _follow(lab: FleetLab, proc: subprocess.Popen[bytes]) -> None:
    """One line per second with every client's state while the deployment runs."""
    last = ""
    while proc.poll() is None:
        time.sleep(1.0)
        try:
            deployments = lab.get("/api/deployments")["deployments"]
            if not deployments:
                continue
            view = lab.get(f"/api/deployments/{deployments[0]['deployment']}")  # newest first
        except (LabRunError, KeyError):
            continue
        cells = []
        for c in view.get("clients", []):
            state = c.get("state", "?")
            if state == "running" and c.get("bytes_total"):
                state = _running_cell(c)
            cells.append(f"{c.get('name') or c.get('mac')}: {state}")
        line = " | ".join(cells)
        if line and line != last:
            print(f"  {line}", flush=True)
            last = line


def demo(clients: int = 3, *, keep: bool = False, extra_mib: int = 160, rate: str = "150mbit") -> int:
    started = time.monotonic()
    with _workdir(keep) as work, FleetLab(work, clients) as lab:
        print(f"building the sample Linux disk (GPT: ESP + ext4 root, {extra_mib} MiB of extra files) ...")
        build_golden(work / "golden.img", extra_mib=extra_mib)
        manifest = lab.capture_image(work / "golden.img", "sample-linux")
        print(f"captured image 'sample-linux': {manifest.data_bytes / 1e6:.1f} MB of data")
        lab.start_server()
        lab.add_disks()
        lab.start_agents()
        enrolled = lab.wait_enrolled(clients)
        print(f"server {lab.url} (inside namespace {lab.net.server.name}); {len(enrolled)} agents enrolled")
        lab.net.limit(lab.net.server, rate)
        print(f"the server's link is limited to {rate}; deploying with --batch 2 ...")
        proc = lab.cli_spawn(
            "deploy", "sample-linux", "--server", lab.url, f"--token={lab.admin_token}", "--clients", "all",
            "--disk", "0", "--batch", "2", "--name", "LAB-{n:02}", "--ip", "10.77.0.101/24",
            "--gateway", "10.77.0.1", "--dns", "10.77.0.1", "--then", "none", "--wait", "--json",
            log=work / "deploy.log",
        )  # fmt: skip
        _follow(lab, proc)
        out, _ = proc.communicate(timeout=600)
        if not out.strip():
            print((work / "deploy.log").read_text(errors="replace"), file=sys.stderr)
            return 1
        result = json.loads(out)
        print(f"deployment {result['deployment']}:")
        print_rows(result)
        print(f"server URL: {lab.url} (admin token: {lab.admin_token[:8]}...)")
        ok = all(c["state"] == "done" for c in result["clients"])
    print(f"cleaned up; total {time.monotonic() - started:.0f} s")
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    from fleetcast.log import setup_logging

    parser = argparse.ArgumentParser(description="fleetcast deployment demo in network namespaces")
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--extra-mib", type=int, default=160, help="incompressible data added to the image")
    parser.add_argument("--rate", default="150mbit", help="the server's link speed (tc tbf)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    setup_logging(debug=args.debug, quiet=not args.debug)
    if os.geteuid() != 0:
        print("the demo needs root (network namespaces, loop devices)", file=sys.stderr)
        return 2
    try:
        return demo(args.clients, keep=args.keep, extra_mib=args.extra_mib, rate=args.rate)
    except FleetcastError as exc:
        print(f"demo failed: {exc.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
