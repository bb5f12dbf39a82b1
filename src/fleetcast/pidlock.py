"""A lock file that names its holder: ``flock`` on a file holding the PID of the process that has it.

The kernel drops the lock when the holder dies (even by SIGKILL), so a stale file never blocks.
Callers turn "held by PID N" into their own error (a second agent of one identity, a second server
on one data directory).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO


class PidLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: IO[str] | None = None

    def acquire(self) -> str | None:
        """Take the lock: None when taken, else the holder's PID as written in the file ("?" if
        unreadable). OSError when the file cannot be opened."""
        fh = open(self.path, "a+")  # noqa: SIM115 - held open while the lock is held
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            other = fh.read().strip() or "?"
            fh.close()
            return other
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._fh = fh
        return None

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
