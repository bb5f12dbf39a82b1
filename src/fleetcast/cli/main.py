"""Entry point: builds the parser from the command groups and maps errors to exit codes in one place."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from fleetcast import __version__
from fleetcast.cli.common import GROUPS, global_options, printable
from fleetcast.errors import FleetcastError
from fleetcast.log import setup_logging

logger = logging.getLogger(__name__)

LOGGING_GROUPS = frozenset({"serve", "agent"})


def build_parser() -> argparse.ArgumentParser:
    parent = global_options()
    parser = argparse.ArgumentParser(
        prog="fleetcast",
        description="Capture disk images and deploy them to many machines at once.",
        parents=[parent],
    )
    parser.add_argument("--version", action="version", version=f"fleetcast {__version__}")
    sub = parser.add_subparsers(dest="group", metavar="COMMAND")
    for group in GROUPS:
        try:
            module = importlib.import_module(f"fleetcast.cli.{group}")
        except ModuleNotFoundError as exc:
            if exc.name != f"fleetcast.cli.{group}":
                raise
            continue
        module.register(sub, parent)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    # Long-running services log their work; one-shot commands print their own summary and only warn.
    chatty = args.group in LOGGING_GROUPS and not getattr(args, "json", False)
    setup_logging(debug=debug, quiet=not chatty)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        rc = func(args)
    except FleetcastError as exc:
        if debug:
            logger.exception("failed")
        print(f"fleetcast: error: {printable(exc.message, newlines=True)}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {printable(exc.hint, newlines=True)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("fleetcast: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # stdout went away (``fleetcast image list | head``): not an error worth a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
