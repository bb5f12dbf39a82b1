"""``fleetcast image``: capture, restore, list, info, verify, rm, export, import."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

from fleetcast.cli.common import add_json, add_store, print_json, print_table

if TYPE_CHECKING:
    from fleetcast.store.images import ImageStore


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], parent: argparse.ArgumentParser
) -> None:
    group = sub.add_parser("image", parents=[parent], help="capture, restore and manage disk images")
    cmds = group.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = cmds.add_parser("capture", parents=[parent], help="capture a disk or raw disk-image file")
    p.add_argument(
        "source", type=Path, metavar="SOURCE", help="block device or raw disk-image file (read-only)"
    )
    p.add_argument("name", metavar="NAME", help="image name")
    p.add_argument(
        "--force-raw", action="store_true", help="capture BitLocker/hibernated/unclean volumes raw"
    )
    p.add_argument(
        "--previous", metavar="IMAGE",
        help="an earlier image of the same disk: ext4 files provably unchanged since it are not read "
        "(docs/image-format.md, 'Re-capture: windows not read')",
    )  # fmt: skip
    add_store(p)
    add_json(p)
    p.set_defaults(func=cmd_capture)

    p = cmds.add_parser("restore", parents=[parent], help="write an image onto a disk or file")
    p.add_argument("name", metavar="NAME")
    p.add_argument("target", type=Path, metavar="TARGET", help="block device or file (created if missing)")
    p.add_argument("--id", dest="image_id", metavar="ID", help="refuse unless the image has this id")
    p.add_argument(
        "--grow", action="store_true", help="grow the last partition and its filesystem to the disk"
    )
    add_store(p)
    add_json(p)
    p.set_defaults(func=cmd_restore)

    p = cmds.add_parser("list", parents=[parent], help="list the images in the store")
    add_store(p)
    add_json(p)
    p.set_defaults(func=cmd_list)

    p = cmds.add_parser("info", parents=[parent], help="show an image's disk, partitions and sizes")
    p.add_argument("name", metavar="NAME")
    add_store(p)
    add_json(p)
    p.set_defaults(func=cmd_info)

    p = cmds.add_parser("verify", parents=[parent], help="re-hash every chunk an image uses")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--id", dest="image_id", metavar="ID", help="the image id it must have (a task's)")
    add_store(p)
    add_json(p)
    p.set_defaults(func=cmd_verify)

    p = cmds.add_parser("rm", parents=[parent], help="remove an image (its chunks go at the next gc)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--force", action="store_true", help="cancel the server's deployments that use it first")
    add_store(p)
    add_json(p)
    p.set_defaults(func=cmd_rm)

    p = cmds.add_parser("export", parents=[parent], help="write an image as a raw or qcow2 file")
    p.add_argument("name", metavar="NAME")
    p.add_argument("file", type=Path, metavar="FILE", help="*.qcow2 for qcow2, anything else raw")
    add_store(p)
    add_json(p)
    p.set_defaults(func=cmd_export)

    p = cmds.add_parser("import", parents=[parent], help="capture a raw, qcow2 or vhdx disk-image file")
    p.add_argument("file", type=Path, metavar="FILE")
    p.add_argument("name", metavar="NAME")
    add_store(p)
    add_json(p)
    p.set_defaults(func=cmd_import)


def _store(args: argparse.Namespace) -> ImageStore:
    from fleetcast.config import store_from_args
    from fleetcast.store.images import ImageStore

    return ImageStore(store_from_args(args))


def _hb(n: int) -> str:
    from fleetcast.progress import human_bytes

    return human_bytes(n)


def cmd_capture(args: argparse.Namespace) -> int:
    from fleetcast.progress import ProgressBar
    from fleetcast.store.capture import CaptureStats, capture
    from fleetcast.store.images import summary

    store = _store(args)
    stats = CaptureStats()
    started = time.monotonic()
    with ProgressBar(f"capture {args.name}", enabled=not args.json) as bar:
        from fleetcast.identity.osinfo import start  # Windows/Linux facts for the image (read-only)
        from fleetcast.store.previous import StorePrevious

        previous = StorePrevious(store, args.previous) if args.previous else None
        probes = start(Path(args.source))  # they run while the disk is read
        m = capture(args.source, args.name, store, force_raw=args.force_raw, progress=bar, stats=stats,
                    os_info=probes.result, previous=previous)  # fmt: skip
    seconds = time.monotonic() - started
    out = summary(m, store.usage().get(m.name)) | {
        "source": str(args.source),
        "store": str(store.root),
        "new_chunks": stats.new_chunks,
        "new_bytes": stats.new_bytes,
        "seconds": round(seconds, 3),
    }
    if args.previous:
        out["unread_bytes"] = stats.unread_bytes  # not read: unchanged since --previous
    if args.json:
        print_json(out)
    else:
        print(
            f"captured {m.name!r} from {args.source}: {_hb(m.used_bytes)} used, {_hb(m.data_bytes)} data, "
            f"{_hb(stats.new_bytes)} new in the store ({stats.new_chunks} new packs) in {seconds:.1f} s"
        )
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from fleetcast.progress import ProgressBar
    from fleetcast.store.restore import restore

    store = _store(args)
    manifest = store.open(args.name)
    started = time.monotonic()
    with ProgressBar(f"restore {args.name}", enabled=not args.json) as bar:
        result = restore(
            manifest, store.source(), args.target, grow=args.grow, progress=bar, expected_id=args.image_id
        )
    seconds = time.monotonic() - started
    if args.json:
        print_json(result.to_dict() | {"seconds": round(seconds, 3)})
    else:
        print(
            f"restored {args.name!r} onto {args.target}: {_hb(result.bytes_written)} in "
            f"{result.chunks_written} verified chunks in {seconds:.1f} s"
            + (", grown" if result.grown else "")
        )
        for note in result.notes:
            print(f"note: {note}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    store = _store(args)
    images = store.summaries()
    if args.json:
        print_json(images)
        return 0
    if not images:
        print(f"no images in {store.root}")
        return 0
    rows = [
        [
            m["name"],
            m["created"],
            _hb(m["disk_size"]),
            _hb(m["used_bytes"]),
            _hb(m["stored_bytes"]),
            _hb(m["unique_bytes"]),
            m["os_hint"] or "-",
            ",".join(p["fstype"] for p in m["partitions"]),
        ]
        for m in images
    ]
    print_table(["NAME", "CREATED", "DISK", "USED", "STORED", "UNIQUE", "OS", "FILESYSTEMS"], rows)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from fleetcast.store.images import summary

    store = _store(args)
    m = store.open(args.name)
    others = [o for o in store.list() if o.name != m.name]
    usage = store.usage([m, *others])[m.name]
    info = summary(m, usage)
    if args.json:
        print_json(info | {"table": m.table_dict})
        return 0
    print(f"image      {m.name}")
    print(f"created    {m.created} (fleetcast {m.tool_version})")
    print(
        f"disk       {_hb(m.disk_size)} ({m.disk_size} bytes), "
        f"sectors {m.logical_sector_size}/{m.physical_sector_size}"
    )
    print(f"table      {m.table.label} {m.table.id}")
    print(f"os         {m.os_hint or '-'}")
    print(
        f"used       {_hb(m.used_bytes)}, data {_hb(m.data_bytes)}, stored {_hb(usage.stored_bytes)} "
        f"(referenced), {_hb(usage.unique_bytes)} unique to this image (freed by rm + gc)"
    )
    print(f"id         {m.image_id}")
    print()
    rows = [
        [a.label, str(a.start), _hb(a.size), a.fstype, _hb(a.used), _hb(a.data_bytes), str(a.entry_count)]
        for a in m.areas
    ]
    print_table(["AREA", "START", "SIZE", "FS", "USED", "DATA", "CHUNKS"], rows)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from fleetcast.errors import IntegrityError

    report = _store(args).verify(args.name, expected_id=args.image_id)
    if args.json:
        print_json(report.to_dict())
    elif report.ok:
        print(f"image {args.name!r} is intact: {report.chunks} packs, {_hb(report.bytes)} verified")
    else:
        for problem in report.problems:  # each once; the error below only counts them
            print(f"problem: {problem}")
    if not report.ok:
        raise IntegrityError(
            f"image {args.name!r} failed verification: {len(report.problems)} of {report.chunks} packs "
            "damaged or missing",
            hint="run 'fleetcast store check'; re-capture the image",
        )
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    import getpass

    from fleetcast.server import inuse

    store = _store(args)
    cancelled: list[int] = []
    db = inuse.server_database(
        data=getattr(args, "data", None),
        config_file=getattr(args, "config", None),
        store=getattr(args, "store", None),
        store_root=store.root,
    )
    if db is not None:  # a server's store: refused while a deployment reads the image (--force cancels)
        try:
            cancelled = inuse.guard_remove(
                db, store.root, args.name, force=args.force, actor=f"cli:{getpass.getuser()}"
            )
        finally:
            db.close()
    store.remove(args.name)
    if args.json:
        print_json({"removed": args.name, "cancelled_deployments": cancelled})
    else:
        for dep in cancelled:
            print(f"cancelled deployment {dep}, which used {args.name!r}")
        print(f"removed image {args.name!r}; run 'fleetcast store gc' to free its unshared chunks")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from fleetcast.progress import ProgressBar
    from fleetcast.store.exchange import export_image

    with ProgressBar(f"export {args.name}", enabled=not args.json) as bar:
        fmt = export_image(_store(args), args.name, args.file, progress=bar)
    if args.json:
        print_json({"image": args.name, "file": str(args.file), "format": fmt})
    else:
        print(f"exported {args.name!r} to {args.file} ({fmt})")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from fleetcast.progress import ProgressBar
    from fleetcast.store.capture import CaptureStats
    from fleetcast.store.exchange import import_image
    from fleetcast.store.images import summary

    stats = CaptureStats()
    with ProgressBar(f"import {args.name}", enabled=not args.json) as bar:
        m = import_image(_store(args), args.file, args.name, progress=bar, stats=stats)
    if args.json:
        print_json(
            summary(m)
            | {"file": str(args.file), "new_chunks": stats.new_chunks, "new_bytes": stats.new_bytes}
        )
    else:
        print(
            f"imported {args.file} as {m.name!r}: {_hb(m.used_bytes)} used, "
            f"{_hb(stats.new_bytes)} new in the store"
        )
    return 0
