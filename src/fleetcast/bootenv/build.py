"""Build (or find in the cache) a boot environment: mmdebstrap, prune, install fleetcast, pack.

Layout of one cache entry, published by renaming a finished temporary folder::

    /var/cache/fleetcast/bootenv/<key>/vmlinuz
    /var/cache/fleetcast/bootenv/<key>/initrd.img     (cpio newc, zstd)
    /var/cache/fleetcast/bootenv/<key>/manifest.json  (inputs, packages, sizes, seconds)

Beside them ``base-<base key>/root`` (the pruned mmdebstrap tree the entries are made from), ``.build-*``
and ``.base-*`` (builds under way) and ``.lock`` (held around publishing and pruning). An entry's folder
mtime is its last use: after each build ``ensure`` prunes complete entries beyond the newest
:data:`KEEP_ENTRIES` (never the one it built, never one used in the last :data:`MIN_AGE_SECONDS`) and
the ``base-*`` trees no remaining entry refers to.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from fleetcast.bootenv import pydeps, rootfs
from fleetcast.bootenv.options import BootEnvOptions, base_key, cache_key
from fleetcast.errors import CommandError, NotFoundError, UsageError
from fleetcast.run import run, which

logger = logging.getLogger(__name__)

DEFAULT_CACHE = Path("/var/cache/fleetcast/bootenv")
KEEP_ENTRIES = 3
MIN_AGE_SECONDS = 60 * 60.0  # an entry (or base tree) used this recently may be in use: never pruned
LOCK_NAME = ".lock"
StepFn = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


@dataclass(frozen=True)
class BootEnv:
    """A built boot environment. ``key`` is the hash of its inputs (the cache folder's name)."""

    kernel: Path
    initrd: Path
    key: str
    manifest: dict[str, object]

    @property
    def root(self) -> Path:
        return self.kernel.parent

    def cmdline(
        self,
        server_url: str,
        enroll_token: str,
        *extra: str,
        boot_mac: str | None = None,
        tls_fingerprint: str | None = None,
        console: str = "ttyS0,115200",
    ) -> str:
        """The kernel command line the init reads: ``console=tty0 console=ttyS0,115200
        fleetcast.server=URL fleetcast.token=TOKEN [BOOTIF=01-aa-bb-cc-dd-ee-ff] [fleetcast.tls=HEX]``
        then ``extra`` (e.g. ``initrd=initrd.img`` for an EFI-stub boot, or iPXE's
        ``BOOTIF=01-${netX/mac:hexhyp}`` when ``boot_mac`` is not known in advance). The last
        ``console=`` is the one the agent's log and the status go to."""
        words = ["console=tty0", f"console={console}", f"fleetcast.server={server_url}"]
        words.append(f"fleetcast.token={enroll_token}")
        if boot_mac is not None:
            words.append("BOOTIF=01-" + boot_mac.lower().replace(":", "-"))
        if tls_fingerprint is not None:
            words.append(f"fleetcast.tls={tls_fingerprint}")
        words.extend(extra)
        words.append("quiet")
        return " ".join(words)


def _load(entry: Path, key: str) -> BootEnv | None:
    kernel, initrd, manifest = entry / "vmlinuz", entry / "initrd.img", entry / "manifest.json"
    if not (kernel.is_file() and initrd.is_file() and manifest.is_file()):
        return None
    try:
        data = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("key") != key:
        return None
    return BootEnv(kernel=kernel, initrd=initrd, key=key, manifest=data)


def check_packages(names: Sequence[str]) -> None:
    """Every name must be a package apt knows (before mmdebstrap starts): UsageError naming the missing."""
    missing = []
    for name in names:
        proc = run(["apt-cache", "show", "--no-all-versions", name], check=False)
        if proc.returncode != 0 or not proc.stdout.strip():
            missing.append(name)
    if missing:
        noun = "package" if len(missing) == 1 else "packages"
        raise UsageError(
            f"boot environment: Debian {noun} {', '.join(repr(m) for m in missing)} not found "
            "(apt-cache show knows no such package)",
            hint="check the name with 'apt-cache search NAME' (and run 'apt-get update'); nothing was built",
        )


def ensure(
    options: BootEnvOptions,
    cache_dir: Path | None = None,
    progress: StepFn = _quiet,
) -> BootEnv:
    """The boot environment for ``options``: from the cache when built before, else built now (~2 min).

    ``progress`` gets one line per step. Raises UsageError for a package that does not exist or a
    missing ``add_modules`` folder (nothing is left behind), CommandError when a build step fails."""
    cache = cache_dir if cache_dir is not None else DEFAULT_CACHE
    if options.add_modules is not None and not options.add_modules.is_dir():
        raise NotFoundError(f"boot environment: --add-modules folder {options.add_modules} does not exist")
    key = cache_key(options)
    entry = cache / key
    found = _load(entry, key)
    if found is not None:
        _touch(entry)
        progress(f"boot environment {key}: cached in {entry}")
        return found
    for tool, package in (("mmdebstrap", "mmdebstrap"), ("cpio", "cpio"), ("zstd", "zstd")):
        which(tool, package=package)
    check_packages(options.packages())
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=cache))
    work.chmod(0o755)
    try:
        manifest = _build(options, key, work, progress)
        (work / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        shutil.rmtree(work / "root")
        with _locked(cache):
            found = _load(entry, key)
            if found is not None:  # a concurrent build published it first (it may be in use): take it
                progress(f"boot environment {key}: built meanwhile by another process, using {entry}")
                shutil.rmtree(work, ignore_errors=True)
            else:
                if entry.exists():  # a stale or half-written entry: replace it
                    _discard(entry)
                os.rename(work, entry)
            _touch(entry)
            removed = _prune_locked(cache, KEEP_ENTRIES, protect={entry}, min_age=MIN_AGE_SECONDS)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    for path in removed:
        progress(f"boot environment: removed the old cache entry {path}")
    found = _load(entry, key)
    if found is None:
        raise CommandError(f"boot environment {key}: the build finished but {entry} is incomplete", argv=[])
    return found


@contextmanager
def _locked(cache: Path) -> Iterator[None]:
    """An exclusive flock on ``cache/.lock`` (publishing and pruning; builds run outside it)."""
    fd = os.open(cache / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _touch(path: Path) -> None:
    """Mark ``path`` used now (its mtime); a cache someone else owns stays as it is."""
    with suppress(OSError):
        os.utime(path)


def _discard(path: Path) -> None:
    """Take ``path`` out of the cache at once (a rename to a dot name), then delete it."""
    trash = Path(tempfile.mkdtemp(prefix=f".trash-{path.name}-", dir=path.parent))
    os.rename(path, trash / path.name)
    shutil.rmtree(trash, ignore_errors=True)


def prune(
    cache_dir: Path | None = None,
    keep: int = KEEP_ENTRIES,
    *,
    min_age: float = MIN_AGE_SECONDS,
    protect: Collection[Path] = (),
) -> list[Path]:
    """Remove complete cache entries beyond the ``keep`` most recently used ones (none used in the last
    ``min_age`` seconds, none in ``protect``), then the ``base-*`` trees no remaining entry refers to
    (none while a build is under way). Builds under way (dot names) are never touched. Returns the
    removed folders."""
    cache = cache_dir if cache_dir is not None else DEFAULT_CACHE
    if keep < 0:
        raise UsageError(f"--keep {keep}: give 0 or more")
    if not cache.is_dir():
        return []
    with _locked(cache):
        return _prune_locked(cache, keep, protect=protect, min_age=min_age)


def _prune_locked(cache: Path, keep: int, *, protect: Collection[Path], min_age: float) -> list[Path]:
    now = time.time()
    protected = {p.resolve() for p in protect}
    entries: list[tuple[float, Path]] = []
    bases: list[Path] = []
    busy = False
    for path in cache.iterdir():
        if path.name.startswith((".build-", ".base-")):
            busy = True
        if path.name.startswith(".") or not path.is_dir() or path.is_symlink():
            continue
        if path.name.startswith("base-"):
            bases.append(path)
        elif (path / "manifest.json").is_file():  # complete (a half-written one is replaced by ensure)
            entries.append((path.stat().st_mtime, path))
    entries.sort(reverse=True)
    removed: list[Path] = []
    referenced: set[str] = set()
    for rank, (mtime, path) in enumerate(entries):
        if rank < keep or path.resolve() in protected or now - mtime < min_age:
            referenced.add(_base_of(path))
            continue
        _discard(path)
        removed.append(path)
    if not busy and "?" not in referenced:
        for base in bases:
            if base.name.removeprefix("base-") in referenced or now - base.stat().st_mtime < min_age:
                continue
            _discard(base)
            removed.append(base)
    if removed:
        logger.info("boot environment cache %s: removed %s", cache, ", ".join(p.name for p in removed))
    return removed


def _base_of(entry: Path) -> str:
    try:
        data = json.loads((entry / "manifest.json").read_text())
    except (OSError, ValueError):
        return "?"  # unreadable: keep every base tree rather than guess
    value = data.get("base_key") if isinstance(data, dict) else None
    return value if isinstance(value, str) else "?"


def _base_tree(options: BootEnvOptions, cache: Path, progress: StepFn) -> tuple[Path, float]:
    """The pruned Debian tree for ``options``' packages: kept in ``cache/base-<key>/`` (seconds spent)."""
    bkey = base_key(options)
    base = cache / f"base-{bkey}"
    if (base / "root" / "init.done").is_file():
        _touch(base)  # in use: prune keeps it
        return base / "root", 0.0
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix=f".base-{bkey}-", dir=cache))
    try:
        root = tmp / "root"
        progress(f"boot environment: mmdebstrap {options.suite} ({len(options.packages())} packages)")
        rootfs.debootstrap(root, options)
        version = rootfs.kernel_version(root)
        progress(f"boot environment: pruning kernel modules of {version}")
        rootfs.prune(root, version, options)
        (root / "init.done").write_text(bkey + "\n")
        if base.exists():
            shutil.rmtree(base)
        os.rename(tmp, base)
        _touch(base)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return base / "root", time.monotonic() - started


def _build(options: BootEnvOptions, key: str, work: Path, progress: StepFn) -> dict[str, object]:
    started = time.monotonic()
    base, t_strap = _base_tree(options, work.parent, progress)
    root = work / "root"
    run(["cp", "-a", base, root])
    (root / "init.done").unlink()
    version = rootfs.kernel_version(root)
    shutil.copyfile(root / "boot" / f"vmlinuz-{version}", work / "vmlinuz")
    progress(f"boot environment {key}: installing fleetcast and its Python dependencies")
    installed = pydeps.install(root)
    pydeps.strip_debug(root)
    pydeps.compile_pyc(root)
    rootfs.install_init(root, key)
    packages = rootfs.package_list(root)
    rootfs.strip_for_initrd(root)
    tree_bytes = rootfs.tree_size(root)
    progress(f"boot environment {key}: packing the initrd ({tree_bytes >> 20} MiB tree)")
    t_pack0 = time.monotonic()
    rootfs.pack(root, work / "initrd.img", level=options.compression_level)
    t_pack = time.monotonic() - t_pack0
    total = time.monotonic() - started
    size = (work / "initrd.img").stat().st_size
    progress(f"boot environment {key}: initrd {size / 1e6:.1f} MB, built in {total:.0f} s")
    return {
        "key": key,
        "suite": options.suite,
        "kernel_version": version,
        "requested_packages": list(options.packages()),
        "add_modules": str(options.add_modules) if options.add_modules else None,
        "packages": packages,
        "python": installed,
        "tree_bytes": tree_bytes,
        "initrd_bytes": size,
        "kernel_bytes": (work / "vmlinuz").stat().st_size,
        "base_key": base_key(options),
        "seconds_mmdebstrap": round(t_strap, 1),
        "seconds_pack": round(t_pack, 1),
        "seconds_total": round(total, 1),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
