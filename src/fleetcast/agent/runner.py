"""Running one deploy task: choose the disk, write the image (resumable), personalize, report, post action.

Progress goes to the server from a reporter thread (at most once a second, plus at every phase change),
so a slow or unreachable server never slows the disk writes; the reply of each report carries the
server's cancel flag. Checkpoints (everything before chunk ``n`` written and fsynced) are saved to the
state file *before* they are reported, so the server never knows a checkpoint the disk does not have.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleetcast.agent.api import AgentApi
from fleetcast.agent.state import StateStore, TaskState
from fleetcast.errors import AgentError, CommandError, DiskError, FleetcastError
from fleetcast.progress import Rate
from fleetcast.protocol import Task
from fleetcast.run import run

if TYPE_CHECKING:
    from fleetcast.agent.multicast import MulticastSource
    from fleetcast.store.manifest import Manifest
    from fleetcast.store.source import PackSource

logger = logging.getLogger(__name__)

REPORT_INTERVAL = 1.0
REPORT_OUTAGE_LIMIT = 10.0
# fsync + checkpoint every 16 MiB written: a restarted agent redoes at most this much
CHECKPOINT_BYTES = 16 << 20
ACTIVE_PHASES = ("writing", "capturing")  # the phases whose reports carry a rate and an ETA


class Cancelled(AgentError):
    """The server cancelled the task."""


class Stopped(AgentError):
    """The agent itself is stopping (SIGTERM); the task is left to resume after a restart."""


@dataclass
class Snapshot:
    phase: str = "selecting-disk"
    bytes_done: int = 0
    bytes_total: int = 0
    start_done: int = 0
    checkpoint_chunk: int = 0
    disk: str | None = None


class Reporter:
    """Posts the latest progress snapshot from its own thread."""

    def __init__(
        self, api: AgentApi, task_id: int, cancel: threading.Event, *, interval: float = REPORT_INTERVAL
    ):
        self.api = api
        self.task_id = task_id
        self.cancel = cancel
        self.interval = interval
        self.snapshot = Snapshot()
        self.rate = Rate(started=time.monotonic())
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"report-{task_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def update(self, *, urgent: bool = False, **fields: Any) -> None:
        with self._lock:
            phase = fields.get("phase")
            if phase in ACTIVE_PHASES and self.snapshot.phase != phase:
                self.rate = Rate(started=time.monotonic())
                fields.setdefault("start_done", fields.get("bytes_done", self.snapshot.bytes_done))
            for key, value in fields.items():
                setattr(self.snapshot, key, value)
        if urgent:
            self._wake.set()

    def body(self) -> dict[str, Any]:
        with self._lock:
            s = self.snapshot
            self.rate.update(s.bytes_done - s.start_done, max(s.bytes_total - s.start_done, 0))
            writing = s.phase in ACTIVE_PHASES
            rate = self.rate.bytes_per_second if writing else 0.0
            eta = self.rate.eta_seconds if writing else None
            return {
                "phase": s.phase,
                "bytes_done": s.bytes_done,
                "bytes_total": s.bytes_total,
                "rate_bps": round(rate, 1),
                "eta_seconds": round(eta, 1) if eta is not None else None,
                "checkpoint_chunk": s.checkpoint_chunk,
                "disk": s.disk,
            }

    def post(self) -> None:
        try:
            if self.api.progress(self.task_id, self.body(), limit=REPORT_OUTAGE_LIMIT):
                if not self.cancel.is_set():
                    logger.info("task %d: the server cancelled it", self.task_id)
                self.cancel.set()
        except FleetcastError as exc:
            logger.warning("task %d: progress report not delivered: %s", self.task_id, exc.message)

    def _loop(self) -> None:
        while not self._done.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._done.is_set():
                break
            self.post()

    def stop(self) -> None:
        """Stop the thread and send one last report synchronously."""
        self._done.set()
        self._wake.set()
        self._thread.join(timeout=REPORT_OUTAGE_LIMIT + 5)
        self.post()


def _is_lab_disk(path: str) -> bool:
    """Loop devices and plain files are written by an agent running on some host for tests or a lab,
    never by the client itself: its post action must not reboot that host."""
    try:
        st = os.stat(path)
    except OSError:
        return True
    return stat.S_ISREG(st.st_mode) or (stat.S_ISBLK(st.st_mode) and os.major(st.st_rdev) == 7)


def plan_post_action(action: str, *, disk: str | None, execute: bool) -> tuple[bool, str]:
    """Whether to really reboot/power off after the result, and the line reported about it."""
    if action == "none":
        return False, "post action: none"
    if not execute:
        return False, f"post action: would {action} (not performed: agent runs with --post-action report)"
    if disk is not None and _is_lab_disk(disk):
        return False, f"post action: would {action} (not performed: {disk} is a loop device or file)"
    return True, f"post action: {action}"


def perform_post_action(action: str) -> None:
    """``systemctl reboot``/``poweroff``, falling back to ``reboot -f``/``poweroff -f``."""
    primary, fallback = (
        (["systemctl", "reboot"], ["reboot", "-f"])
        if action == "reboot"
        else (["systemctl", "poweroff"], ["poweroff", "-f"])
    )
    logger.info("post action: %s", action)
    try:
        if run(primary, check=False).returncode == 0:
            return
    except CommandError:  # no systemctl (the boot environment has none): busybox's reboot -f
        pass
    run(fallback, check=False)


class TaskRunner:
    def __init__(
        self,
        api: AgentApi,
        *,
        mac: str,
        allow: Sequence[Path],
        state: StateStore,
        stop: threading.Event,
        workers: int = 4,
        prefetch: int = 4,
        execute_post_action: bool = True,
        report_interval: float = REPORT_INTERVAL,
        checkpoint_bytes: int = CHECKPOINT_BYTES,
    ) -> None:
        self.api = api
        self.mac = mac
        self.allow = list(allow)
        self.state = state
        self.stop = stop
        self.workers = workers
        self.prefetch = prefetch
        self.execute_post_action = execute_post_action
        self.report_interval = report_interval
        self.checkpoint_bytes = checkpoint_bytes

    def run(self, task: Task) -> str:
        """Run ``task`` to its end and post the result; returns the final state. Raises Stopped when the
        agent is asked to stop mid-task (the result is then left for the restarted agent)."""
        cancel = threading.Event()
        reporter = Reporter(self.api, task.task_id, cancel, interval=self.report_interval)
        reporter.start()
        logger.info(
            "%s: task %d (deployment %d, attempt %d): image %r, disk rule %r, name %s, ip %s",
            self.mac, task.task_id, task.deployment_id, task.attempt,
            task.image, task.disk_rule, task.name, task.ip,
        )  # fmt: skip
        result: dict[str, Any] = {
            "state": "failed",
            "error": None,
            "disk": None,
            "action": "none",
            "changes": [],
        }
        try:
            if task.kind == "capture":
                from fleetcast.agent.capture import run_capture

                result.update(run_capture(self, task, reporter, cancel))
            elif task.kind == "personalize":  # issue 13: a new identity for the OS on the disk, no image
                from fleetcast.agent.repersonalize import run_personalize

                result.update(run_personalize(self, task, reporter, cancel))
            else:
                result.update(self._deploy(task, reporter, cancel))
            result["state"] = "done"
        except Stopped:
            reporter.stop()
            raise
        except Cancelled:
            result.update(state="cancelled", error="cancelled by the server", action="none")
        except FleetcastError as exc:
            if cancel.is_set():
                result.update(state="cancelled", error="cancelled by the server", action="none")
            else:
                result["error"] = exc.message + (f" (hint: {exc.hint})" if exc.hint else "")
                result["action"] = "none"
        except Exception as exc:  # a bug: report it rather than leave the server waiting
            logger.exception("task %d failed unexpectedly", task.task_id)
            result.update(error=f"agent error: {type(exc).__name__}: {exc}", action="none")
        result["disk"] = result["disk"] or reporter.snapshot.disk
        reporter.stop()
        logger.info(
            "task %d: %s%s", task.task_id, result["state"], f": {result['error']}" if result["error"] else ""
        )
        self.api.result(task.task_id, result)
        self.state.clear()
        if result["state"] == "done":
            do_it, line = plan_post_action(task.then, disk=result["disk"], execute=self.execute_post_action)
            logger.info("%s", line)
            if do_it:
                perform_post_action(task.then)
        return str(result["state"])

    def _check(self, cancel: threading.Event) -> None:
        if self.stop.is_set():
            raise Stopped("the agent is stopping")
        if cancel.is_set():
            raise Cancelled("cancelled by the server")

    def _deploy(self, task: Task, reporter: Reporter, cancel: threading.Event) -> dict[str, Any]:
        from fleetcast.disk.discovery import in_use, list_disks
        from fleetcast.disk.rules import parse_rule, select_disk
        from fleetcast.store.restore import restore

        reporter.update(phase="selecting-disk", urgent=True)
        rule = parse_rule(task.disk_rule)
        manifest = self._load_image(task.image, task.image_id)
        disk = select_disk(rule, list_disks(self.allow), max(manifest.disk_size, 0))
        target = Path(disk.path)
        busy = in_use(target)
        if busy:
            raise DiskError(
                f"disk {disk.path} is in use: {'; '.join(busy)}",
                hint="fleetcast never overwrites a disk in use; pick another with --disk, "
                "or run the agent from the network boot environment",
            )
        self._check(cancel)
        # the checkpoint is the set of packs written (format 2 restores in any order); the server keeps
        # only its size ("checkpoint_chunk"), the agent keeps the set beside its state file
        done = self._resume_point(task, disk.path, len(manifest.pack_ids()))
        start = len(done)
        self.state.save(self._state(task, disk.path, start))
        reporter.update(disk=disk.path, checkpoint_chunk=start)

        def progress(done: int, total: int) -> None:
            self._check(cancel)
            first = reporter.snapshot.phase != "writing"
            reporter.update(phase="writing", bytes_done=done, bytes_total=total, urgent=first)

        def checkpoint(packs: frozenset[str]) -> None:
            _save_done(self._done_path(), packs)
            self.state.save(self._state(task, disk.path, len(packs)))
            reporter.update(checkpoint_chunk=len(packs), urgent=True)

        def stopping() -> bool:
            return self.stop.is_set() or cancel.is_set()

        mcast: MulticastSource | None = None
        logger.info("task %d: writing %r to %s from chunk %d", task.task_id, task.image, target, start)
        with self.api.chunk_source(workers=self.workers, prefetch=self.prefetch, stop=stopping) as source:
            packs: PackSource = source
            if task.transport == "multicast":  # the batch's stream first, the rest by HTTP
                from fleetcast.agent.multicast import MulticastSource

                packs = mcast = MulticastSource(self.api, task, manifest, source, stop=stopping)
            else:
                source.warm(p for p in manifest.pack_ids() if p not in done)
            restored = restore(
                manifest,
                packs,
                target,
                grow=task.grow,
                progress=progress,
                done=done,
                on_checkpoint=checkpoint,
                checkpoint_bytes=self.checkpoint_bytes,
            )
        try:
            self._check(cancel)
            changes = list(restored.notes)
            if mcast is not None:  # which transport it finished with, packs repaired; udpcast's end
                changes.append(mcast.finish(settle=False))  # handshake overlaps personalizing (close below)
            if task.name or task.ip or manifest.os_hint:
                reporter.update(phase="personalizing", urgent=True)
                from fleetcast.agent.options import identity_settings
                from fleetcast.agent.personalize import personalize

                # name, IP and the Windows options (new SID, reset IDs, drivers folder, unattend.xml)
                with identity_settings(task, self.api, self.mac) as settings:
                    kind, lines = personalize(target, manifest, settings)
                changes += [f"{kind}: {line}" for line in lines]
        finally:
            if mcast is not None:
                mcast.close()  # the receivers' end handshake (bounded), also after a failure
        self._check(cancel)
        reporter.update(phase="finishing", urgent=True)
        _, line = plan_post_action(task.then, disk=disk.path, execute=self.execute_post_action)
        changes.append(line)
        return {"disk": disk.path, "changes": changes, "action": task.then}

    def _load_image(self, image: str, expected_id: str = "") -> Manifest:
        """The image's manifest and (format 2) its chunk index, checked against each other and, when the
        task names it (``Task.image_id``, the image planned), against the image id: an image replaced,
        repacked or upgraded since the plan is refused before anything is written."""
        from fleetcast.store.manifest import Manifest, load_image

        data = self.api.manifest(image)
        what = f"image {image!r}"
        if Manifest.from_json(data).version == 1:
            return load_image(data, None, expected_id=expected_id or None, what=what)
        path = self.state.path.with_name(self.state.path.name + ".index")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.api.index(image))
        return load_image(data, path, expected_id=expected_id or None, what=what)

    def _done_path(self) -> Path:
        return self.state.path.with_name(self.state.path.name + ".packs")

    def _resume_point(self, task: Task, disk: str, entries: int) -> frozenset[str]:
        if task.resume_chunk <= 0:
            return frozenset()
        saved = self.state.load()
        if (
            saved is not None
            and saved.server == self.api.server
            and saved.task_id == task.task_id
            and saved.deployment_id == task.deployment_id
            and saved.disk == disk
            and saved.image == task.image
            and task.resume_chunk <= saved.checkpoint_chunk
            and task.resume_chunk <= entries
        ):
            done = _load_done(self._done_path())
            if len(done) >= task.resume_chunk:
                logger.info("task %d: resuming with %d of %d packs done", task.task_id, len(done), entries)
                return done
        logger.warning(
            "task %d: the server offers resuming at chunk %d but this agent's state (%s) does not confirm "
            "that disk %s holds it; starting from chunk 0",
            task.task_id, task.resume_chunk, self.state.path, disk,
        )  # fmt: skip
        return frozenset()

    def _state(self, task: Task, disk: str, checkpoint: int) -> TaskState:
        return TaskState(
            server=self.api.server,
            task_id=task.task_id,
            deployment_id=task.deployment_id,
            image=task.image,
            disk=disk,
            checkpoint_chunk=checkpoint,
        )


def _save_done(path: Path, packs: frozenset[str]) -> None:
    """The set of packs a restore completed, written atomically (a kill leaves the old set or the new)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write("\n".join(sorted(packs)))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _load_done(path: Path) -> frozenset[str]:
    try:
        return frozenset(line for line in path.read_text().split() if line)
    except OSError:
        return frozenset()
