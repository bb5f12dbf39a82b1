"""The boot-method registry: which boot file each kind of firmware gets, keyed by what DHCP tells.

A PXE client says what it is in its DHCPDISCOVER: option 93 (client system architecture: 0 BIOS,
7 or 9 UEFI x64, 16 UEFI x64 HTTP boot) and, once iPXE runs, option 77 (user class ``iPXE``) and
option 175. DHCP cannot tell whether Secure Boot is on, so the Secure Boot chain is chosen per MAC
(a registration with ``boot=secureboot``) or for every UEFI client (``--uefi-boot shim``).

=============  ==========  ===========================================================================
method         dnsmasq tag  chain
=============  ==========  ===========================================================================
bios           bios         PXE ROM → TFTP ``undionly.kpxe`` (iPXE) → HTTP script → kernel + initrd
uefi           efi64        UEFI PXE → TFTP ``snponly.efi`` (iPXE; ``ipxe.efi`` if the former is missing)
                            → HTTP script → kernel + initrd
secureboot     efi64 + sb   UEFI PXE → TFTP ``bootx64.efi`` (Debian's signed shim) → TFTP ``grubx64.efi``
                            (Debian's signed network GRUB) → ``grub/grub.cfg`` → HTTP per-MAC GRUB config
                            → signed Debian kernel + initrd over HTTP (TFTP fallback)
httpboot       efihttp      UEFI HTTP boot: DHCP answers a URL, ``http://SERVER/boot/tftp/ipxe.efi``
                            (full DHCP mode only: dnsmasq's proxy mode serves PXEClient only)
ipxe           ipxe         iPXE itself: ``http://SERVER/boot/ipxe?mac=${net0/mac}``
=============  ==========  ===========================================================================

Each method is a small class registered by its :class:`Method` name (``BootMethod.__init_subclass__``);
:func:`choose` is the pure decision the generated dnsmasq tags implement, used by tests and docs.
"""

from __future__ import annotations

import logging
from enum import StrEnum
from pathlib import Path
from typing import ClassVar

from fleetcast.errors import UsageError

logger = logging.getLogger(__name__)

IPXE_DIR = Path("/usr/lib/ipxe")
SHIM = Path("/usr/lib/shim/shimx64.efi.signed")
GRUB_NET = Path("/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed")

ARCH_BIOS = 0
ARCH_EFI_BC = 7
ARCH_EFI_X64 = 9
ARCH_EFI_HTTP = 16
IPXE_USER_CLASS = "iPXE"


class Method(StrEnum):
    BIOS = "bios"
    UEFI = "uefi"
    SECUREBOOT = "secureboot"
    HTTPBOOT = "httpboot"
    IPXE = "ipxe"


class BootMethod:
    """One chain. ``files`` maps a TFTP-root name to candidate sources (the first that exists is used)."""

    method: ClassVar[Method]
    tag: ClassVar[str]
    arch_codes: ClassVar[tuple[int, ...]] = ()
    boot_file: ClassVar[str] = ""
    files: ClassVar[dict[str, tuple[Path, ...]]] = {}
    registry: ClassVar[dict[Method, type[BootMethod]]] = {}

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        BootMethod.registry[cls.method] = cls

    @classmethod
    def boot_target(cls, server_url: str) -> str:
        """What DHCP names as the boot file (a TFTP path, or a URL for HTTP boot and iPXE)."""
        return cls.boot_file


class Bios(BootMethod):
    method = Method.BIOS
    tag = "bios"
    arch_codes = (ARCH_BIOS,)
    boot_file = "undionly.kpxe"
    files: ClassVar[dict[str, tuple[Path, ...]]] = {"undionly.kpxe": (IPXE_DIR / "undionly.kpxe",)}


class Uefi(BootMethod):
    method = Method.UEFI
    tag = "efi64"
    arch_codes = (ARCH_EFI_BC, ARCH_EFI_X64)
    boot_file = "snponly.efi"
    files: ClassVar[dict[str, tuple[Path, ...]]] = {
        "snponly.efi": (IPXE_DIR / "snponly.efi", IPXE_DIR / "ipxe.efi"),
        "ipxe.efi": (IPXE_DIR / "ipxe.efi",),
    }


class SecureBoot(BootMethod):
    method = Method.SECUREBOOT
    tag = "sb"
    arch_codes = (ARCH_EFI_BC, ARCH_EFI_X64)
    boot_file = "bootx64.efi"
    # shim loads grubx64.efi from the same TFTP folder; the signed network GRUB's prefix is /grub
    files: ClassVar[dict[str, tuple[Path, ...]]] = {"bootx64.efi": (SHIM,), "grubx64.efi": (GRUB_NET,)}


class HttpBoot(BootMethod):
    method = Method.HTTPBOOT
    tag = "efihttp"
    arch_codes = (ARCH_EFI_HTTP,)
    boot_file = "ipxe.efi"

    @classmethod
    def boot_target(cls, server_url: str) -> str:
        return f"{server_url}/boot/tftp/{cls.boot_file}"


class Ipxe(BootMethod):
    method = Method.IPXE
    tag = "ipxe"

    @classmethod
    def boot_target(cls, server_url: str) -> str:
        return f"{server_url}/boot/ipxe?mac=${{net0/mac}}"


def get(method: Method | str) -> type[BootMethod]:
    try:
        return BootMethod.registry[Method(method)]
    except ValueError as exc:
        raise UsageError(
            f"boot method {method!r} is not known", hint=f"one of {', '.join(m.value for m in Method)}"
        ) from exc


def choose(
    arch: int | None, user_class: str | None = None, *, secure_boot: bool = False, uefi_boot: str = "ipxe"
) -> type[BootMethod]:
    """The method for a DHCP request: iPXE (by its user class) first, then by architecture."""
    if user_class == IPXE_USER_CLASS:
        return Ipxe
    if arch in HttpBoot.arch_codes:
        return HttpBoot
    if arch in Uefi.arch_codes:
        return SecureBoot if secure_boot or uefi_boot == "shim" else Uefi
    if arch in (None, ARCH_BIOS):
        return Bios
    raise UsageError(f"client architecture {arch} (DHCP option 93) has no boot method")


def tftp_files() -> dict[str, Path]:
    """Every file the TFTP root needs, name -> the first existing source; UsageError naming a missing
    file and its Debian package."""
    packages = {IPXE_DIR: "ipxe", SHIM.parent: "shim-signed", GRUB_NET.parent: "grub-efi-amd64-signed"}
    chosen: dict[str, Path] = {}
    for cls in BootMethod.registry.values():
        for name, candidates in cls.files.items():
            found = next((c for c in candidates if c.is_file()), None)
            if found is None:
                package = packages.get(candidates[0].parent, "?")
                raise UsageError(
                    f"network boot: {candidates[0]} is missing (the {cls.method.value} boot file {name})",
                    hint=f"install it: apt-get install {package}",
                )
            chosen[name] = found
    return chosen
