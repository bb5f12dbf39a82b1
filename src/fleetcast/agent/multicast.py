"""The agent's multicast receiver: a ``PackSource`` that takes the batch's stream first and the rest by HTTP.

``MulticastSource.packs(missing)``:

1. joins the session of its task (``POST /api/agent/multicast/{task}/join``), saying which packs it
   lacks; a late joiner (the session already started, or this agent restarted mid-task) is given the
   next cycle of the stream or told to use HTTP, whichever the server estimates is sooner
   (server/multicast_repair.py);
2. waits (asking every ``REPORT_SECONDS``) until the server starts the session, then runs
   ``udp-receiver`` and reads its output as frames (``transport.multicast.read_frames``): frames of
   another session or image are skipped unwritten, and a pack is handed to the restore only after its
   stored size and blake3 hash match the manifest (the restore then checks every chunk again);
3. while receiving it reports its interface's received bytes; when the server answers ``dropped`` (this
   receiver held the session below the drop rate) or the task is cancelled, it ends its udp-receiver;
4. when the stream ended with packs still missing (a pack failed its hash, the stream broke), it joins
   again with what it still lacks: the next cycle, or HTTP (at most ``MAX_CYCLES`` joins);
5. asks HTTP for exactly the packs still missing (``HttpChunkSource``).

So a resumed restore (``done`` packs) and every kind of loss end in the same place: the missing packs
by HTTP. ``summary()`` says how it finished, for the task's result and the event log.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import subprocess
import threading
import time
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import IO, Any

import blake3

from fleetcast.agent.api import AgentApi
from fleetcast.errors import FleetcastError
from fleetcast.protocol import Task
from fleetcast.store.manifest import Manifest
from fleetcast.transport.http import HttpChunkSource
from fleetcast.transport.multicast import (
    Channel,
    FrameStats,
    Receiver,
    grow_pipe,
    read_frames,
    route_interface,
    rx_bytes,
    to_ranges,
)

logger = logging.getLogger(__name__)

REPORT_SECONDS = 0.5  # while the session waits: how soon an agent sees it start
STREAM_REPORT_SECONDS = 1.0  # while receiving (the drop rule's window is 4 s)
# while receiving from a session without a drop rule, the reports only show progress: 16 receivers once
# a second were ~16 requests/s of the server's CPU on the machine they share
QUIET_REPORT_SECONDS = 5.0
RECEIVER_START_TIMEOUT = 45.0
# a receiver waits for its sender as long as its session waits (the agent ends it when the session ends
# unstarted); once the session has started, the stream must begin within RECEIVER_START_TIMEOUT. (It is
# never replaced once the sender may be there: a receiver that leaves makes udp-sender end the stream.)
RECEIVER_WAIT = 86_400
WAIT_LIMIT = 86_400.0
QUEUE_BYTES = 128 << 20  # verified packs held for the restore while the disk is busy
MAX_CYCLES = 4  # joins per task (the server stops offering cycles after its [multicast] max_cycles)


class MulticastSource:
    """``store.source.PackSource`` for a ``transport: multicast`` task; see the module docstring."""

    def __init__(
        self,
        api: AgentApi,
        task: Task,
        manifest: Manifest,
        http: HttpChunkSource,
        *,
        stop: Callable[[], bool],
        log_dir: Path | None = None,
    ) -> None:
        self.api = api
        self.task = task
        self.manifest = manifest
        self.http = http
        self.stop = stop
        self.log_dir = log_dir
        self.packs_multicast = 0
        self.packs_http = 0
        self.packs_corrupt = 0
        self.stats = FrameStats()
        self.session: str | None = None
        self.outcome = "not tried"  # received | late | dropped | broken: ... | none | stopped
        self._tried = False
        self._dropped = threading.Event()
        self._drop_rule = True  # the session drops slow receivers: report rx every STREAM_REPORT_SECONDS
        self._silent = threading.Event()  # the session started, but no frame came (RECEIVER_START_TIMEOUT)
        self._receivers: list[Receiver] = []
        # receivers whose stream ended cleanly, still finishing udpcast's end handshake (--exit-wait)
        # while the restore writes the last packs: (receiver, its reader thread, its log)
        self._settling: list[tuple[Receiver, threading.Thread, IO[bytes] | None]] = []
        self.queue_peak = 0  # the most verified packs that waited for the restore (is the disk the limit?)
        self.cycles: list[int] = []  # the cycles of the stream this client received from
        self._order = {p.id: i for i, p in enumerate(manifest.pack_refs())}

    # ---- the PackSource --------------------------------------------------------------------

    def packs(self, wanted: Collection[str]) -> Iterator[tuple[str, bytes]]:
        order = list(wanted)
        missing = set(order)
        if not self._tried:
            self._tried = True
            for n in range(MAX_CYCLES):
                before = self.outcome
                for pack_id, data in self._multicast(missing):
                    missing.discard(pack_id)
                    self.packs_multicast += 1
                    yield pack_id, data
                if n and self.outcome == "late":
                    self.outcome = before  # how the stream went stands; the rest comes by HTTP
                    break
                if not missing or not (self.outcome == "received" or self.outcome.startswith("broken")):
                    break  # all there, or late/dropped/stopped: HTTP (or nothing) from here
                if n + 1 < MAX_CYCLES:
                    logger.info("task %d: %d packs still missing after the stream; joining again",
                                self.task.task_id, len(missing))  # fmt: skip
        rest = [p for p in order if p in missing]
        if rest:
            logger.info("task %d: %d of %d packs by HTTP (%s)", self.task.task_id, len(rest), len(order),
                        self.outcome)  # fmt: skip
        for pack_id, data in self.http.packs(rest):
            self.packs_http += 1
            yield pack_id, data

    # ---- the multicast part ----------------------------------------------------------------

    def _post(self, what: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        url = f"/api/agent/multicast/{self.task.task_id}/{what}"
        return self.api._call("POST", url, f"multicast {what}", json=body or {}, limit=30.0)

    def _report(self, interface: str | None, final: dict[str, Any] | None = None) -> dict[str, Any]:
        assert self.session is not None
        body: dict[str, Any] = {"session": self.session, "packs": self.packs_multicast}
        rx = rx_bytes(interface) if interface else None
        if rx is not None:
            body["rx_bytes"] = rx
        if final is not None:
            body["done"] = final
        return self._post("report", body)

    def _multicast(self, missing: set[str]) -> Iterator[tuple[str, bytes]]:
        lacks = to_ranges(self._order[p] for p in missing if p in self._order)
        try:
            reply = self._post("join", {"missing": lacks})
        except FleetcastError as exc:
            self.outcome = f"join failed: {exc.message}"
            logger.warning("task %d: multicast join failed: %s", self.task.task_id, exc.message)
            return
        state = str(reply.get("state"))
        if state not in ("waiting", "starting", "streaming"):
            self.outcome = "late" if state == "late" else state
            logger.info("task %d: multicast %s: %s (estimate %s)", self.task.task_id, state,
                        reply.get("reason"), reply.get("estimate"))  # fmt: skip
            return
        self.session = str(reply["session"])
        self._drop_rule = bool(reply.get("drop_below", 1))  # an older server does not say: report often
        cycle = int(reply.get("cycle", 1))
        if cycle > 1:
            logger.info("task %d: waiting for cycle %d of the stream (estimate %s)", self.task.task_id, cycle,
                        reply.get("estimate"))  # fmt: skip
        image_id = str(reply.get("image_id"))
        if image_id != self.manifest.image_id:
            self.outcome = f"session streams image {image_id[:16]}, not {self.manifest.image_id[:16]}"
            logger.warning("task %d: %s", self.task.task_id, self.outcome)
            return
        group, port = str(reply["group"]), int(reply["port"])
        channel = Channel(group, port, route_interface(group))
        # udp-receiver runs from the join on, so it is connected when the sender starts and the stream
        # begins at once (not after this agent's next report saw the start and started one)
        receiver, log = self._new_receiver(channel)
        handed = False
        try:
            started = time.monotonic()
            while state == "waiting":
                if self.stop():
                    self.outcome = "stopped"
                    return
                if time.monotonic() - started > WAIT_LIMIT:
                    self.outcome = "the session never started"
                    return
                time.sleep(REPORT_SECONDS)
                try:
                    state = str(self._report(channel.interface).get("state"))
                except FleetcastError as exc:
                    self.outcome = f"report failed: {exc.message}"
                    return
                if state == "waiting" and receiver.exited:  # its --start-timeout passed: a fresh one
                    receiver, log = self._renew(receiver, log, channel)
            if state not in ("starting", "streaming"):
                self.outcome = "late" if state in ("finished", "ended", "failed") else state
                return
            if receiver.exited:
                receiver, log = self._renew(receiver, log, channel)
            self.cycles.append(cycle)
            handed = True
        finally:
            if not handed:
                receiver.stop()
                if log is not None:
                    log.close()
        yield from self._receive(channel, image_id, missing, receiver, log)

    def _new_receiver(self, channel: Channel) -> tuple[Receiver, IO[bytes] | None]:
        assert self.session is not None
        log: IO[bytes] | None = None
        if self.log_dir is not None:
            log = open(self.log_dir / f"udp-receiver-{self.session}.log", "ab")  # noqa: SIM115
        receiver = Receiver(channel, start_timeout=RECEIVER_WAIT, log=log)
        self._receivers.append(receiver)
        receiver.start()
        return receiver, log

    def _renew(
        self, receiver: Receiver, log: IO[bytes] | None, channel: Channel
    ) -> tuple[Receiver, IO[bytes] | None]:
        receiver.stop()
        if log is not None:
            log.close()
        return self._new_receiver(channel)

    def _receive(
        self,
        channel: Channel,
        image_id: str,
        missing: set[str],
        receiver: Receiver,
        log: IO[bytes] | None,
    ) -> Iterator[tuple[str, bytes]]:
        assert self.session is not None and receiver.stream is not None
        stream = receiver.stream
        grow_pipe(stream)
        done = threading.Event()
        ended = threading.Event()  # the end frame came: the reader finishes udpcast's handshake alone
        # udp-receiver must never wait for the disk: a reader thread keeps its pipe empty, with up to
        # QUEUE_BYTES of verified packs waiting for the restore
        largest = max((p.stored for p in self.manifest.pack_refs()), default=1)
        packs: queue.Queue[tuple[str, bytes] | None] = queue.Queue(max(4, QUEUE_BYTES // max(largest, 1)))
        reader = threading.Thread(
            target=self._read,
            args=(stream,),
            kwargs={
                "receiver": receiver,
                "image_id": image_id,
                "missing": missing,
                "packs": packs,
                "done": done,
                "ended": ended,
            },
            name="mcast-read",
            daemon=True,
        )
        watcher = threading.Thread(
            target=self._watch, args=(receiver, channel.interface, done), name="mcast-report", daemon=True
        )
        reader.start()
        watcher.start()
        self.outcome = "received"
        try:
            while (item := packs.get()) is not None:
                yield item
        finally:
            done.set()
            if ended.is_set():  # the receiver exits by itself after the end handshake; the restore goes on
                self._settling.append((receiver, reader, log))
            else:
                receiver.stop()
                with contextlib.suppress(queue.Empty):
                    while True:
                        packs.get_nowait()  # unblock the reader
                reader.join(timeout=10)
                if log is not None:
                    log.close()
            watcher.join(timeout=5)
        if self._dropped.is_set():
            self.outcome = "dropped"
        elif self._silent.is_set():
            self.outcome = f"no stream within {RECEIVER_START_TIMEOUT:.0f} s of the start"
        elif self.stop():
            self.outcome = "stopped"
        rc = receiver.proc.returncode if receiver.proc is not None else None
        logger.info(
            "task %d: multicast ended (%s): %d packs, %d foreign frames skipped, udp-receiver %s, "
            "at most %d packs waited for the restore",
            self.task.task_id, self.outcome, self.packs_multicast, self.stats.foreign, rc, self.queue_peak,
        )  # fmt: skip

    def _read(
        self,
        stream: IO[bytes],
        *,
        receiver: Receiver,
        image_id: str,
        missing: set[str],
        packs: queue.Queue[tuple[str, bytes] | None],
        done: threading.Event,
        ended: threading.Event,
    ) -> None:
        assert self.session is not None
        refs = {p.id: p for p in self.manifest.pack_refs()}
        try:
            for pack_id, data in read_frames(
                stream, self.session, image_id, wanted=lambda p: p in missing, stats=self.stats
            ):
                ref = refs.get(pack_id)
                if ref is None:
                    continue
                if len(data) != ref.stored or (
                    ref.hash is not None and blake3.blake3(data).hexdigest() != ref.hash
                ):
                    self.packs_corrupt += 1
                    logger.warning("task %d: multicast pack %s failed its hash; HTTP repairs it",
                                   self.task.task_id, pack_id)  # fmt: skip
                    continue
                self.queue_peak = max(self.queue_peak, packs.qsize() + 1)
                while not done.is_set():
                    try:
                        packs.put((pack_id, data), timeout=0.5)
                        break
                    except queue.Full:
                        continue
                if done.is_set():
                    return
            ended.set()  # before the last item: the consumer sees it when the packs end
        except (FleetcastError, OSError, ValueError) as exc:
            if not self._dropped.is_set() and not self.stop() and not done.is_set():
                self.outcome = f"broken: {exc}"
                logger.warning("task %d: multicast stream ended: %s", self.task.task_id, exc)
        finally:
            with contextlib.suppress(queue.Full):
                packs.put(None, timeout=30)
        if ended.is_set():
            with contextlib.suppress(OSError, ValueError):
                self._drain(receiver, stream)

    def _drain(self, receiver: Receiver, stream: IO[bytes]) -> None:
        """After the end frame: read to the end so udp-receiver completes the session with the sender
        (it acknowledges the end, then waits its --exit-wait) and exits by itself — while the restore
        already writes the last packs."""
        while stream.read(1 << 16):
            pass
        if receiver.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                receiver.proc.wait(timeout=10)
        receiver.stop()  # gone by now, or it never will be: by PID (a failed restore calls no finish())

    def _settle(self) -> None:
        """Wait for the receivers still finishing their end handshake (bounded), then end them all."""
        for receiver, reader, log in self._settling:
            reader.join(timeout=10)
            receiver.stop()
            if log is not None:
                log.close()
        self._settling.clear()
        for receiver in self._receivers:
            receiver.stop()

    def _watch(self, receiver: Receiver, interface: str | None, done: threading.Event) -> None:
        """Report once every STREAM_REPORT_SECONDS; end the receiver when dropped or stopping, or when
        no frame came within RECEIVER_START_TIMEOUT of the session's start."""
        started = last = time.monotonic()
        frames = self.stats.frames  # this stream's count starts here (the stats span every cycle)
        every = STREAM_REPORT_SECONDS if self._drop_rule else QUIET_REPORT_SECONDS
        while not done.wait(STREAM_REPORT_SECONDS):
            if self.stop():
                receiver.stop()
                return
            if self.stats.frames == frames and time.monotonic() - started > RECEIVER_START_TIMEOUT:
                self._silent.set()
                logger.warning("task %d: no multicast frame %.0f s after the start; HTTP instead",
                               self.task.task_id, RECEIVER_START_TIMEOUT)  # fmt: skip
                receiver.stop()
                return
            if time.monotonic() - last < every - 0.05:
                continue
            last = time.monotonic()
            try:
                state = self._report(interface).get("state")
            except FleetcastError as exc:
                logger.warning("task %d: multicast report failed: %s", self.task.task_id, exc.message)
                continue
            if state == "dropped":
                logger.info(
                    "task %d: dropped from the multicast session; finishing by HTTP", self.task.task_id
                )
                self._dropped.set()
                receiver.stop()
                return

    # ---- the end ---------------------------------------------------------------------------

    @property
    def transport(self) -> str:
        """What the client finished with: multicast when the stream brought packs and it was not
        dropped; unicast otherwise (late, dropped, restarted, no session)."""
        return "multicast" if self.packs_multicast and self.outcome == "received" else "unicast"

    def summary(self) -> str:
        outcome = self.outcome
        if self.cycles and self.cycles != [1]:
            outcome += f" in cycle{'s' if len(self.cycles) > 1 else ''} {', '.join(map(str, self.cycles))}"
        line = (
            f"transport: {self.transport} ({self.packs_multicast} packs by multicast, "
            f"{self.packs_http} repaired by HTTP; multicast {outcome})"
        )
        if self.stats.foreign:
            line += f"; {self.stats.foreign} frames of another session skipped"
        return line

    def finish(self, *, settle: bool = True) -> str:
        """Tell the session how this client finished (event ``client-transport``); the result line.
        With ``settle`` it also waits for the receivers still doing udpcast's end handshake (up to its
        ``--exit-wait``); without, the caller must ``close()`` later (e.g. after personalizing, so the
        handshake's half second overlaps it)."""
        if self.session is not None:
            final = {
                "transport": self.transport,
                "packs_multicast": self.packs_multicast,
                "packs_repaired": self.packs_http,
                "outcome": self.outcome[:200],
                "foreign_frames": self.stats.foreign,
            }
            try:
                self._report(None, final)
            except FleetcastError as exc:
                logger.warning("task %d: final multicast report failed: %s", self.task.task_id, exc.message)
        if settle:
            self._settle()
        return self.summary()

    def close(self) -> None:
        """End every receiver of this source (waits for one finishing its end handshake, bounded)."""
        self._settle()
