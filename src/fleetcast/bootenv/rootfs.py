"""The steps on the boot environment's root tree: mmdebstrap, module pruning, /init, packing."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from fleetcast.bootenv.options import (
    DPKG_EXCLUDES,
    DROPPED_MODULES,
    MODULE_ZSTD_LEVEL,
    STRIPPED_FILES,
    BootEnvOptions,
)
from fleetcast.errors import CommandError
from fleetcast.run import run, run_text

logger = logging.getLogger(__name__)

# PID 1 of the boot environment: mounts, modules (there is no udev), then the Python init. PID 1 must
# never exit, so when the Python side returns (post action "none", or an error) it stays.
INIT_SH = """#!/bin/sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm /run /tmp /var/lib/fleetcast-agent
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
echo "fleetcast boot environment @KEY@ (kernel $(uname -r))"
FC_UP_INIT=$(cut -d' ' -f1 /proc/uptime)
# One modprobe for every driver a disk or NIC needs (a process each costs ~0.1 s under emulation): the
# PCI devices' own aliases (NICs, disk and USB controllers), the virtio/SCSI/USB-bus drivers behind them.
modprobe -a -q virtio_pci virtio_net virtio_blk virtio_scsi sd_mod sr_mod usb_storage uas \
    $(cat /sys/bus/pci/devices/*/modalias 2>/dev/null) 2>/dev/null
# Filesystems are needed only once a task mounts one (the kernel asks modprobe itself then, too):
# loading them (btrfs benchmarks its RAID code at load) does not hold the agent back.
(modprobe -a -q vfat ext4 xfs btrfs loop 2>/dev/null &)
FC_UP_MODULES=$(cut -d' ' -f1 /proc/uptime)
export FC_UP_INIT FC_UP_MODULES
python3 -m fleetcast.bootenv.init
rc=$?
echo "fleetcast: init finished (status $rc); staying up (shell on the console: fleetcast.shell=1)"
if grep -qw fleetcast.shell=1 /proc/cmdline; then exec /bin/sh </dev/console >/dev/console 2>&1; fi
while true; do sleep 3600; done
"""

# udhcpc calls this with $interface, $ip, $mask (prefix length), $router, $dns in its environment.
UDHCPC_SCRIPT = """#!/bin/sh
case "$1" in
deconfig) ip -4 addr flush dev "$interface"; ip link set "$interface" up ;;
bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    for r in $router; do ip route replace default via "$r" dev "$interface"; break; done
    : > /etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done
    echo "$ip/${mask:-24}" > /run/fleetcast-address
    ;;
esac
exit 0
"""

BUSYBOX_APPLETS = ("udhcpc", "reboot", "poweroff", "halt")


def debootstrap(root: Path, options: BootEnvOptions) -> None:
    argv: list[str] = ["mmdebstrap", "--variant=minbase", "--mode=root", "--quiet"]
    argv.append("--include=" + ",".join(options.packages()))
    argv += [f"--dpkgopt=path-exclude={p}" for p in DPKG_EXCLUDES]
    argv += ["--dpkgopt=path-include=/usr/share/doc/*/copyright", "--aptopt=Apt::Install-Recommends false"]
    argv += [options.suite, str(root)]
    run(argv, timeout=1800)


def kernel_version(root: Path) -> str:
    versions = sorted(p.name for p in (root / "lib" / "modules").iterdir() if p.is_dir())
    if len(versions) != 1:
        raise CommandError(
            f"boot environment: expected one kernel in {root}/lib/modules, found {versions}", argv=[]
        )
    return versions[0]


def prune(root: Path, version: str, options: BootEnvOptions) -> None:
    moddir = root / "lib" / "modules" / version
    for rel in DROPPED_MODULES:
        shutil.rmtree(moddir / rel, ignore_errors=True)
    if options.add_modules is not None:
        dest = moddir / "updates" / "fleetcast"
        dest.mkdir(parents=True, exist_ok=True)
        for ko in sorted(options.add_modules.rglob("*.ko*")):
            shutil.copyfile(ko, dest / ko.name)
    compress_modules(moddir)
    run(["depmod", "-b", root, version])


def compress_modules(moddir: Path, *, batch: int = 256) -> int:
    """Every plain ``*.ko`` under ``moddir`` becomes ``*.ko.zst`` (zstd, :data:`MODULE_ZSTD_LEVEL`); the
    count. kmod (``+ZSTD``) loads them; depmod must run afterwards to index the new names."""
    plain = sorted(str(p) for p in moddir.rglob("*.ko") if p.is_file() and not p.is_symlink())
    for i in range(0, len(plain), batch):
        run(["zstd", "-q", "--rm", "-f", f"-{MODULE_ZSTD_LEVEL}", *plain[i : i + batch]], timeout=900)
    return len(plain)


def install_init(root: Path, key: str) -> None:
    init = root / "init"
    init.write_text(INIT_SH.replace("@KEY@", key))
    init.chmod(0o755)
    script = root / "etc" / "fleetcast" / "udhcpc.script"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(UDHCPC_SCRIPT)
    script.chmod(0o755)
    (root / "etc" / "fleetcast" / "bootenv-key").write_text(key + "\n")
    (root / "etc" / "hostname").write_text("fleetcast\n")
    sbin = root / "usr" / "local" / "sbin"
    sbin.mkdir(parents=True, exist_ok=True)
    for applet in BUSYBOX_APPLETS:
        link = sbin / applet
        if not link.exists():
            link.symlink_to("/bin/busybox")


def package_list(root: Path) -> list[str]:
    out = run_text(["chroot", root, "dpkg-query", "-W", "-f", "${Package}=${Version}\\n"])
    return sorted(line for line in out.splitlines() if line)


def strip_for_initrd(root: Path) -> None:
    """What an initrd never uses: the kernel image itself, apt's lists and caches, dpkg's backups, and
    :data:`STRIPPED_FILES`."""
    for pattern in STRIPPED_FILES:
        for path in root.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    for rel in ("boot", "var/cache/apt", "var/lib/apt/lists", "var/cache/debconf"):
        target = root / rel
        if target.is_dir():
            shutil.rmtree(target)
            target.mkdir()
    for old in (root / "var" / "lib" / "dpkg").glob("*-old"):
        old.unlink()


def tree_size(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                total += os.lstat(p).st_size
    return total


def pack(root: Path, out: Path, *, level: int) -> None:
    """``find | cpio -o -H newc | zstd``: the kernel unpacks it as its initramfs."""
    script = (
        'cd "$1" && find . -print0 | LC_ALL=C sort -z | cpio --null --quiet -o -H newc'
        ' | zstd -q -T0 -"$2" -o "$3"'
    )
    run(["sh", "-c", script, "pack", root, str(level), out], timeout=900)
