"""The boot environment built for real (mmdebstrap, cached) and booted under QEMU TCG."""

from __future__ import annotations

from pathlib import Path

import pytest
from bootenvkit import Serial

from fleetcast.bootenv import BootEnv, BootEnvOptions, build, ensure
from fleetcast.bootenv.iso import make_iso
from fleetcast.errors import UsageError

pytestmark = pytest.mark.integration

MAC = "52:54:00:fc:be:01"


def test_initrd_is_small_and_the_second_ensure_is_the_cache(
    bootenv: BootEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert bootenv.initrd.stat().st_size <= 150_000_000
    assert bootenv.kernel.parent.name == bootenv.key
    # The same inputs as the session's build: the key hashes src/fleetcast, which someone may edit while
    # this runs (a shared tree) and which would then ask for a new build; a build here fails the test.
    monkeypatch.setattr(build, "cache_key", lambda options: bootenv.key)
    monkeypatch.setattr(build, "_build", lambda *args, **kw: pytest.fail("built a second time"))
    again = ensure(BootEnvOptions())
    assert again.key == bootenv.key
    assert again.manifest["built_at"] == bootenv.manifest["built_at"]  # not built a second time
    packages = {p.split("=")[0] for p in bootenv.manifest["packages"]}  # type: ignore[attr-defined]
    assert {"python3-hivex", "ntfs-3g", "partclone", "udpcast", "busybox"} <= packages


def test_unknown_package_is_refused_before_mmdebstrap(tmp_path: Path) -> None:
    options = BootEnvOptions(add_packages=("fleetcast-no-such-package",), add_firmware=("firmware-nope-x",))
    with pytest.raises(UsageError) as info:
        ensure(options, cache_dir=tmp_path / "cache")
    assert info.value.message == (
        "boot environment: Debian packages 'fleetcast-no-such-package', 'firmware-nope-x' not found "
        "(apt-cache show knows no such package)"
    )
    assert not (tmp_path / "cache").exists()


def test_boots_to_the_agent_trying_the_server(bootenv: BootEnv, qemu: type[Serial]) -> None:
    # QEMU's user network with restrict=on: DHCP from QEMU itself, nothing reaches the host or beyond.
    line = bootenv.cmdline("http://10.0.2.2:9", "t0ken", "panic=-1", boot_mac=MAC)
    vm = qemu(
        [
            "-kernel", str(bootenv.kernel), "-initrd", str(bootenv.initrd), "-append", line,
            "-netdev", "user,id=n0,restrict=on", "-device", f"virtio-net-pci,netdev=n0,mac={MAC}",
            "-netdev", "user,id=n1,restrict=on", "-device", "e1000,netdev=n1,mac=52:54:00:fc:be:02",
        ]
    )  # fmt: skip
    text = vm.wait_for("agent started")
    assert f"fleetcast boot environment {bootenv.key}" in text
    assert "fleetcast: firmware BIOS" in text  # QEMU's default machine: SeaBIOS (the lab boots UEFI/SB)
    assert f"({MAC}): asking for an address (DHCP)" in text  # the BOOTIF NIC, not the first or the e1000
    assert "address 10.0.2.15/24" in text
    assert "agent started (pid" in text and "server http://10.0.2.2:9" in text
    vm.wait_for("10.0.2.2:9")  # the agent's own log: it is trying to reach the server


def test_iso_boots_to_the_banner(bootenv: BootEnv, qemu: type[Serial], tmp_path: Path) -> None:
    iso = make_iso(bootenv, tmp_path / "fleetcast.iso")
    vm = qemu(["-cdrom", str(iso), "-nic", "none"])
    text = vm.wait_for("fleetcast: server")
    assert f"fleetcast boot environment {bootenv.key}" in text
    assert "error: fleetcast.server= and fleetcast.token= are needed" in vm.wait_for("are needed")
    with pytest.raises(UsageError) as info:
        make_iso(bootenv, tmp_path)
    assert info.value.message == f"--iso {tmp_path} is a folder; expected a file name for the ISO image"
