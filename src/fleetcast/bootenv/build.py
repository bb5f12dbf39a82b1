"""Build (or find in the cache) a boot environment: mmdebstrap, prune, install fleetcast, pack.

Layout of one cache entry, published by renaming a finished temporary folder::

    /var/cache/fleetcast/bootenv/<key>/vmlinuz
    /var/cache/fleetcast/bootenv/<key>/initrd.img     (cpio newc, zstd)
    /var/cache/fleetcast/bootenv/<key>/manifest.json  (inputs, packages, sizes, seconds)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fleetcast.bootenv import pydeps, rootfs
from fleetcast.bootenv.options import BootEnvOptions, base_key, cache_key
from fleetcast.errors import CommandError, NotFoundError, UsageError
from fleetcast.run import run, which

logger = logging.getLogger(__name__)

DEFAULT_CACHE = Path("/var/cache/fleetcast/bootenv")
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
        if entry.exists():  # a stale or half-written entry: replace it
            shutil.rmtree(entry)
        os.rename(work, entry)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    found = _load(entry, key)
    if found is None:
        raise CommandError(f"boot environment {key}: the build finished but {entry} is incomplete", argv=[])
    return found


def _base_tree(options: BootEnvOptions, cache: Path, progress: StepFn) -> tuple[Path, float]:
    """The pruned Debian tree for ``options``' packages: kept in ``cache/base-<key>/`` (seconds spent)."""
    bkey = base_key(options)
    base = cache / f"base-{bkey}"
    if (base / "root" / "init.done").is_file():
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
