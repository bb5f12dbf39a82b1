"""What a boot environment is built from, and the cache key of those inputs."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import fleetcast

# Bump when the build recipe itself changes in a way the inputs below do not show.
# 2: kernel modules compressed one by one (MODULE_ZSTD_LEVEL).
RECIPE_VERSION = 2
SUITE = "bookworm"

BASE_PACKAGES: tuple[str, ...] = (
    "linux-image-amd64",
    "python3",
    "python3-hivex",
    "ntfs-3g",
    "partclone",
    "udpcast",
    "zstd",
    "util-linux",
    "fdisk",
    "parted",
    "e2fsprogs",
    "dosfstools",
    "mtools",
    "kmod",
    "iproute2",
    "busybox",
    "ca-certificates",
    "xfsprogs",
    "btrfs-progs",
)

# Python distributions the agent imports, copied from the running interpreter with their requirements.
AGENT_DISTRIBUTIONS: tuple[str, ...] = ("zstandard", "blake3", "httpx", "pydantic", "regipy")

# Module trees dropped from the initrd (no machine being imaged needs them to reach its disk and NIC).
DROPPED_MODULES: tuple[str, ...] = (
    "kernel/drivers/gpu",
    "kernel/sound",
    "kernel/drivers/media",
    "kernel/drivers/net/wireless",
    "kernel/net/wireless",
    "kernel/net/mac80211",
    "kernel/drivers/bluetooth",
    "kernel/net/bluetooth",
    "kernel/drivers/infiniband",
    "kernel/drivers/staging",
    "kernel/drivers/iio",
    "kernel/drivers/input/joystick",
    "kernel/drivers/input/touchscreen",
    "kernel/drivers/isdn",
    # cluster and network filesystems, packet filtering, data acquisition, SCSI targets, virtualization
    # hosts, exotic networks: an imaging agent writes local disks through its NIC and needs none
    "kernel/fs/ocfs2",
    "kernel/fs/gfs2",
    "kernel/fs/ceph",
    "kernel/fs/nfs",
    "kernel/fs/nfsd",
    "kernel/fs/smb",
    "kernel/fs/afs",
    "kernel/fs/orangefs",
    "kernel/fs/dlm",
    "kernel/net/netfilter",
    "kernel/net/ipv4/netfilter",
    "kernel/net/ipv6/netfilter",
    "kernel/net/bridge/netfilter",
    "kernel/net/sunrpc",
    "kernel/net/ceph",
    "kernel/net/rxrpc",
    "kernel/net/nfc",
    "kernel/drivers/nfc",
    "kernel/drivers/comedi",
    "kernel/drivers/target",
    "kernel/drivers/nvme/target",
    "kernel/arch/x86/kvm",
    "kernel/drivers/vhost",
    "kernel/drivers/vfio",
    "kernel/drivers/net/can",
    "kernel/drivers/net/wwan",
    "kernel/drivers/net/ieee802154",
    "kernel/drivers/net/hamradio",
    "kernel/drivers/net/arcnet",
    "kernel/drivers/net/fddi",
    "kernel/drivers/net/wan",
    "kernel/drivers/atm",
)

# Kernel modules are stored as .ko.zst (kmod decompresses the few it loads): the kernel unpacks the
# initramfs into memory at every boot, and 179 MB of plain .ko were half of what it unpacked (14.6 s of
# a TCG boot; 6.9 s with the modules compressed, for an initrd 1.6 % larger).
MODULE_ZSTD_LEVEL = 9

# Files of the installed packages the initrd never uses (globs under the root): perl's libraries
# (linux-image-amd64 pulls perl in; /usr/bin/perl itself stays), ICU (only xfs_scrub links it; the
# agent never scrubs), udev's hardware database (no udev runs in the boot environment).
STRIPPED_FILES: tuple[str, ...] = (
    "usr/share/perl",
    "usr/lib/x86_64-linux-gnu/perl",
    "usr/lib/x86_64-linux-gnu/libperl.so*",
    "usr/bin/perl5.*-x86_64-linux-gnu",
    "usr/lib/x86_64-linux-gnu/libicu*",
    "usr/sbin/xfs_scrub*",
    "usr/lib/udev/hwdb.bin",
    "usr/lib/udev/hwdb.d",
)

DPKG_EXCLUDES: tuple[str, ...] = (
    "/usr/share/man/*",
    "/usr/share/doc/*",
    "/usr/share/info/*",
    "/usr/share/locale/*",
    "/usr/share/lintian/*",
    "/usr/share/i18n/*",
    "/usr/share/zoneinfo/*",
)


@dataclass(frozen=True)
class BootEnvOptions:
    """Inputs of a build. ``add_packages``/``add_firmware`` are Debian package names; ``add_modules`` a
    folder of extra kernel modules (``*.ko``, copied to ``/lib/modules/VERSION/updates/``)."""

    add_packages: tuple[str, ...] = ()
    add_firmware: tuple[str, ...] = ()
    add_modules: Path | None = None
    suite: str = SUITE
    compression_level: int = 3

    def packages(self) -> tuple[str, ...]:
        """Every package installed, base first, each once."""
        seen: dict[str, None] = {}
        for name in (*BASE_PACKAGES, *self.add_packages, *self.add_firmware):
            seen.setdefault(name, None)
        return tuple(seen)


def source_tree() -> Path:
    """The fleetcast package folder being installed into the boot environment."""
    return Path(fleetcast.__file__).resolve().parent


def _hash_tree(h: hashlib._Hash, root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if "__pycache__" in path.parts or not path.is_file() or path.suffix == ".pyc":
            continue
        h.update(str(path.relative_to(root)).encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())


def base_key(options: BootEnvOptions) -> str:
    """Hash of what the Debian tree is made from (packages, module pruning, extra modules): the tree is
    kept under this key so a change of fleetcast's source only re-installs fleetcast and re-packs."""
    h = hashlib.sha256()
    inputs = {
        "recipe": RECIPE_VERSION,
        "suite": options.suite,
        "packages": list(options.packages()),
        "dropped": list(DROPPED_MODULES),
        "excludes": list(DPKG_EXCLUDES),
        "modules": options.add_modules is not None,
    }
    h.update(json.dumps(inputs, sort_keys=True).encode())
    if options.add_modules is not None:
        _hash_tree(h, options.add_modules)
    return h.hexdigest()[:16]


def cache_key(options: BootEnvOptions) -> str:
    """Hash of everything that goes into the build: the base tree's inputs, fleetcast's source, the Python
    distributions and the packing. The same inputs give the same key, so ``ensure`` finds the first build."""
    h = hashlib.sha256()
    inputs = {
        "base": base_key(options),
        "python": list(AGENT_DISTRIBUTIONS),
        "level": options.compression_level,
    }
    h.update(json.dumps(inputs, sort_keys=True).encode())
    _hash_tree(h, source_tree())
    return h.hexdigest()[:16]
