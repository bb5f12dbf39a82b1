"""The agent's state: what a restarted agent needs to resume its task and to prove who it is.

Each agent keeps its state in ``STATE_DIR/MAC`` (its identity, colons left out), locked while it runs:
several agents on one host never share a state, and a second agent of the same identity is
refused with the PID of the first (``claim``). ``credential.json`` (0600) keeps the credential the
server gave, so a restarted agent enrolls again as itself (docs/agent-protocol.md).

``tls-pins.json`` (0600, in the state directory itself: the pin is needed before the machine's identity
is known) keeps the TLS fingerprint an agent was given for a server URL (``fleetcast.tls=`` or
``--tls-fingerprint``, agent/tlspin.py), so an agent restarted without it still checks the server's
certificate against the pin instead of the system's authorities; a pin given again replaces it.

``state.json`` holds the task id, deployment id, the disk being written and the last
checkpoint (a chunk index after which everything before it is written and fsynced). It is written
atomically (temp + fsync + rename) at every checkpoint, and cleared when the task ends.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from fleetcast.errors import AgentError
from fleetcast.pidlock import PidLock

logger = logging.getLogger(__name__)

DEFAULT_STATE_DIR = Path("/var/lib/fleetcast-agent")
STATE_FILE = "state.json"
CREDENTIAL_FILE = "credential.json"
LOCK_FILE = "lock"
PINS_FILE = "tls-pins.json"
MAX_PINS = 64  # server URLs remembered (the oldest go first)


@dataclass(frozen=True)
class TaskState:
    server: str
    task_id: int
    deployment_id: int
    image: str
    disk: str
    checkpoint_chunk: int = 0


class StateStore:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / STATE_FILE

    def load(self) -> TaskState | None:
        """The saved task state, or None (missing or unreadable files are logged and ignored:
        the agent then restarts its task from chunk 0, which is always safe)."""
        try:
            raw = json.loads(self.path.read_text())
            return TaskState(
                server=str(raw["server"]),
                task_id=int(raw["task_id"]),
                deployment_id=int(raw["deployment_id"]),
                image=str(raw["image"]),
                disk=str(raw["disk"]),
                checkpoint_chunk=max(0, int(raw["checkpoint_chunk"])),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("ignoring unreadable agent state %s: %s", self.path, exc)
            return None

    def save(self, state: TaskState) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(STATE_FILE + ".tmp")
            with open(tmp, "w") as fh:
                json.dump(asdict(state), fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            raise AgentError(
                f"cannot save the agent state in {self.directory}: {exc.strerror}",
                hint="give the agent a writable --state-dir",
            ) from exc

    def load_credential(self, server: str) -> str | None:
        """The credential this agent got from ``server`` last time, or None."""
        try:
            raw = json.loads((self.directory / CREDENTIAL_FILE).read_text())
        except (OSError, ValueError):
            return None
        if (
            not isinstance(raw, dict)
            or raw.get("server") != server
            or not isinstance(raw.get("credential"), str)
        ):
            return None
        credential: str = raw["credential"]
        return credential

    def save_credential(self, server: str, credential: str) -> None:
        _write_private(self.directory / CREDENTIAL_FILE, {"server": server, "credential": credential},
                       "the agent credential")  # fmt: skip

    def clear(self) -> None:
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:
            logger.warning("cannot remove %s: %s", self.path, exc.strerror)


def load_pin(base: Path, server: str) -> str | None:
    """The TLS fingerprint saved for ``server`` under the state directory ``base``, or None (no file,
    an unreadable one, or no pin for this URL)."""
    try:
        raw = json.loads((Path(base) / PINS_FILE).read_text())
    except (OSError, ValueError):
        return None
    pin = raw.get(server.rstrip("/")) if isinstance(raw, dict) else None
    return pin if isinstance(pin, str) else None


def save_pin(base: Path, server: str, fingerprint: str) -> None:
    """Remember ``fingerprint`` (normalized, agent/tlspin.py) for ``server``; written atomically, 0600.
    AgentError when the state directory is not writable."""
    from fleetcast.agent.tlspin import normalize

    pin, key = normalize(fingerprint), server.rstrip("/")
    path = Path(base) / PINS_FILE
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        raw = {}
    pins = {k: v for k, v in raw.items() if isinstance(v, str)} if isinstance(raw, dict) else {}
    if pins.get(key) == pin:
        return
    pins.pop(key, None)
    pins[key] = pin
    pins = dict(list(pins.items())[-MAX_PINS:])
    _write_private(path, pins, "the server's TLS pin")


def _write_private(path: Path, data: dict[str, str], what: str) -> None:
    """``data`` as JSON in ``path``, 0600 in a 0700 directory, atomically (temp, fsync, rename)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise AgentError(
            f"cannot save {what} in {path.parent}: {exc.strerror}",
            hint="give the agent a writable --state-dir",
        ) from exc


def identity_key(mac: str) -> str:
    return mac.lower().replace(":", "").replace("-", "")


def claim(base: Path, mac: str) -> tuple[StateStore, PidLock]:
    """The state of identity ``mac`` under ``base``, locked for this process (AgentError naming the
    other agent's PID when it is taken)."""
    directory = Path(base) / identity_key(mac)
    lock = PidLock(directory / LOCK_FILE)
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        other = lock.acquire()
    except OSError as exc:
        raise AgentError(
            f"cannot create the agent state directory {directory}: {exc.strerror}",
            hint="give the agent a writable --state-dir",
        ) from exc
    if other is not None:
        raise AgentError(
            f"agent state directory {directory} is in use by another agent (PID {other})",
            hint="each agent needs its own machine identity; stop the other agent or give --state-dir",
        )
    return StateStore(directory), lock
