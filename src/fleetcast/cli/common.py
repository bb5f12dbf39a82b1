"""Pieces shared by the command groups: global options, JSON output, confirmation."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from fleetcast import config

GROUPS = (
    "image",
    "store",
    "windows",
    "serve",
    "agent",
    "admin",
    "deploy",
    "deployments",
    "clients",
    "bootenv",
    "lab",
    "capture",
    "audit",
    "personalize",
)


def global_options() -> argparse.ArgumentParser:
    """Options accepted both before and after the command (``fleetcast --data D admin token`` and
    ``fleetcast admin token --data D``). SUPPRESS keeps a sub-parser from overwriting the main one's value."""
    parent = argparse.ArgumentParser(add_help=False)
    config.add_flag(parent, "data", default=argparse.SUPPRESS)
    parent.add_argument("--config", default=argparse.SUPPRESS, metavar="FILE", help="config file (TOML)")
    parent.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks and debug logs"
    )
    return parent


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")


def add_store(parser: argparse.ArgumentParser) -> None:
    config.add_flag(parser, "store")


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")
    sys.stdout.flush()


def printable(text: str, *, newlines: bool = False) -> str:
    """``text`` with control characters (C0, DEL, C1: escape sequences, carriage returns, newlines
    unless ``newlines``) shown as ``\\xNN`` / ``\\uNNNN``, so what agents send cannot move the
    cursor or recolour the terminal (issue 12 item 4)."""

    def one(ch: str) -> str:
        if ch.isprintable() or ch == " " or (newlines and ch == "\n"):
            return ch
        return f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}"

    return "".join(one(ch) for ch in text)


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    """A plain aligned table for humans; every cell passes ``printable``."""
    rows = [[printable(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    print(line)
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
