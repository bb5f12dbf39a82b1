"""The lab's golden Debian disk: mmdebstrap onto a 2 GiB GPT disk that boots under BIOS, UEFI and
UEFI Secure Boot, captured into the store as ``lab-debian``.

Layout: p1 1 MiB BIOS boot (GRUB core.img, written by hand: grub-install refuses loop devices here),
p2 100 MiB ESP (Debian's signed shim as ``EFI/BOOT/BOOTX64.EFI``, signed GRUB ``grubx64.efi`` and a stub
``grub.cfg`` that finds the root by label), p3 ext4 root labelled ``lab-root`` (fstab and ``root=`` by
label, so a deployed copy with new UUIDs still boots). A first-boot unit prints one line on the serial
console, ``fleetcast-lab-report {"mac", "hostname", "ip", "machine_id", "secure_boot"}``, and POSTs the
same JSON to ``{server}/api/lab/report`` when ``/etc/fleetcast-lab/server`` holds a server URL: the
image carries the virtual lab's fixed server URL (:data:`LAB_SERVER_URL`; the lab runs in its own network
namespace, so a fixed address never meets another network).

The disk is cached in ``/var/cache/fleetcast/golden/<key>/disk.img`` keyed by the hash of its inputs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import struct
import tempfile
from pathlib import Path

from fleetcast.errors import CommandError
from fleetcast.lab.sample_disk import BIOS_BOOT_TYPE, ESP_TYPE, LINUX_TYPE
from fleetcast.run import run, run_text

logger = logging.getLogger(__name__)

NAME = "lab-debian"
ROOT_LABEL = "lab-root"
DEFAULT_CACHE = Path("/var/cache/fleetcast/golden")
RECIPE_VERSION = 2
LAB_SUBNET = "10.78.0"  # /24 on the virtual lab's bridge (fleetcast.lab.vlab)
LAB_SERVER_URL = f"http://{LAB_SUBNET}.1:8080"
MiB = 1 << 20
DISK_SIZE = 2 << 30
BIOS_START, BIOS_SIZE = 1 * MiB, 1 * MiB
ESP_START, ESP_SIZE = 2 * MiB, 100 * MiB
ROOT_START = ESP_START + ESP_SIZE
GPT_TAIL = 1 * MiB  # the backup GPT and alignment

PACKAGES = (
    "linux-image-amd64",
    "systemd-sysv",
    "udev",
    "e2fsprogs",
    "passwd",
    "dbus",
    "iproute2",
    "netbase",
    "busybox",
    "initramfs-tools",
)
EXCLUDES = ("/usr/share/man/*", "/usr/share/doc/*", "/usr/share/info/*", "/usr/share/locale/*")
SHIM = Path("/usr/lib/shim/shimx64.efi.signed")
GRUB_EFI = Path("/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed")
BOOT_IMG = Path("/usr/lib/grub/i386-pc/boot.img")
BIOS_MODULES = "biosdisk part_gpt ext2 normal configfile linux search search_label serial terminal echo test"

GRUB_CFG = """serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=1
menuentry "lab-debian" {
    search --no-floppy --label lab-root --set=root
    linux /boot/vmlinuz root=LABEL=lab-root ro console=tty0 console=ttyS0,115200
    initrd /boot/initrd.img
}
"""
# Signed GRUB from EFI/BOOT reads EFI/BOOT/grub.cfg: find the root by label and read the real one.
STUB_CFG = """search --no-floppy --label lab-root --set=root
set prefix=($root)/boot/grub
configfile $prefix/grub.cfg
"""

REPORT_SH = r"""#!/bin/sh
# fleetcast lab: report this machine once, on the serial console and to the server if one is set.
ip=""; i=0
while [ -z "$ip" ] && [ $i -lt 60 ]; do
    ip=$(ip -4 -o addr show scope global | awk '{print $4}' | cut -d/ -f1 | head -n1); i=$((i+1)); sleep 1
done
dev=$(ip -4 -o addr show scope global | awk '{print $2}' | head -n1)
mac=$(cat /sys/class/net/${dev:-none}/address 2>/dev/null)
sb=false
f=/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c
[ -r $f ] && [ "$(od -An -tu1 -j4 -N1 $f | tr -d ' ')" = 1 ] && sb=true
json=$(printf '{"mac": "%s", "hostname": "%s", "ip": "%s", "machine_id": "%s", "secure_boot": %s}' \
    "$mac" "$(hostname)" "$ip" "$(cat /etc/machine-id)" "$sb")
echo "fleetcast-lab-report $json" > /dev/ttyS0
echo "fleetcast-lab-report $json" > /dev/console
if [ -s /etc/fleetcast-lab/server ]; then
    busybox wget -q -O /dev/null --header 'Content-Type: application/json' --post-data "$json" \
        "$(cat /etc/fleetcast-lab/server)/api/lab/report" \
        || echo "fleetcast-lab-report: POST failed" > /dev/ttyS0
fi
mkdir -p /var/lib/fleetcast-lab && touch /var/lib/fleetcast-lab/reported
"""
REPORT_UNIT = """[Unit]
Description=fleetcast lab: report hostname, IP, machine-id and Secure Boot state
After=systemd-networkd.service
ConditionPathExists=!/var/lib/fleetcast-lab/reported

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/fleetcast-lab-report

[Install]
WantedBy=multi-user.target
"""
NETWORK = "[Match]\nName=en* eth*\n\n[Network]\nDHCP=ipv4\n"


def golden_key() -> str:
    h = hashlib.sha256()
    inputs = {"recipe": RECIPE_VERSION, "packages": PACKAGES, "excludes": EXCLUDES, "size": DISK_SIZE}
    inputs["server"] = LAB_SERVER_URL
    h.update(json.dumps(inputs, sort_keys=True).encode())
    for text in (GRUB_CFG, STUB_CFG, REPORT_SH, REPORT_UNIT, NETWORK, BIOS_MODULES):
        h.update(text.encode())
    for f in (SHIM, GRUB_EFI, BOOT_IMG):
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()[:16]


def ensure_golden_disk(cache_dir: Path | None = None) -> Path:
    """The golden disk image file, built when missing (~2 min)."""
    cache = cache_dir if cache_dir is not None else DEFAULT_CACHE
    key = golden_key()
    disk = cache / key / "disk.img"
    if disk.is_file():
        return disk
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=cache))
    try:
        build_disk(work / "disk.img", work)
        shutil.rmtree(work / "root")
        work.chmod(0o755)
        if (cache / key).exists():
            shutil.rmtree(cache / key)
        os.rename(work, cache / key)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return disk


def ensure_golden(store: Path, cache_dir: Path | None = None) -> str:
    """Build (cached) and capture the golden disk into the store at ``store``; the image name."""
    from fleetcast.store.capture import capture
    from fleetcast.store.images import ImageStore

    images = ImageStore(store)
    if NAME in images.names():
        return NAME
    capture(ensure_golden_disk(cache_dir), NAME, images)
    return NAME


def _root(root: Path) -> None:
    argv = ["mmdebstrap", "--variant=minbase", "--mode=root", "--quiet", "--include=" + ",".join(PACKAGES)]
    argv += [f"--dpkgopt=path-exclude={p}" for p in EXCLUDES]
    argv += ["bookworm", str(root)]
    run(argv, timeout=1800)
    (root / "etc" / "hostname").write_text(f"{NAME}\n")
    (root / "etc" / "hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 {NAME}\n")
    (root / "etc" / "fstab").write_text(f"LABEL={ROOT_LABEL} / ext4 errors=remount-ro 0 1\n")
    (root / "etc" / "machine-id").write_text("")
    run(["chroot", root, "passwd", "-d", "root"])
    net = root / "etc" / "systemd" / "network" / "20-lab.network"
    net.write_text(NETWORK)
    sbin = root / "usr" / "local" / "sbin" / "fleetcast-lab-report"
    sbin.write_text(REPORT_SH)
    sbin.chmod(0o755)
    (root / "etc" / "fleetcast-lab").mkdir(parents=True, exist_ok=True)
    (root / "etc" / "fleetcast-lab" / "server").write_text(LAB_SERVER_URL + "\n")
    (root / "etc" / "systemd" / "system" / "fleetcast-lab-report.service").write_text(REPORT_UNIT)
    wants = root / "etc" / "systemd" / "system" / "multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / "fleetcast-lab-report.service").symlink_to("/etc/systemd/system/fleetcast-lab-report.service")
    (wants / "systemd-networkd.service").symlink_to("/lib/systemd/system/systemd-networkd.service")
    version = sorted(p.name for p in (root / "lib" / "modules").iterdir())[-1]
    boot = root / "boot"
    for name, real in (("vmlinuz", f"vmlinuz-{version}"), ("initrd.img", f"initrd.img-{version}")):
        if not (boot / real).is_file():
            raise CommandError(f"golden disk: {boot / real} was not made by mmdebstrap", argv=[])
        (boot / name).unlink(missing_ok=True)
        (boot / name).symlink_to(real)
    (boot / "grub").mkdir(exist_ok=True)
    (boot / "grub" / "grub.cfg").write_text(GRUB_CFG)
    for rel in ("var/cache/apt", "var/lib/apt/lists"):
        shutil.rmtree(root / rel, ignore_errors=True)
        (root / rel).mkdir(parents=True)


def _esp(path: Path, work: Path) -> None:
    run(["mkfs.vfat", "-F", "32", "-n", "LAB-ESP", "-C", path, str(ESP_SIZE // 1024)])
    img = str(path)
    run(["mmd", "-i", img, "::/EFI", "::/EFI/BOOT"])
    (work / "grub.cfg").write_text(STUB_CFG)
    for src, dest in ((SHIM, "BOOTX64.EFI"), (GRUB_EFI, "grubx64.efi"), (work / "grub.cfg", "grub.cfg")):
        run(["mcopy", "-i", img, src, f"::/EFI/BOOT/{dest}"])


def _bios(disk: Path, work: Path) -> None:
    core = work / "core.img"
    run(["grub-mkimage", "-O", "i386-pc", "-o", core, "-p", "(,gpt3)/boot/grub", *BIOS_MODULES.split()])
    data = bytearray(core.read_bytes())
    sectors = (len(data) + 511) // 512
    if sectors * 512 > BIOS_SIZE:
        raise CommandError(
            f"golden disk: GRUB core.img is {len(data)} bytes, the BIOS boot partition {BIOS_SIZE}", argv=[]
        )
    core_lba = BIOS_START // 512
    struct.pack_into("<QH", data, 0x1F4, core_lba + 1, sectors - 1)  # diskboot's blocklist: the rest
    boot = bytearray(BOOT_IMG.read_bytes())
    with open(disk, "r+b") as f:
        mbr = bytearray(f.read(512))
        boot[0x03:0x5A] = mbr[0x03:0x5A]
        boot[0x1B8:0x200] = mbr[0x1B8:0x200]
        struct.pack_into("<Q", boot, 0x5C, core_lba)
        f.seek(0)
        f.write(boot)
        f.seek(BIOS_START)
        f.write(data)


def build_disk(disk: Path, work: Path) -> None:
    root = work / "root"
    _root(root)
    with open(disk, "wb") as f:
        f.truncate(DISK_SIZE)
    root_size = DISK_SIZE - ROOT_START - GPT_TAIL
    table = (
        "label: gpt\n"
        f"start={BIOS_START // 512}, size={BIOS_SIZE // 512}, type={BIOS_BOOT_TYPE}, name=bios\n"
        f"start={ESP_START // 512}, size={ESP_SIZE // 512}, type={ESP_TYPE}, name=esp\n"
        f"start={ROOT_START // 512}, size={root_size // 512}, type={LINUX_TYPE}, name=root\n"
    )
    run(["sfdisk", "--quiet", disk], input=table.encode())
    esp = work / "esp.img"
    _esp(esp, work)
    rootimg = work / "root.img"
    run(["mkfs.ext4", "-q", "-F", "-L", ROOT_LABEL, "-d", root, rootimg, f"{root_size // 1024}k"])
    for part, offset in ((esp, ESP_START), (rootimg, ROOT_START)):
        run(
            [
                "dd",
                f"if={part}",
                f"of={disk}",
                "bs=1M",
                f"seek={offset // MiB}",
                "conv=notrunc,sparse",
                "status=none",
            ]
        )
        part.unlink()
    _bios(disk, work)
    logger.info("golden disk %s: %s", disk, run_text(["sfdisk", "-l", disk]).splitlines()[0])
