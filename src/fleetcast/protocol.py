"""The agent protocol (docs/agent-protocol.md) as typed messages, one module for both sides.

The server takes these models as request bodies and answers with them; the agent builds its
requests from them and parses the server's answers with them. Every message:

- is **strict**: ``"batch": "2"``, ``true`` for an integer or ``"yes"`` for a boolean are refused,
  not coerced;
- refuses ``NaN`` and ``Infinity`` (``rate_bps: 1e999``): the event stream must stay JSON that a
  browser's ``JSON.parse`` and PostgreSQL's JSON type accept;
- is **bounded**: every string and list has a maximum, so one request cannot make a large row;
- what an agent *sends* refuses unknown fields (``extra="forbid"``: no 6 MB inventory of extra keys);
  what the server *answers* ignores unknown fields, so a newer server can add keys for newer agents.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fleetcast.errors import AgentError

THEN_ACTIONS = ("reboot", "shutdown", "none")
PHASES = (
    "selecting-disk", "writing", "verifying", "growing", "personalizing", "finishing",
    "capturing", "publishing",
)  # fmt: skip
RESULT_STATES = ("done", "failed", "cancelled")
TASK_KINDS = ("deploy", "capture", "personalize")

# The columns these land in (server/db.py): BigInteger, Integer, String(255), String(16).
MAX_INTEGER = 2**31 - 1
MAX_BIG_INTEGER = 2**63 - 1
MAX_ERROR = 20_000
MAX_CHANGES = 1_000
MAX_CHANGE = 1_000
MAX_MACS = 64
MAX_DISKS = 256
MAX_DNS = 8
MAX_UNATTEND = 256 * 1024
# capture (docs/agent-protocol.md, "Capture"): chunk hashes per have request, its body is raw digests
MAX_HAVE = 4096
DIGEST_BYTES = 32
MAX_WINDOWS = 64


class _Sent(BaseModel):
    """What an agent sends: strict, finite, no unknown fields."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid", frozen=True)


class _Answered(BaseModel):
    """What the server answers: strict and finite; unknown fields ignored (forward compatible)."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore", frozen=True)


class Cpu(_Sent):
    model: str = Field(default="", max_length=255)
    cores: int = Field(default=0, ge=0, le=1_000_000)


class Dmi(_Sent):
    vendor: str | None = Field(default=None, max_length=255)
    model: str | None = Field(default=None, max_length=255)
    serial: str | None = Field(default=None, max_length=255)


class Disk(_Sent):
    path: str = Field(max_length=255)
    size: int = Field(ge=0, le=MAX_BIG_INTEGER)
    logical_sector_size: int = Field(default=512, ge=1, le=1 << 20)
    physical_sector_size: int = Field(default=512, ge=1, le=1 << 20)
    model: str | None = Field(default=None, max_length=255)
    serial: str | None = Field(default=None, max_length=255)
    wwn: str | None = Field(default=None, max_length=255)
    removable: bool = False
    rotational: bool = False


class WindowsInstall(_Sent):
    """A Windows installation on one of the agent's disks, read-only (the duplicate-SID audit,
    issue 13): its machine SID, computer name, version and domain; ``error`` when it could not be read."""

    disk: str = Field(max_length=255)
    partition: int = Field(ge=0, le=MAX_INTEGER)
    machine_sid: str | None = Field(default=None, max_length=64, pattern=r"^S-1-5-21(-[0-9]{1,10}){3}$")
    computer_name: str = Field(default="", max_length=255)
    version: str = Field(default="", max_length=255)
    domain: str | None = Field(default=None, max_length=255)
    error: str | None = Field(default=None, max_length=MAX_CHANGE)


class Inventory(_Sent):
    """The machine as the agent sees it; ``macs[0]`` is its identity unless it booted from another."""

    macs: list[str] = Field(min_length=1, max_length=MAX_MACS)
    hostname: str = Field(default="", max_length=255)
    cpu: Cpu = Field(default_factory=Cpu)
    ram_bytes: int = Field(default=0, ge=0, le=MAX_BIG_INTEGER)
    dmi: Dmi = Field(default_factory=Dmi)
    disks: list[Disk] = Field(default_factory=list, max_length=MAX_DISKS)
    agent_version: str = Field(default="", max_length=64)
    boot_mac: str | None = Field(default=None, max_length=32)
    windows: list[WindowsInstall] = Field(default_factory=list, max_length=MAX_WINDOWS)


class EnrollRequest(_Sent):
    """``credential``: the agent's current credential, if it has one (it proves that a re-enrollment
    of a known MAC comes from the same machine; without it the admin must revoke the old one)."""

    enroll_token: str = Field(max_length=512)
    inventory: Inventory
    credential: str | None = Field(default=None, max_length=512)


class EnrollReply(_Answered):
    client_id: int
    credential: str


HEARTBEAT_MAX_WAIT = 30.0  # seconds an idle agent's heartbeat may ask the server to hold its reply


class HeartbeatRequest(_Sent):
    """``wait``: an idle agent (no task) lets the server hold the reply up to this many seconds and answer
    as soon as a task is there for it (a long poll: the task starts at once, not at the next heartbeat); a
    server that answers at once without a task leaves the agent to sleep the rest of ``interval``."""

    inventory: Inventory | None = None
    task_id: int | None = None
    wait: float = Field(default=0.0, ge=0, le=HEARTBEAT_MAX_WAIT)


class Task(_Answered):
    """A task as the server hands it out; ``task_id`` is the target's id. ``kind`` "deploy" writes
    ``image`` to the disk ``disk_rule`` picks; "capture" reads that disk into a new image named
    ``image`` on the server (``replace``: an existing image of that name is replaced at publish);
    "personalize" re-personalizes the OS already on that disk without writing an image (issue 13:
    ``new_sid``, ``reset_ids``, ``name``)."""

    task_id: int = Field(ge=1, le=MAX_INTEGER)
    deployment_id: int = Field(ge=1, le=MAX_INTEGER)
    kind: str
    image: str = Field(max_length=255)
    image_size: int = Field(default=0, ge=0)
    disk_rule: str = Field(max_length=255)
    grow: bool = False
    name: str | None = Field(default=None, max_length=255)
    ip: str | None = Field(default=None, max_length=64)
    gateway: str | None = Field(default=None, max_length=64)
    dns: list[str] = Field(default_factory=list, max_length=MAX_DNS)
    then: str = "none"
    resume_chunk: int = Field(default=0, ge=0)
    attempt: int = Field(default=1, ge=0)
    replace: bool = False
    # blake3 of the planned image's manifest: the agent refuses another image (issue 14 item 2); "" unknown
    image_id: str = Field(default="", max_length=64, pattern=r"^([0-9a-f]{64})?$")
    # how the packs come: "multicast" -> the agent joins the batch's session (server/multicast.py)
    transport: str = Field(default="unicast", max_length=16)
    # Windows options (issue 9 CONSOLE request; issue 13 personalize tasks); an older server sends none
    new_sid: bool = True
    reset_ids: bool = True
    drivers: str | None = Field(default=None, max_length=128)  # a driver folder's name on the server
    unattend: str = Field(default="auto", max_length=MAX_UNATTEND)  # "auto", "none" or an unattend.xml text


class HeartbeatReply(_Answered):
    task: dict[str, Any] | None = None  # parsed by parse_task, so a bad task can still be reported failed
    cancel: bool = False
    interval: float = Field(default=2.0, gt=0, le=3600)


class ProgressReport(_Sent):
    phase: str = Field(max_length=32)
    bytes_done: int = Field(default=0, ge=0, le=MAX_BIG_INTEGER)
    bytes_total: int = Field(default=0, ge=0, le=MAX_BIG_INTEGER)
    rate_bps: float = Field(default=0.0, ge=0)
    eta_seconds: float | None = Field(default=None, ge=0)
    checkpoint_chunk: int | None = Field(default=None, ge=0, le=MAX_INTEGER)
    disk: str | None = Field(default=None, max_length=255)


class ProgressReply(_Answered):
    cancel: bool = False


class TaskResult(_Sent):
    state: str = Field(max_length=16)
    error: str | None = Field(default=None, max_length=MAX_ERROR)
    disk: str | None = Field(default=None, max_length=255)
    action: str | None = Field(default=None, max_length=16)
    changes: list[Annotated[str, Field(max_length=MAX_CHANGE)]] = Field(
        default_factory=list, max_length=MAX_CHANGES
    )


class ResultReply(_Answered):
    pass


# ---- capture: the agent reads its disk, the server keeps only what it lacks ------------------------
# POST /api/agent/captures/{task_id}/begin                        -> CaptureBeginReply
# POST /api/agent/captures/{task_id}/have   body: N x 32-byte digests (application/octet-stream)
#                                                                 -> HaveReply
# GET  /api/agent/captures/{task_id}/packs/{pack_id}?stored_hash=H -> PackStatus
# PUT  /api/agent/captures/{task_id}/packs/{pack_id}?stored_hash=H&stored=N&offset=O
#      body: stored[O:] (streamed; a cut-off body keeps what arrived)  -> PackStatus
# GET  /api/agent/captures/{task_id}/index?stored=N                -> PackStatus
# PUT  /api/agent/captures/{task_id}/index?stored=N&offset=O  body: the binary chunk index from O
#                                                                 -> PackStatus
# GET  /api/agent/captures/{task_id}/previous/manifest | previous/index  (when begin named a previous image)
#                                                                 -> its manifest / index bytes
# POST /api/agent/captures/{task_id}/publish?reused=N body: the manifest's JSON bytes -> PublishReply


class PreviousImage(_Answered):
    """The image a re-capture starts from (the one it replaces, else the newest image captured from this
    client): its packs are leased for the capture, so the agent may reference any chunk of its index
    without asking ``have`` (``reused`` at the publish counts those)."""

    image: str = Field(max_length=255)
    image_id: str = Field(min_length=64, max_length=64)
    entries: int = Field(ge=0, le=MAX_BIG_INTEGER)
    index_size: int = Field(ge=0, le=MAX_BIG_INTEGER)


class CaptureBeginReply(_Answered):
    """The capture may go ahead: ``image`` is free (or ``replace`` was asked for)."""

    image: str = Field(max_length=255)
    replace: bool = False
    max_have: int = Field(default=MAX_HAVE, ge=1)
    previous: PreviousImage | None = None


class KnownPack(_Answered):
    stored: int = Field(ge=0, le=MAX_BIG_INTEGER)
    hash: str = Field(min_length=64, max_length=64)


class HaveReply(_Answered):
    """``known``: ``[i, pack, offset]`` for every asked digest ``i`` (its position in the request) the
    server keeps; ``packs``: stored size and stored hash of each pack named there."""

    known: list[tuple[int, str, int]] = Field(default_factory=list, max_length=MAX_HAVE)
    packs: dict[str, KnownPack] = Field(default_factory=dict, max_length=MAX_HAVE)


class PackStatus(_Answered):
    """How many bytes of a pack (or the index) the server holds for this capture; ``complete`` once
    all arrived and the pack was verified (its content hashes to its id, its stored bytes to the hash)."""

    received: int = Field(ge=0, le=MAX_BIG_INTEGER)
    complete: bool = False


class PublishReply(_Answered):
    image: str = Field(max_length=255)
    image_id: str = Field(max_length=64)


def pack_digests(body: bytes) -> list[bytes]:
    """A have request's body as its digests; AgentError when it is not whole 32-byte digests or too many."""
    if len(body) % DIGEST_BYTES:
        raise AgentError(
            f"have request: expected a multiple of {DIGEST_BYTES} bytes of digests, found {len(body)} bytes"
        )
    n = len(body) // DIGEST_BYTES
    if n > MAX_HAVE:
        raise AgentError(f"have request: at most {MAX_HAVE} digests per request, found {n}")
    return [body[i : i + DIGEST_BYTES] for i in range(0, len(body), DIGEST_BYTES)]


# POST previous/chunks (a re-capture reading the previous image's inode tables): the body is records of a
# 32-byte digest and a little-endian u32 length; the answer, for each record in order, a u32 length
# (MISSING_CHUNK: the server does not have it) and that many bytes. The agent checks every chunk's digest.
CHUNK_REQUEST = struct.Struct("<32sI")
MAX_CHUNK_REQUESTS = 256  # chunks one request asks for (at most 16 MiB of answer with 64 KiB chunks)
MISSING_CHUNK = 0xFFFFFFFF


def chunk_requests(body: bytes) -> list[tuple[bytes, int]]:
    """A previous/chunks body as (digest, length) pairs; AgentError when malformed or too many."""
    size = CHUNK_REQUEST.size
    if len(body) % size or len(body) // size > MAX_CHUNK_REQUESTS:
        raise AgentError(
            f"previous chunks request: expected up to {MAX_CHUNK_REQUESTS} records of {size} bytes, "
            f"found {len(body)} bytes"
        )
    return [CHUNK_REQUEST.unpack_from(body, at) for at in range(0, len(body), size)]


def chunk_answer(wanted: list[tuple[bytes, int]], found: Mapping[bytes, bytes]) -> bytes:
    out = bytearray()
    for digest, _ in wanted:
        data = found.get(digest)
        out += struct.pack("<I", MISSING_CHUNK if data is None else len(data))
        out += data or b""
    return bytes(out)


def read_chunk_answer(wanted: Sequence[tuple[bytes, int]], body: bytes) -> dict[bytes, bytes]:
    """digest -> bytes from a previous/chunks answer (the digests are not checked here); AgentError when
    it is cut short."""
    out: dict[bytes, bytes] = {}
    at = 0
    for digest, _ in wanted:
        if at + 4 > len(body):
            raise AgentError(f"previous chunks answer: cut short at byte {at} of {len(body)}")
        (n,) = struct.unpack_from("<I", body, at)
        at += 4
        if n == MISSING_CHUNK:
            continue
        if at + n > len(body):
            raise AgentError(f"previous chunks answer: chunk of {n} bytes cut short at byte {at}")
        out[digest] = body[at : at + n]
        at += n
    return out


_M = TypeVar("_M", bound=BaseModel)


def bounded_result(
    state: str, error: str | None, disk: str | None, action: str | None, changes: list[str]
) -> TaskResult:
    """A result that fits the bounds: a long error or change line is cut, a long change list ends
    with a line saying how many were left out (the agent's log keeps them all)."""

    def cut(text: str, limit: int) -> str:
        return text if len(text) <= limit else text[: limit - 1] + "…"

    lines = [cut(c, MAX_CHANGE) for c in changes]
    if len(lines) > MAX_CHANGES:
        lines = [*lines[: MAX_CHANGES - 1], f"… and {len(lines) - MAX_CHANGES + 1} more changes"]
    return TaskResult(
        state=state, error=cut(error, MAX_ERROR) if error is not None else None,
        disk=disk, action=action, changes=lines,
    )  # fmt: skip


def describe(exc: ValidationError) -> str:
    """One line: ``field: problem (found TYPE)`` for each error pydantic found."""
    parts = []
    for e in exc.errors():
        loc = ".".join(str(p) for p in e.get("loc", ())) or "body"
        found = type(e.get("input")).__name__
        parts.append(f"field {loc!r}: {e.get('msg', 'invalid')} (found {found})")
    return "; ".join(parts)


def parse(model: type[_M], raw: object, what: str) -> _M:
    """``raw`` (a decoded JSON value) as ``model``; AgentError naming the field otherwise."""
    if not isinstance(raw, dict):
        raise AgentError(f"{what}: expected an object, found {type(raw).__name__}")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise AgentError(f"{what}: {describe(exc)}") from exc


def parse_task(raw: object) -> Task:
    """A task from the server, checked; AgentError naming the field, what was expected and found."""
    task = parse(Task, raw, "task from the server")
    if task.kind not in TASK_KINDS:
        raise AgentError(
            f"task kind {task.kind!r} is not supported by this agent (supported: {', '.join(TASK_KINDS)})"
        )
    if task.then not in THEN_ACTIONS:
        raise AgentError(f"task field 'then': expected one of {', '.join(THEN_ACTIONS)}, found {task.then!r}")
    return task
