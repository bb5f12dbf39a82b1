"""A hybrid ISO/USB image (BIOS and UEFI, GRUB via grub-mkrescue) that boots a boot environment."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from fleetcast.bootenv.build import BootEnv
from fleetcast.errors import UsageError
from fleetcast.run import run, which

GRUB_CFG = """serial --unit=0 --speed=115200
terminal_input console serial
terminal_output console serial
set timeout=2
menuentry "fleetcast boot environment @KEY@" {
    linux /fleetcast/vmlinuz @CMDLINE@
    initrd /fleetcast/initrd.img
}
"""


def make_iso(env: BootEnv, out: Path, *, cmdline: str | None = None) -> Path:
    """Write ``out`` (published by rename when complete). ``cmdline`` defaults to the consoles only: the
    server and token then come from a DHCP-less lab or are typed at GRUB's menu ('e')."""
    which("grub-mkrescue", package="grub-common")
    which("xorriso", package="xorriso")
    if out.is_dir():
        raise UsageError(f"--iso {out} is a folder; expected a file name for the ISO image")
    if not out.parent.is_dir():
        raise UsageError(f"--iso {out}: folder {out.parent} does not exist")
    line = cmdline if cmdline is not None else "console=tty0 console=ttyS0,115200"
    with tempfile.TemporaryDirectory(prefix="fc-bootenv-iso-") as tmp:
        tree = Path(tmp) / "tree"
        (tree / "fleetcast").mkdir(parents=True)
        (tree / "boot" / "grub").mkdir(parents=True)
        shutil.copyfile(env.kernel, tree / "fleetcast" / "vmlinuz")
        shutil.copyfile(env.initrd, tree / "fleetcast" / "initrd.img")
        cfg = GRUB_CFG.replace("@KEY@", env.key).replace("@CMDLINE@", line)
        (tree / "boot" / "grub" / "grub.cfg").write_text(cfg)
        partial = out.with_name(f".{out.name}.partial")
        try:
            run(["grub-mkrescue", "-o", partial, tree, "--", "-volid", "FLEETCAST"], timeout=600)
            os.replace(partial, out)
        finally:
            partial.unlink(missing_ok=True)
    return out
