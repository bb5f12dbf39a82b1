"""What capture records about each Windows volume of a disk, read-only: the manifest's per-partition
``os_info`` (store: ``capture(..., os_info=...)``) that the console's image details page shows.

``probe`` runs the reading in a child process of its own session (``python -m
fleetcast.identity.windows.osinfo DISK``, JSON on its output): a capture killed with SIGKILL while a
volume is mounted would otherwise leave the ntfs-3g mount and its loop device behind; the child
finishes, unmounts and detaches on its own.

Every NTFS partition (or a bare NTFS disk) is attached read-only through a loop device with
offset/sizelimit and mounted read-only with ntfs-3g, like ``scan``; ``inspect`` reads its hives
(dirty ones through a replayed copy). Nothing on the source disk is written. A volume that holds no
Windows gives nothing; one that cannot be read gives ``{"kind": "windows", "error": ...}``, so the
page can say why the facts are missing.

Keys (docs/console.md): ``kind`` ("windows"), ``product``, ``edition``, ``version`` (display version,
e.g. 23H2), ``build``, ``generalized``, ``image_state``, ``machine_sid``, ``computer_name``, ``domain``.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from pathlib import Path
from typing import Any

from fleetcast.errors import FleetcastError

logger = logging.getLogger(__name__)

MAX_TEXT = 255


def _text(value: object) -> str | None:
    return str(value)[:MAX_TEXT] if value not in (None, "") else None


def facts(root: Path) -> dict[str, Any]:
    """The ``os_info`` of the mounted Windows volume ``root``."""
    from fleetcast.identity.windows.inspect import inspect

    rep = inspect(root)
    names = [n.get("computer_name") for n in rep.names if n.get("computer_name")]
    info: dict[str, Any] = {
        "kind": "windows",
        "product": _text(rep.version.get("product")),
        "edition": _text(rep.version.get("edition")),
        "version": _text(rep.version.get("display_version")),
        "build": _text(rep.version.get("build")),
        "generalized": rep.generalized,
        "image_state": _text(rep.image_state),
        "machine_sid": _text(rep.machine_sid_sam),
        "computer_name": _text(names[0]) if names else None,
        "domain": _text(rep.domain.get("name")) if rep.domain else None,
    }
    return {k: v for k, v in info.items() if v is not None}


PROBE_TIMEOUT = 600.0


def probe(disk: Path) -> dict[int, dict[str, Any]]:
    """Partition number (0: a bare volume) -> ``os_info`` for every Windows volume on ``disk``, read by
    a child process that cleans up after itself even when this process is killed."""
    from fleetcast.identity.osinfo import run_probe

    return run_probe([sys.executable, "-m", __name__, os.fspath(disk)], disk, "Windows", PROBE_TIMEOUT)


def probe_here(disk: Path) -> dict[int, dict[str, Any]]:
    """``probe`` in this process (the child's work)."""
    from fleetcast.disk.filesystems import FsType
    from fleetcast.disk.loop import attach
    from fleetcast.disk.mount import mounted
    from fleetcast.identity.windows.layout import CONFIG, find
    from fleetcast.identity.windows.scan import _volumes

    try:
        import fleetcast.identity.windows.inspect  # noqa: F401  (hivex: Debian's python3-hivex)

        volumes = _volumes(disk)
    except ImportError as exc:
        logger.info("no os_info for %s: the Windows reader cannot be imported (%s)", disk, exc)
        return {}
    except (FleetcastError, OSError) as exc:
        logger.debug("%s: no partition table read (%s); no os_info", disk, exc)
        return {}
    out: dict[int, dict[str, Any]] = {}
    for vol in volumes:
        if vol.fstype == FsType.BITLOCKER:
            out[vol.number] = {"kind": "windows", "error": "BitLocker-encrypted volume: not readable offline"}
            continue
        try:
            with (
                attach(vol.disk, read_only=True, offset=vol.offset, sizelimit=vol.size) as dev,
                mounted(dev, FsType.NTFS, read_only=True) as root,
            ):
                if find(root, CONFIG) is None:
                    continue
                try:  # inside the mount, so that no traceback keeps a file of it open
                    out[vol.number] = facts(root)
                except (FleetcastError, OSError) as exc:
                    text = exc.message if isinstance(exc, FleetcastError) else str(exc)
                    out[vol.number] = {"kind": "windows", "error": text.replace(f"{root}{os.sep}", "")[:1000]}
                gc.collect()
        except (FleetcastError, OSError) as exc:
            text = exc.message if isinstance(exc, FleetcastError) else str(exc)
            logger.warning("%s partition %d: not readable for os_info: %s", disk, vol.number, text)
    return out


def main(argv: list[str]) -> int:
    from fleetcast.identity.osinfo import child_main

    return child_main(argv, "windows", probe_here)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
