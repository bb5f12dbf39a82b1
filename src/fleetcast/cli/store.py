"""``fleetcast store``: check (leftovers, damaged chunks) and gc (free what no image references)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fleetcast.cli.common import add_json, add_store, print_json
from fleetcast.errors import UsageError

if TYPE_CHECKING:
    from fleetcast.store.images import ImageStore


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], parent: argparse.ArgumentParser
) -> None:
    group = sub.add_parser("store", parents=[parent], help="image store housekeeping")
    cmds = group.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = cmds.add_parser("check", parents=[parent], help="report leftovers, damaged and missing chunks")
    p.add_argument(
        "--repair", action="store_true", help="rebuild the dedupe index from the images' own indexes"
    )
    add_store(p)
    add_json(p)
    p.set_defaults(func=cmd_check)

    p = cmds.add_parser("upgrade", parents=[parent], help="rewrite format-1 images as format 2 (atomic)")
    p.add_argument("names", nargs="*", metavar="NAME", help="only these images (default: all)")
    add_store(p)
    add_json(p)
    p.set_defaults(func=cmd_upgrade)

    p = cmds.add_parser("gc", parents=[parent], help="remove unreferenced chunks and leftovers")
    p.add_argument(
        "--repack",
        action="store_true",
        help="first rewrite packs whose live data is below --threshold of their content (changes the ids "
        "of the images re-pointed: plan their deployments again)",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=0.8,
        metavar="F",
        help="live fraction below which --repack rewrites",
    )
    add_store(p)
    add_json(p)
    p.set_defaults(func=cmd_gc)


def cmd_upgrade(args: argparse.Namespace) -> int:
    from fleetcast.errors import StoreError
    from fleetcast.store.upgrade import upgrade_store

    store = _store_root(args)
    report = upgrade_store(store, names=args.names or None)
    if args.json:
        print_json(report.to_dict() | {"store": str(store.root)})
    else:
        for u in report.upgraded:
            print(
                f"upgraded {u['name']!r} to format 2: manifest {u['old_manifest_bytes']} -> "
                f"{u['new_manifest_bytes']} bytes + index {u['index_bytes']} bytes; id {u['new_id']}"
            )
        print(f"{len(report.upgraded)} upgraded, {len(report.current)} already format 2")
    if report.failed:
        raise StoreError(
            f"{len(report.failed)} image(s) could not be upgraded: {report.failed[0]}",
            hint="'fleetcast store check' says what is damaged; the others were upgraded",
        )
    return 0


def _store_root(args: argparse.Namespace) -> ImageStore:
    from fleetcast.config import store_from_args
    from fleetcast.store.images import ImageStore

    return ImageStore(store_from_args(args))


def cmd_check(args: argparse.Namespace) -> int:
    from fleetcast.errors import IntegrityError
    from fleetcast.progress import human_bytes

    store = _store_root(args)
    report = store.check(repair=args.repair)
    if args.json:
        print_json(report.to_dict() | {"store": str(store.root)})
    else:
        print(f"store {store.root}: {report.images} images, {report.chunks} packs")
        for title, items in (
            ("damaged manifest", report.damaged_manifests),
            ("damaged chunk", report.damaged_chunks),
            ("missing chunk", report.missing_chunks),
            ("leftover", report.leftovers),
            ("running capture", report.running_captures),
        ):
            for item in items:
                print(f"{title}: {item}")
        dx = report.dedupe_index
        behind = dx.get("images_not_indexed")
        print(
            f"dedupe index: {dx.get('state')}"
            + (f", {dx['images']} images, {dx['entries']} entries" if "entries" in dx else "")
            + (f" (not yet indexed: {', '.join(behind)})" if behind else "")
        )
        for pack in report.unreferenced_packs:
            print(f"unreferenced pack: {pack['id']} ({pack['bytes']} bytes)")
        print(
            f"unreferenced: {report.unreferenced_chunks} packs, {human_bytes(report.unreferenced_bytes)} "
            f"({report.unreferenced_bytes} bytes) no image uses ('fleetcast store gc' frees them)"
        )
        print("ok" if report.ok else "PROBLEMS FOUND")
    if not report.ok:
        problems = (
            len(report.damaged_manifests)
            + len(report.damaged_chunks)
            + len(report.missing_chunks)
            + len(report.leftovers)
        )
        raise IntegrityError(
            f"store {store.root} has {problems} problem(s)",
            hint="'fleetcast store gc' removes leftovers; damaged images must be re-captured",
        )
    return 0


def _server_leases(args: argparse.Namespace, store: ImageStore) -> tuple[Callable[[], set[str]], Any] | None:
    """When this store is a server's (``--data D``: ``D/store`` beside ``D/fleetcast.db``, or the configured
    database), gc keeps the packs the server protects: leased to captures in progress, or of images a
    queued or running deployment uses (``server.inuse.protected_packs``)."""
    from fleetcast.server import inuse

    db = inuse.server_database(
        data=getattr(args, "data", None),
        config_file=getattr(args, "config", None),
        store=getattr(args, "store", None),
        store_root=store.root,
    )
    if db is None:
        return None
    return (lambda: inuse.protected_packs(db, store)), db


def cmd_gc(args: argparse.Namespace) -> int:
    from fleetcast.progress import human_bytes

    store = _store_root(args)
    leases = _server_leases(args, store)
    repacked = None
    try:
        if args.repack:
            from fleetcast.store.repack import repack_store

            if not 0 < args.threshold <= 1:
                raise UsageError(f"--threshold must be in (0, 1]; found {args.threshold}")
            repacked = repack_store(store, threshold=args.threshold, protect=leases[0] if leases else None)
        report = store.gc(protect=leases[0] if leases else None)
    finally:
        if leases:
            leases[1].close()
    if args.json:
        extra = {"repack": repacked.to_dict()} if repacked is not None else {}
        print_json(report.to_dict() | {"store": str(store.root)} | extra)
    else:
        if repacked is not None:
            print(
                f"repacked {repacked.candidates} of {repacked.packs_before} packs into {repacked.new_packs} "
                f"(read {human_bytes(repacked.read_bytes)}, wrote {human_bytes(repacked.written_bytes)}, "
                f"freed {human_bytes(repacked.freed_bytes)}); images re-pointed: "
                f"{', '.join(repacked.images_rewritten) or 'none'}"
            )
        print(
            f"freed {human_bytes(report.freed_bytes)} ({report.freed_bytes} bytes): "
            f"{report.removed_chunks} unreferenced packs ({report.freed_chunk_bytes} bytes), "
            f"{report.removed_leftovers} leftovers ({report.freed_leftover_bytes} bytes)"
            + (
                f"; kept {report.protected_packs} packs leased to captures in progress"
                if report.protected_packs
                else ""
            )
        )
    return 0
