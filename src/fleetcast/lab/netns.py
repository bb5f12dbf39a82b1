"""A lab network made of Linux network namespaces: a hub namespace holding a bridge, and nodes (a
server and N clients), each in its own namespace, attached to the bridge by a veth pair.

    with LabNetwork(clients=4) as lab:
        proc = lab.server.spawn(["fleetcast", "serve", "--listen", f"{lab.server.ip}:8080", ...])
        lab.clients[0].spawn(["fleetcast", "agent", "--server", lab.server_url(8080), ...])

- The bridge has STP off, no forwarding delay and ``mcast_snooping 0`` (multicast reaches every port).
- Every node's interface is ``eth0`` with a fixed MAC (``52:54:00:R1:R2:NN``, NN = node number, so the
  MAC order is the node order), an address added with ``brd +`` and a ``224.0.0.0/4`` route
  (what udpcast needs, lab-notes.md).
- Names carry a random prefix (``fcXXXXXX-``), so parallel runs never collide; everything is created
  inside the lab's own namespaces (nothing in the host's namespace).
- On exit -- also on failure or Ctrl-C -- processes started through :meth:`Node.spawn` are ended by their
  PID (SIGTERM, then SIGKILL), and every namespace the lab made is deleted.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from fleetcast.errors import CommandError, FleetcastError
from fleetcast.run import run, spawn

logger = logging.getLogger(__name__)

DEFAULT_SUBNET = "10.77.0"  # /24; the server is .1, clients .11, .12, ...
SERVER_HOST = 1
FIRST_CLIENT_HOST = 11


class LabError(FleetcastError):
    pass


@dataclass
class Node:
    """One namespace on the lab bridge."""

    name: str  # namespace name
    label: str  # "server", "client1", ...
    index: int
    ip: str
    mac: str
    hub_port: str  # the veth end on the bridge (in the hub namespace)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def cmd(self, argv: Sequence[str | os.PathLike[str]]) -> list[str]:
        """``argv`` wrapped to run inside this node's namespace."""
        return ["ip", "netns", "exec", self.name, *[os.fspath(a) for a in argv]]

    def run(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        input: bytes | None = None,
        check: bool = True,
        capture: bool = True,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        timeout: float | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        """``fleetcast.run.run`` inside this node's namespace (the same keywords)."""
        return run(
            self.cmd(argv), input=input, check=check, capture=capture, env=env, cwd=cwd, timeout=timeout
        )

    def spawn(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        env: dict[str, str] | None = None,
        stdout: int | None = subprocess.DEVNULL,
        stderr: int | None = subprocess.DEVNULL,
        log: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a long-running process in this namespace; the lab ends it (by PID) on exit.
        ``log`` sends its stdout and stderr to a file."""
        if log is not None:
            with open(log, "ab") as fh:
                proc = spawn(self.cmd(argv), env=env, stdout=fh.fileno(), stderr=subprocess.STDOUT)
        else:
            proc = spawn(self.cmd(argv), env=env, stdout=stdout, stderr=stderr)
        self.procs.append(proc)
        return proc


def stop_process(proc: subprocess.Popen[bytes], *, timeout: float = 10.0) -> None:
    """SIGTERM, wait, then SIGKILL -- this one process, by its PID. A stopped (SIGSTOP) process is
    continued first so that it can handle SIGTERM."""
    if proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, signal.SIGCONT)
        proc.terminate()
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)
    except ProcessLookupError:
        pass


class LabNetwork:
    """Context manager building the namespaces; see the module docstring."""

    def __init__(
        self, clients: int, *, subnet: str = DEFAULT_SUBNET, server: bool = True, prefix: str = "fc"
    ) -> None:
        """``prefix`` starts every namespace name (``{prefix}{token}-hub``, ``...-client1``): an area's
        own prefix such as ``fc-mc-`` (namespace names have no 15-character limit; the veths inside
        are ``v{index}``/``eth0`` whatever the prefix)."""
        if not 1 <= clients <= 200:
            raise LabError(f"a lab network holds 1 to 200 clients, not {clients}")
        if not prefix or not all(c.isalnum() or c in "-_" for c in prefix):
            raise LabError(f"lab network prefix {prefix!r}: use letters, digits, '-' or '_'")
        self.token = secrets.token_hex(3)
        self.prefix = f"{prefix}{self.token}-"
        self.subnet = subnet
        self.hub = f"{self.prefix}hub"
        self._mac_prefix = f"52:54:00:{self.token[0:2]}:{self.token[2:4]}"
        self.nodes: list[Node] = []
        self._created: list[str] = []
        if server:
            self.nodes.append(self._node("server", 0, SERVER_HOST))
        for i in range(1, clients + 1):
            self.nodes.append(self._node(f"client{i}", i, FIRST_CLIENT_HOST + i - 1))

    def _node(self, label: str, index: int, host: int) -> Node:
        return Node(
            name=f"{self.prefix}{label}",
            label=label,
            index=index,
            ip=f"{self.subnet}.{host}",
            mac=f"{self._mac_prefix}:{index:02x}",
            hub_port=f"v{index}",
        )

    @property
    def server(self) -> Node:
        if not self.nodes or self.nodes[0].label != "server":
            raise LabError("this lab network was built without a server node")
        return self.nodes[0]

    @property
    def clients(self) -> list[Node]:
        return [n for n in self.nodes if n.label != "server"]

    def server_url(self, port: int) -> str:
        return f"http://{self.server.ip}:{port}"

    # -- building and tearing down -------------------------------------------------------------

    def _add_netns(self, name: str) -> None:
        run(["ip", "netns", "add", name])
        self._created.append(name)
        run(["ip", "-n", name, "link", "set", "lo", "up"])

    def create(self) -> LabNetwork:
        try:
            self._add_netns(self.hub)
            bridge_opts = ["stp_state", "0", "forward_delay", "0", "mcast_snooping", "0"]
            run(["ip", "-n", self.hub, "link", "add", "br0", "type", "bridge", *bridge_opts])
            run(["ip", "-n", self.hub, "link", "set", "br0", "up"])
            for node in self.nodes:
                self._add_netns(node.name)
                peer = ["peer", "name", "eth0", "netns", node.name]
                run(["ip", "-n", self.hub, "link", "add", node.hub_port, "type", "veth", *peer])
                run(["ip", "-n", self.hub, "link", "set", node.hub_port, "master", "br0", "up"])
                run(["ip", "-n", node.name, "link", "set", "eth0", "address", node.mac])
                run(["ip", "-n", node.name, "addr", "add", f"{node.ip}/24", "brd", "+", "dev", "eth0"])
                run(["ip", "-n", node.name, "link", "set", "eth0", "up"])
                run(["ip", "-n", node.name, "route", "add", "224.0.0.0/4", "dev", "eth0"])
        except CommandError as exc:
            self.destroy()
            raise LabError(
                f"cannot build the lab network {self.prefix}*: {exc.message}",
                hint="network namespaces need root and iproute2",
            ) from exc
        except BaseException:  # Ctrl-C or any other error half-way: __exit__ will not run
            self.destroy()
            raise
        logger.info(
            "lab network %s*: bridge in %s, %d node(s) on %s.0/24",
            self.prefix,
            self.hub,
            len(self.nodes),
            self.subnet,
        )
        return self

    def limit(self, node: Node, rate: str, *, burst: str = "512kb", latency: str = "20ms") -> None:
        """Limit what ``node`` sends (its eth0 egress) with a token bucket (netem is not available)."""
        node.run(
            [
                "tc",
                "qdisc",
                "replace",
                "dev",
                "eth0",
                "root",
                "tbf",
                "rate",
                rate,
                "burst",
                burst,
                "latency",
                latency,
            ]
        )

    def stop_processes(self) -> None:
        for node in self.nodes:
            for proc in node.procs:
                stop_process(proc)
            node.procs.clear()

    def destroy(self) -> None:
        """End the lab's processes and delete every namespace it created (idempotent)."""
        self.stop_processes()
        for name in reversed(self._created):
            try:
                run(["ip", "netns", "del", name])
            except CommandError as exc:
                logger.warning("could not delete namespace %s: %s", name, exc.message)
        self._created.clear()

    def __enter__(self) -> LabNetwork:
        return self.create()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.destroy()
