"""Packs over multicast: framing, and the udpcast sender and receiver processes that carry the frames.

The engine is udpcast (``udp-sender`` / ``udp-receiver``, Debian ``udpcast``; docs/multicast.md says why):
it moves one byte stream reliably to every receiver that joined before the start. fleetcast puts
**frames** in that stream, one per pack::

    magic "FCMCAST1" (8) | session id (16) | image id (32) | pack id (32) | length (8, big-endian) | bytes

and one end frame (pack id all zero, length 0). A receiver writes nothing from a frame whose session id
or image id is not its own (it skips ``length`` bytes), and hands on a pack only after its stored size
and blake3 hash match the manifest (``read_frames`` does the session/image check, the agent's source
the hash). A stream that loses its framing (bad magic, a length beyond ``MAX_FRAME``) ends the
multicast part: the missing packs come by HTTP.

Every process started here is a ``subprocess.Popen`` the caller owns; ``stop()`` ends it by PID
(SIGTERM, then SIGKILL), so a session's sender and receivers end with it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import signal
import struct
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from fleetcast.errors import FleetcastError, TransportError
from fleetcast.run import run_text, spawn, which

logger = logging.getLogger(__name__)

MAGIC = b"FCMCAST1"
HEADER = struct.Struct(">8s16s32s32sQ")
END_PACK = bytes(32)
MAX_FRAME = 1 << 30  # a pack is ~16 MiB; more than this is a broken stream, not a pack
_SKIP = 1 << 20
# udp-sender looks at who has connected only each time its HELLO is due again (default every 2000 ms):
# with the receivers already there it still sat 2 s before the first byte -- a quarter of a 100 MB
# stream at 150 Mbit/s (docs/multicast.md, "Where the time goes"). 50 ms: 20 small packets a second
# while a sender waits for its receivers, and the stream starts within 50 ms of the last one connecting.
HELLO_INTERVAL_MS = 50


class FrameError(TransportError):
    """The multicast stream is not a stream of fleetcast frames (any more)."""


@dataclass(frozen=True)
class Frame:
    session: bytes
    image: bytes
    pack: bytes
    length: int

    @property
    def end(self) -> bool:
        return self.pack == END_PACK and self.length == 0


def _hex(value: str, what: str, size: int = 32) -> bytes:
    try:
        raw = bytes.fromhex(value)
    except ValueError as exc:
        raise TransportError(f"{what} {value!r} is not hexadecimal") from exc
    if len(raw) != size:
        raise TransportError(f"{what} {value!r} is {len(raw)} bytes, expected {size} ({2 * size} hex digits)")
    return raw


def _hex32(value: str, what: str) -> bytes:
    return _hex(value, what)


def session_bytes(session_id: str) -> bytes:
    """A session id (32 hex digits) as its 16 bytes."""
    return _hex(session_id, "session id", 16)


def frame_header(session_id: str, image_id: str, pack_id: str, length: int) -> bytes:
    return HEADER.pack(
        MAGIC, session_bytes(session_id), _hex32(image_id, "image id"), _hex32(pack_id, "pack id"), length
    )


def end_frame(session_id: str, image_id: str) -> bytes:
    return HEADER.pack(MAGIC, session_bytes(session_id), _hex32(image_id, "image id"), END_PACK, 0)


def parse_header(raw: bytes) -> Frame:
    """One frame header; FrameError (exact text) when it is not one."""
    if len(raw) != HEADER.size:
        raise FrameError(f"multicast frame header is {len(raw)} bytes, expected {HEADER.size}")
    magic, session, image, pack, length = HEADER.unpack(raw)
    if magic != MAGIC:
        raise FrameError(f"multicast frame starts with {magic!r}, expected {MAGIC!r}")
    if length > MAX_FRAME:
        raise FrameError(f"multicast frame of pack {pack.hex()} claims {length} bytes (limit {MAX_FRAME})")
    return Frame(session, image, pack, length)


def _read_exact(stream: IO[bytes], n: int) -> bytes | None:
    """``n`` bytes, or None at a clean end of stream before the first byte; FrameError when cut."""
    parts: list[bytes] = []
    got = 0
    while got < n:
        part = stream.read(n - got)
        if not part:
            if got == 0:
                return None
            raise FrameError(f"multicast stream ended inside a frame ({got} of {n} bytes)")
        parts.append(part)
        got += len(part)
    return b"".join(parts)


@dataclass
class FrameStats:
    frames: int = 0
    foreign: int = 0  # frames of another session or image, skipped unwritten
    foreign_bytes: int = 0
    unwanted: int = 0
    bytes: int = 0


def read_frames(
    stream: IO[bytes],
    session_id: str,
    image_id: str,
    *,
    wanted: Callable[[str], bool] = lambda _: True,
    stats: FrameStats | None = None,
) -> Iterator[tuple[str, bytes]]:
    """``(pack_id, stored_bytes)`` for every frame of *this* session and image in ``stream``, until the
    end frame or the end of the stream. Frames of other sessions or images, and packs ``wanted`` says
    no to, are read past without keeping their bytes."""
    mine = (session_bytes(session_id), _hex32(image_id, "image id"))
    stats = stats if stats is not None else FrameStats()
    while True:
        raw = _read_exact(stream, HEADER.size)
        if raw is None:
            return
        frame = parse_header(raw)
        stats.frames += 1
        ours = (frame.session, frame.image) == mine
        if ours and frame.end:
            return
        pack_id = frame.pack.hex()
        if not ours or not wanted(pack_id):
            if ours:
                stats.unwanted += 1
            else:
                stats.foreign += 1
                stats.foreign_bytes += frame.length
                logger.warning(
                    "multicast: skipped a frame of session %s image %s (this receiver is in session %s)",
                    frame.session.hex(), frame.image.hex()[:16], session_id,
                )  # fmt: skip
            left = frame.length
            while left:
                part = stream.read(min(left, _SKIP))
                if not part:
                    raise FrameError("multicast stream ended inside a skipped frame")
                left -= len(part)
            continue
        data = _read_exact(stream, frame.length) if frame.length else b""
        if data is None:
            raise FrameError(f"multicast stream ended before the bytes of pack {pack_id}")
        stats.bytes += len(data)
        yield pack_id, data


def grow_pipe(stream: IO[bytes] | None, size: int = 1 << 20) -> None:
    """Make a pipe to or from udpcast hold ``size`` bytes (Linux F_SETPIPE_SZ; the default 64 KiB is a
    few dozen packets, so the process on the other end would wait on ours for every one of them)."""
    if stream is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        fcntl.fcntl(stream.fileno(), fcntl.F_SETPIPE_SZ, size)


def route_interface(address: str) -> str | None:
    """The interface the kernel routes ``address`` through (``ip -j route get``), or None."""
    try:
        routes = json.loads(run_text(["ip", "-j", "route", "get", address]))
    except (FleetcastError, ValueError):  # no route, no ip: let udpcast pick its default interface
        return None
    if isinstance(routes, list) and routes and isinstance(routes[0], dict) and routes[0].get("dev"):
        return str(routes[0]["dev"])
    return None


def rx_bytes(interface: str) -> int | None:
    """What ``interface`` has received so far (its kernel counter), or None."""
    try:
        return int(Path(f"/sys/class/net/{interface}/statistics/rx_bytes").read_text())
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class Channel:
    """Where one session's stream goes: udpcast's port base (it uses it and the next port), the group for
    the data and for the rendezvous, and the interface to send or listen on."""

    group: str
    port: int
    interface: str | None = None


def sender_argv(
    channel: Channel, *, min_receivers: int, max_wait: float, retries_until_drop: int = 40
) -> list[str]:
    argv = [
        which("udp-sender", package="udpcast"), "--nokbd", "--no-progress",
        "--portbase", str(channel.port),
        "--mcast-rdv-address", channel.group, "--mcast-data-address", channel.group,
        "--min-receivers", str(max(1, min_receivers)), "--max-wait", str(max(1, round(max_wait))),
        "--retries-until-drop", str(retries_until_drop),
        "--rexmit-hello-interval", str(HELLO_INTERVAL_MS),
    ]  # fmt: skip
    if channel.interface:
        argv += ["--interface", channel.interface]
    return argv


def receiver_argv(channel: Channel, *, start_timeout: float = 60.0) -> list[str]:
    """udp-receiver under ``setpriv --pdeathsig INT``: when the agent dies (kill -9), its receiver gets
    SIGINT and tells the sender it leaves, instead of holding the session until udp-sender drops it."""
    argv = [
        which("setpriv", package="util-linux"), "--pdeathsig", "INT", "--",
        which("udp-receiver", package="udpcast"), "--nokbd", "--no-progress",
        "--portbase", str(channel.port), "--mcast-rdv-address", channel.group,
        "--start-timeout", str(max(1, round(start_timeout))), "--receive-timeout", "30",
        "--exit-wait", "500",
    ]  # fmt: skip
    if channel.interface:
        argv += ["--interface", channel.interface]
    return argv


def stop(proc: subprocess.Popen[bytes] | None, *, timeout: float = 5.0, sig: int = signal.SIGTERM) -> None:
    """End this one process by its PID: ``sig`` (SIGINT makes udp-receiver tell the sender it leaves,
    so the session does not wait for it), then SIGKILL; reaped either way."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)
        return
    proc.kill()
    proc.wait()


class Sender:
    """One ``udp-sender`` fed with the frames of ``packs`` from a thread; ``bytes_sent`` counts what it
    took (the pipe fills at the rate the slowest receiver allows, so this is the session's rate)."""

    def __init__(
        self,
        channel: Channel,
        session_id: str,
        image_id: str,
        packs: Iterable[tuple[str, Callable[[], bytes]]],
        *,
        min_receivers: int,
        max_wait: float,
        wrap: Callable[[list[str]], list[str]] = lambda argv: argv,
        log: IO[bytes] | None = None,
        prefix: bytes = b"",
    ) -> None:
        self.channel = channel
        self.session_id = session_id
        self.image_id = image_id
        self._packs = packs
        self.argv = wrap(sender_argv(channel, min_receivers=min_receivers, max_wait=max_wait))
        self.proc: subprocess.Popen[bytes] | None = None
        self.bytes_sent = 0
        self.packs_sent = 0
        self.error: str | None = None
        self.finished = threading.Event()
        self._log = log
        self._prefix = prefix  # raw bytes sent before the first frame (tests: a foreign stream)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._feed, name=f"mcast-send-{session_id[:8]}", daemon=True)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        self.proc = spawn(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=self._log.fileno() if self._log is not None else subprocess.DEVNULL,
        )
        grow_pipe(self.proc.stdin)  # 16x fewer wake-ups of the feeding thread than with 64 KiB
        logger.info("multicast session %s: udp-sender PID %d on %s:%d", self.session_id,
                    self.proc.pid, self.channel.group, self.channel.port)  # fmt: skip
        self._thread.start()

    def _feed(self) -> None:
        proc = self.proc
        assert proc is not None and proc.stdin is not None
        try:
            if self._prefix:
                proc.stdin.write(self._prefix)
            for pack_id, load in self._packs:
                if self._stopping.is_set():
                    break
                data = load()
                proc.stdin.write(frame_header(self.session_id, self.image_id, pack_id, len(data)))
                proc.stdin.write(data)
                self.bytes_sent += HEADER.size + len(data)
                self.packs_sent += 1
            else:
                proc.stdin.write(end_frame(self.session_id, self.image_id))
            proc.stdin.close()
            rc = proc.wait()
            if rc != 0 and not self._stopping.is_set():
                self.error = f"udp-sender exited with status {rc}"
        except (OSError, ValueError) as exc:  # a broken pipe: the sender ended (no receivers, stopped)
            if not self._stopping.is_set():
                self.error = f"udp-sender stopped taking data: {exc}"
        except Exception as exc:  # a store error while reading a pack: the session fails, HTTP repairs
            self.error = f"multicast feed failed: {exc}"
            logger.exception("multicast session %s: feed failed", self.session_id)
        finally:
            if self.error:
                logger.warning("multicast session %s: %s", self.session_id, self.error)
            stop(proc)
            self.finished.set()

    def stop(self) -> None:
        self._stopping.set()
        stop(self.proc)
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Receiver:
    """One ``udp-receiver`` whose standard output is read as frames."""

    def __init__(
        self, channel: Channel, *, start_timeout: float = 60.0, log: IO[bytes] | None = None
    ) -> None:
        self.channel = channel
        self.argv = receiver_argv(channel, start_timeout=start_timeout)
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = log

    def start(self) -> IO[bytes]:
        self.proc = spawn(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=self._log.fileno() if self._log is not None else subprocess.DEVNULL,
        )
        logger.info("udp-receiver PID %d on %s:%d", self.proc.pid, self.channel.group, self.channel.port)
        assert self.proc.stdout is not None
        return self.proc.stdout

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def stream(self) -> IO[bytes] | None:
        """Its standard output (the frames), once started."""
        return self.proc.stdout if self.proc is not None else None

    @property
    def exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def stop(self) -> None:
        stop(self.proc, sig=signal.SIGINT)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()


def to_ranges(indices: Iterable[int]) -> list[list[int]]:
    """Sorted ``[start, end)`` ranges covering ``indices`` (how an agent names the packs it lacks: their
    places in the manifest's pack order, a few numbers instead of thousands of ids)."""
    out: list[list[int]] = []
    for i in sorted(set(indices)):
        if out and out[-1][1] == i:
            out[-1][1] = i + 1
        else:
            out.append([i, i + 1])
    return out


def from_ranges(ranges: Iterable[Iterable[int]], count: int) -> set[int]:
    """The indices ``to_ranges`` named, each checked against ``count`` packs (TransportError says which
    range is wrong)."""
    found: set[int] = set()
    for item in ranges:
        pair = list(item)
        if len(pair) != 2 or not 0 <= pair[0] < pair[1] <= count:
            raise TransportError(f"pack range {pair!r} is not [start, end) within 0..{count}")
        found.update(range(pair[0], pair[1]))
    return found
