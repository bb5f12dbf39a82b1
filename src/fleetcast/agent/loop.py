"""The agent's main loop: enroll, heartbeat, run the tasks the server hands out.

It runs on a client booted from the network, or as a plain process on any Linux host (tests and the
lab run several in network namespaces, each with ``--allow-disk`` on its own loop device). The server
being unreachable never ends the loop: every call is retried through outages (``outage_limit``), and
after a longer outage the loop keeps heartbeating until the server is back. A credential the server
no longer knows (its database was reset) leads to a fresh enrollment.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from fleetcast.agent.api import AgentApi
from fleetcast.agent.inventory import Inventory, collect
from fleetcast.agent.runner import Stopped, TaskRunner
from fleetcast.agent.state import DEFAULT_STATE_DIR, StateStore, claim, load_pin, save_pin
from fleetcast.errors import AgentError, FleetcastError, TransportError
from fleetcast.pidlock import PidLock
from fleetcast.protocol import HEARTBEAT_MAX_WAIT, parse_task
from fleetcast.transport.http import DEFAULT_OUTAGE_LIMIT, HttpStatusError

logger = logging.getLogger(__name__)

INVENTORY_EVERY = 60.0


@dataclass(frozen=True)
class AgentSettings:
    server: str
    enroll_token: str
    allow: tuple[Path, ...] = ()
    state_dir: Path = DEFAULT_STATE_DIR
    once: bool = False
    outage_limit: float = DEFAULT_OUTAGE_LIMIT
    workers: int = 4
    prefetch: int = 4
    execute_post_action: bool = True
    report_interval: float = 1.0
    checkpoint_bytes: int = 16 << 20
    cmdline: Path = Path("/proc/cmdline")  # BOOTIF= there names the MAC it network-booted from
    tls_fingerprint: str | None = None  # the server certificate's SHA-256, pinned (agent/tlspin.py)


class Agent:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.stop_event = threading.Event()
        # the server certificate's pin: the flag's, else the one kept from an earlier enrollment
        pin = settings.tls_fingerprint or load_pin(settings.state_dir, settings.server)
        self.api = AgentApi(
            settings.server, outage_limit=settings.outage_limit, stop=self.stop_event.is_set,
            tls_fingerprint=pin,
        )  # fmt: skip
        self.state = StateStore(settings.state_dir)
        self.lock: PidLock | None = None
        self.inventory: Inventory | None = None

    def install_signal_handlers(self) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            logger.info("signal %d: stopping (a running task resumes when the agent starts again)", signum)
            self.stop_event.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def boot_mac(self, inv: Inventory) -> str | None:
        """The MAC of ``BOOTIF=`` on the kernel command line when it is one of this machine's (the
        server's identity for a network-booted machine); None elsewhere or when the line is unreadable."""
        from fleetcast.agent.cmdline import read

        try:
            mac = read(self.settings.cmdline).boot_mac
        except AgentError as exc:
            logger.debug("no boot MAC from %s: %s", self.settings.cmdline, exc.message)
            return None
        return mac if mac is not None and mac in inv.macs else None

    def _inventory(self, inv: Inventory | None = None) -> dict[str, Any]:
        inv = inv or self._collect()
        data = inv.to_dict()
        boot_mac = self.boot_mac(inv)
        if boot_mac is not None:
            data["boot_mac"] = boot_mac
        return data

    def _collect(self) -> Inventory:
        inv = collect(self.settings.allow or None, windows=True)
        if not inv.macs:
            raise AgentError(
                "this machine has no Ethernet MAC address to identify it",
                hint="the agent needs a network interface with a hardware address",
            )
        return inv

    def enroll(self) -> int:
        self.inventory = self._collect()
        if self.lock is None:  # the state of this identity, locked against a second agent
            self.state, self.lock = claim(self.settings.state_dir, self.inventory.primary_mac)
        saved = self.state.load_credential(self.api.server)
        client_id = self.api.enroll(
            self.settings.enroll_token, self._inventory(self.inventory), credential=saved
        )
        assert self.api.credential is not None
        self.state.save_credential(self.api.server, self.api.credential)
        if self.api.tls_fingerprint:
            save_pin(self.settings.state_dir, self.api.server, self.api.tls_fingerprint)
        logger.info(
            "enrolled with %s as client %d (MAC %s, %d disk(s))",
            self.api.server, client_id, self.inventory.primary_mac, len(self.inventory.disks),
        )  # fmt: skip
        return client_id

    def enroll_patiently(self) -> bool:
        """Enroll, waiting through outages; False when the agent was stopped meanwhile. A refused
        enrollment token (403) is an error for the technician, raised at once."""
        while not self.stop_event.is_set():
            try:
                self.enroll()
                return True
            except HttpStatusError:
                raise
            except TransportError as exc:
                logger.warning("enrollment failed: %s; trying again", exc.message)
                self.stop_event.wait(5)
        return False

    def run(self) -> int:
        """Loop until stopped (or, with ``once``, until one task ended). Returns an exit status."""
        try:
            return self._run()
        finally:
            if self.lock is not None:
                self.lock.release()
                self.lock = None

    def _run(self) -> int:
        if not self.enroll_patiently():
            return 0
        runner = TaskRunner(
            self.api,
            mac=self.inventory.primary_mac if self.inventory else "",
            allow=self.settings.allow,
            state=self.state,
            stop=self.stop_event,
            workers=self.settings.workers,
            prefetch=self.settings.prefetch,
            execute_post_action=self.settings.execute_post_action,
            report_interval=self.settings.report_interval,
            checkpoint_bytes=self.settings.checkpoint_bytes,
        )
        last_inventory = 0.0
        interval = 0.0  # the server's last interval: an idle heartbeat lets it hold the reply that long
        while not self.stop_event.is_set():
            send_inventory = time.monotonic() - last_inventory >= INVENTORY_EVERY
            sent = time.monotonic()
            try:
                inv = self._inventory() if send_inventory else None
                wait = 0.0 if inv is not None else min(interval, HEARTBEAT_MAX_WAIT)
                reply = self.api.heartbeat(inv, None, wait=wait)
                if send_inventory:
                    last_inventory = time.monotonic()
            except HttpStatusError as exc:
                if exc.status == 401:
                    logger.warning("the server no longer knows this agent's credential; enrolling again")
                    if not self.enroll_patiently():
                        return 0
                    continue
                raise
            except TransportError as exc:
                logger.warning("heartbeat failed: %s", exc.message)
                self.stop_event.wait(5)
                continue
            interval = reply.interval
            if inv is not None and reply.task is None:
                continue  # an inventory heartbeat is answered at once: go straight into a held one
            if reply.task is not None:
                state = self._run_task(runner, reply.task)
                _forget_windows()  # the task may have rewritten a disk: read its Windows volumes again
                last_inventory = 0.0
                if state is None:  # stopping
                    return 0
                if self.settings.once:
                    return 0 if state == "done" else 1
                continue
            # a server that held the reply (long poll) has used up the interval; one that answered at once
            # leaves the rest of it to sleep here
            self.stop_event.wait(max(0.0, reply.interval - (time.monotonic() - sent if wait else 0.0)))
        return 0

    def _run_task(self, runner: TaskRunner, raw: dict[str, object]) -> str | None:
        try:
            task = parse_task(raw)
        except AgentError as exc:
            task_id = raw.get("task_id")
            logger.error("unusable task from the server: %s", exc.message)
            if isinstance(task_id, int) and not isinstance(task_id, bool):
                failure: dict[str, Any] = {
                    "state": "failed",
                    "error": exc.message,
                    "disk": None,
                    "action": "none",
                    "changes": [],
                }
                try:
                    self.api.result(task_id, failure)
                except FleetcastError as report_exc:  # the server times the task out; keep serving
                    logger.error(
                        "task %d: the failure could not be reported: %s", task_id, report_exc.message
                    )
            return "failed"
        try:
            return runner.run(task)
        except Stopped:
            return None
        except FleetcastError as exc:  # the result could not be delivered; the server will hand it back
            logger.error("task %d: %s", task.task_id, exc.message)
            return "failed"


def _forget_windows() -> None:
    try:
        from fleetcast.identity.windows.scan import invalidate
    except ImportError:
        return
    invalidate()
