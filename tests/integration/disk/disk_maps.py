"""Helpers for the allocation-map tests: partclone's own map of a filesystem image."""

from __future__ import annotations

import subprocess
from pathlib import Path


def partclone_map(tool: str, img: Path, tmp: Path) -> list[tuple[int, int]]:
    """The used byte ranges ``tool`` (partclone.extfs, .xfs, ...) reports with -D (its domain file)."""
    mapfile = tmp / "domain.map"
    subprocess.run([tool, "-D", "-s", img, "-o", mapfile, "-q"], check=True, capture_output=True)
    out = []
    for line in mapfile.read_text().splitlines():
        parts = line.split()
        if line.startswith("0x") and len(parts) == 3 and parts[2] == "+":
            out.append((int(parts[0], 16), int(parts[1], 16)))
    return out
