"""What the initrd leaves out of the installed tree (rootfs.strip_for_initrd), on a fake tree."""

from __future__ import annotations

from pathlib import Path

from fleetcast.bootenv import rootfs

GONE = (
    "boot/vmlinuz-6.1.0-57-amd64",
    "usr/share/perl/5.36.0/strict.pm",
    "usr/lib/x86_64-linux-gnu/perl/5.36.0/Encode/JP.so",
    "usr/lib/x86_64-linux-gnu/libperl.so.5.36.0",
    "usr/bin/perl5.36-x86_64-linux-gnu",
    "usr/lib/x86_64-linux-gnu/libicudata.so.72.1",
    "usr/lib/x86_64-linux-gnu/libicuuc.so.72",
    "usr/sbin/xfs_scrub",
    "usr/sbin/xfs_scrub_all",
    "usr/lib/udev/hwdb.bin",
    "usr/lib/udev/hwdb.d/20-pci-vendor-model.hwdb",
    "var/lib/apt/lists/deb.debian.org_InRelease",
    "var/lib/dpkg/status-old",
)
KEPT = (
    "usr/bin/perl",  # perl-base: the interpreter stays (maintainer scripts), its big libraries go
    "usr/lib/x86_64-linux-gnu/perl-base/strict.pm",
    "usr/sbin/xfs_repair",
    "usr/sbin/mkfs.xfs",
    "usr/lib/udev/rules.d/60-block.rules",
    "usr/lib/x86_64-linux-gnu/libc.so.6",
    "usr/lib/python3.11/os.py",
    "var/lib/dpkg/status",
)


def test_strip_removes_what_the_agent_never_runs_and_keeps_the_rest(tmp_path: Path) -> None:
    for rel in (*GONE, *KEPT):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    (tmp_path / "usr/lib/x86_64-linux-gnu/libicuuc.so").symlink_to("libicuuc.so.72")
    rootfs.strip_for_initrd(tmp_path)
    assert [rel for rel in GONE if (tmp_path / rel).exists()] == []
    assert [rel for rel in KEPT if not (tmp_path / rel).is_file()] == []
    assert not (tmp_path / "usr/lib/x86_64-linux-gnu/libicuuc.so").is_symlink()
    assert (tmp_path / "boot").is_dir() and (tmp_path / "var/lib/apt/lists").is_dir()
