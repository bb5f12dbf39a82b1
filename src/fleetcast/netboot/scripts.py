"""The text the server hands a booting client: iPXE scripts and GRUB configs (pure functions).

What a client gets depends on its :class:`BootAction`: it boots the boot environment (kernel + initrd
over HTTP with the agent's settings on the kernel command line) unless its last deployment is done and
nothing else is queued for it; then the script exits so the firmware boots the next device, the local
disk.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from fleetcast.bootenv.build import BootEnv

KERNEL = "vmlinuz"
INITRD = "initrd.img"


class BootAction(StrEnum):
    REGISTER = "register"  # unknown machine: boot the environment, enroll, wait ("N clients connected")
    WAIT = "wait"  # known, nothing queued: boot the environment and wait for a deployment
    DEPLOY = "deploy"  # queued or running in a deployment: boot the environment, it starts at once
    LOCAL = "local"  # its deployment is done: boot from the local disk

    @property
    def boots_environment(self) -> bool:
        return self is not BootAction.LOCAL


REASONS = {
    BootAction.REGISTER: "new machine: starting the boot environment to register",
    BootAction.WAIT: "registered: starting the boot environment to wait for a deployment",
    BootAction.DEPLOY: "deployment pending: starting the boot environment",
    BootAction.LOCAL: "deployment done: booting from the local disk",
}


def kernel_cmdline(
    server_url: str, enroll_token: str, mac: str | None, *extra: str, tls_fingerprint: str | None = None
) -> str:
    """The boot environment's kernel command line (the names bootenv/init.py and agent/cmdline.py read);
    ``tls_fingerprint`` (``sha256:HEX``, the server's certificate) becomes ``fleetcast.tls=`` for the agent
    to pin."""
    env = BootEnv(kernel=Path(KERNEL), initrd=Path(INITRD), key="", manifest={})
    return env.cmdline(server_url, enroll_token, *extra, boot_mac=mac, tls_fingerprint=tls_fingerprint)


def ipxe_script(
    action: BootAction, server_url: str, enroll_token: str, mac: str, *, tls_fingerprint: str | None = None
) -> str:
    """The per-MAC iPXE script. ``initrd=initrd.img`` is on the kernel line for the EFI stub."""
    reason = REASONS[action]
    if not action.boots_environment:
        # edk2's boot manager goes on to the next boot option only when this one fails: exit 1 on EFI
        return f"#!ipxe\necho fleetcast: {mac}: {reason}\niseq ${{platform}} efi && exit 1 || exit\n"
    files = f"{server_url}/boot/file"
    cmdline = kernel_cmdline(
        server_url, enroll_token, mac, f"initrd={INITRD}", tls_fingerprint=tls_fingerprint
    )
    return (
        "#!ipxe\n"
        f"echo fleetcast: {mac}: {reason}\n"
        ":retry\n"
        f"kernel {files}/{KERNEL} {cmdline} || goto failed\n"
        f"initrd {files}/{INITRD} || goto failed\n"
        "boot || goto failed\n"
        ":failed\n"
        "echo fleetcast: loading the boot environment failed; trying again in 5 s\n"
        "sleep 5\n"
        "goto retry\n"
    )


def chain_script(server_url: str) -> str:
    """For an iPXE that asked without its MAC: ask again with it."""
    return f"#!ipxe\nchain {server_url}/boot/ipxe?mac=${{net0/mac}}\n"


def http_device(server_url: str) -> str:
    """GRUB's device for the server: ``(http,HOST:PORT)``."""
    hostport = server_url.split("://", 1)[-1].split("/", 1)[0]
    return f"(http,{hostport})"


def tftp_device(server_url: str) -> str:
    """GRUB's TFTP device for the server's host: ``(tftp,HOST)``."""
    hostport = server_url.split("://", 1)[-1].split("/", 1)[0]
    host = hostport.rsplit(":", 1)[0] if hostport.count(":") == 1 else hostport
    return f"(tftp,{host})"


# The local disk's UEFI loader (the firmware's fallback path; shim on a deployed Debian, verified against
# db with Secure Boot on). GRUB 2.06's chainloader builds the loaded image's device path from $root, not
# from the file's device: left at the network, the disk's shim is handed the NIC's device path, finds
# no filesystem there ("Failed to find fs") and cannot load its grubx64.efi. So root goes to the disk
# first. (This GRUB's exit takes no code and returns EFI_SUCCESS, after which edk2 opens its menu
# instead of trying the next boot option: the fallback below only helps a firmware that goes on.)
GRUB_LOCAL = """if search --no-floppy --file --set=fcdisk /EFI/BOOT/BOOTX64.EFI; then
    set root=$fcdisk
    chainloader /EFI/BOOT/BOOTX64.EFI
    boot
fi
exit 1
"""


def grub_config(
    action: BootAction,
    server_url: str,
    enroll_token: str,
    mac: str,
    *,
    tftp: bool = False,
    tls_fingerprint: str | None = None,
) -> str:
    """What the Secure Boot chain's GRUB sources for ``mac``: Debian's signed kernel + initrd (GRUB has
    shim verify the kernel), over HTTP, or by TFTP from ``bootenv/`` (``tftp``: the signed network GRUB
    loads no http module under Secure Boot); or ``exit`` to the firmware's next boot device."""
    reason = REASONS[action]
    if not action.boots_environment:
        return f'echo "fleetcast: {mac}: {reason}"\n' + GRUB_LOCAL
    files = f"{tftp_device(server_url)}/bootenv" if tftp else f"{http_device(server_url)}/boot/file"
    cmdline = kernel_cmdline(server_url, enroll_token, mac, tls_fingerprint=tls_fingerprint)
    return (
        f'echo "fleetcast: {mac}: {reason}"\n'
        f"linux {files}/{KERNEL} {cmdline}\n"
        f"initrd {files}/{INITRD}\n"
        "boot\n"
    )
