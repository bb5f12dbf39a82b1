"""Every OS probe of a disk for capture's per-partition ``os_info``, read-only, run side by side:
Windows volumes (``identity.windows.osinfo``: product, edition, SID, ...) and Linux roots
(``identity.linux.osinfo``: ``{"os": "linux", "network_stack", "name"}``). Each runs in a child process of
its own that cleans up after itself; ``start`` returns at once, so the probes run while the capture reads
the disk, and ``OsProbes.result()`` is what ``store.capture.capture(os_info=...)`` calls at the end."""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def run_probe(argv: Sequence[str], disk: Path, what: str, timeout: float) -> dict[int, dict[str, Any]]:
    """Run a probe child (``argv``, in a session of its own, JSON ``{partition: os_info}`` on its output)
    and return what it found; {} (with a warning) when it times out, fails or answers no JSON object. A
    child that outlives ``timeout`` is left to end on its own (it cleans up after itself)."""
    from fleetcast.run import spawn

    proc = spawn(argv, new_session=True, stderr=None)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        logger.warning(
            "%s: the %s probe took over %.0f s; no os_info (it ends on its own)", disk, what, timeout
        )
        return {}
    if proc.returncode != 0:
        logger.warning("%s: the %s probe failed (exit %s); no os_info", disk, what, proc.returncode)
        return {}
    try:
        found = json.loads(out)
        return {int(k): dict(v) for k, v in found.items()}
    except (ValueError, TypeError, AttributeError) as exc:
        logger.warning("%s: the %s probe answered no JSON object (%s); no os_info", disk, what, exc)
        return {}


def child_main(argv: list[str], what: str, probe_here: Callable[[Path], dict[int, dict[str, Any]]]) -> int:
    """A probe child's ``main`` (``python -m fleetcast.identity.WHAT.osinfo DISK``): prints
    ``probe_here(DISK)`` as JSON."""
    import sys

    if len(argv) != 1:
        print(f"usage: python -m fleetcast.identity.{what}.osinfo DISK", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format=f"{what} osinfo: %(message)s")
    found = probe_here(Path(argv[0]))
    try:  # written last, after every mount and loop device is gone: a dead reader costs nothing
        print(json.dumps({str(k): v for k, v in found.items()}))
    except BrokenPipeError:
        return 0
    return 0


class OsProbes:
    def __init__(self, disk: Path) -> None:
        from fleetcast.identity.linux.osinfo import probe as linux
        from fleetcast.identity.windows.osinfo import probe as windows

        self.disk = disk
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="os-probe")
        self._futures: list[Future[dict[int, dict[str, Any]]]] = [
            self._pool.submit(windows, disk),
            self._pool.submit(linux, disk),
        ]
        self._pool.shutdown(wait=False)

    def result(self) -> dict[int, dict[str, Any]]:
        """Partition number -> ``os_info`` (a partition is one OS's: Windows on NTFS, Linux on ext)."""
        out: dict[int, dict[str, Any]] = {}
        for fut in self._futures:
            for number, info in fut.result().items():
                out.setdefault(number, info)
        return out


def start(disk: Path) -> OsProbes:
    return OsProbes(disk)
