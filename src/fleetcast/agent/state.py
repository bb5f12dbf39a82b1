"""The agent's state file: what a restarted agent needs to resume the task it was running.

``STATE_DIR/state.json`` holds the task id, deployment id, the disk being written and the last
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

logger = logging.getLogger(__name__)

DEFAULT_STATE_DIR = Path("/var/lib/fleetcast-agent")
STATE_FILE = "state.json"


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

    def clear(self) -> None:
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:
            logger.warning("cannot remove %s: %s", self.path, exc.strerror)
