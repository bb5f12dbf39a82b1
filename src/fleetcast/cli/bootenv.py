"""``fleetcast bootenv build``: the boot environment (kernel + initrd, optionally a hybrid ISO)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fleetcast.cli.common import add_json


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], parent: argparse.ArgumentParser
) -> None:
    p = sub.add_parser(
        "bootenv",
        parents=[parent],
        help="build the boot environment clients network-boot into",
        description="The boot environment: a Debian kernel and initrd that run the fleetcast agent.",
    )
    bsub = p.add_subparsers(dest="bootenv_command", metavar="SUBCOMMAND", required=True)
    b = bsub.add_parser(
        "build",
        parents=[parent],
        help="build (or find in the cache) the kernel + initrd",
        description="Build the kernel and initrd with mmdebstrap, cached by the hash of their inputs "
        "(built once; the same inputs return at once).",
    )
    b.add_argument(
        "--add-package", action="append", default=[], metavar="P", help="extra Debian package (repeatable)"
    )
    b.add_argument(
        "--add-firmware",
        action="append",
        default=[],
        metavar="P",
        help="firmware package, e.g. firmware-bnx2 (repeatable)",
    )
    b.add_argument("--add-modules", metavar="DIR", help="folder of extra kernel modules (*.ko)")
    b.add_argument("--iso", metavar="FILE", help="also write a hybrid ISO/USB image that boots it")
    b.add_argument(
        "--server", metavar="URL", help="with --iso: the server URL written into the ISO's command line"
    )
    b.add_argument("--enroll-token", metavar="TOKEN", help="with --iso: the enrollment token written into it")
    b.add_argument(
        "--cache",
        metavar="DIR",
        help="cache folder (default: /var/cache/fleetcast/bootenv)",
    )
    add_json(b)
    b.set_defaults(func=handle_build)
    pr = bsub.add_parser(
        "prune",
        parents=[parent],
        help="remove old boot environments from the cache",
        description="Remove cached boot environments beyond the most recently used ones (and the "
        "Debian trees nothing left refers to). `bootenv build` does this after each build.",
    )
    pr.add_argument("--keep", type=int, default=3, metavar="N", help="entries to keep (default 3)")
    pr.add_argument(
        "--min-age",
        type=float,
        default=60.0,
        metavar="MIN",
        help="never remove one used in the last MIN minutes (default 60)",
    )
    pr.add_argument("--cache", metavar="DIR", help="cache folder (default: /var/cache/fleetcast/bootenv)")
    add_json(pr)
    pr.set_defaults(func=handle_prune)


def handle_prune(args: argparse.Namespace) -> int:
    from fleetcast.bootenv.build import prune
    from fleetcast.cli.common import print_json

    removed = prune(Path(args.cache) if args.cache else None, args.keep, min_age=args.min_age * 60)
    if args.json:
        print_json({"removed": [str(p) for p in removed]})
    else:
        for path in removed:
            print(f"removed {path}")
        if not removed:
            print("nothing to remove")
    return 0


def handle_build(args: argparse.Namespace) -> int:
    from fleetcast.bootenv import BootEnvOptions, ensure
    from fleetcast.cli.common import print_json
    from fleetcast.errors import UsageError

    options = BootEnvOptions(
        add_packages=tuple(args.add_package),
        add_firmware=tuple(args.add_firmware),
        add_modules=Path(args.add_modules) if args.add_modules else None,
    )

    def progress(line: str) -> None:
        if not args.json:
            print(line, file=sys.stderr, flush=True)

    if (args.server or args.enroll_token) and not args.iso:
        raise UsageError("--server and --enroll-token go into the ISO's command line: give --iso FILE too")
    if bool(args.server) != bool(args.enroll_token):
        raise UsageError("--server and --enroll-token go together (the ISO's agent needs both)")
    env = ensure(options, cache_dir=Path(args.cache) if args.cache else None, progress=progress)
    iso = None
    if args.iso:
        from fleetcast.bootenv.iso import make_iso

        line = env.cmdline(args.server, args.enroll_token) if args.server else None
        iso = make_iso(env, Path(args.iso), cmdline=line)
    if args.json:
        print_json(
            {
                "key": env.key,
                "kernel": str(env.kernel),
                "initrd": str(env.initrd),
                "initrd_bytes": env.initrd.stat().st_size,
                "iso": str(iso) if iso else None,
                "seconds_total": env.manifest.get("seconds_total"),
            }
        )
    else:
        print(f"kernel  {env.kernel}")
        print(f"initrd  {env.initrd} ({env.initrd.stat().st_size / 1e6:.1f} MB)")
        if iso:
            print(f"iso     {iso} ({iso.stat().st_size / 1e6:.1f} MB)")
    return 0
