"""QEMU (TCG) with its serial console in a file, for the boot-environment tests."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from pathlib import Path


class Serial:
    """QEMU (TCG, no network unless given) with its serial console in a file; ended by PID."""

    def __init__(self, args: Sequence[str], log: Path) -> None:
        self.log = log
        argv = ["qemu-system-x86_64", "-accel", "tcg", "-m", "2048", "-display", "none", "-monitor", "none"]
        argv += ["-no-reboot", "-serial", f"file:{log}", *args]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for(self, needle: str, deadline: float = 240.0) -> str:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            text = self.text()
            if needle in text:
                return text
            if self.proc.poll() is not None:
                break
            time.sleep(0.5)
        raise AssertionError(f"{needle!r} not on the serial console; it shows:\n{self.text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
