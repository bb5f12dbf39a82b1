"""What makes the boot environment quick to boot (issue 8: power-on -> registered): .pyc compiled at
build time (valid whatever the mtimes), and the init's line saying where the boot's seconds went."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

from fleetcast.bootenv import pydeps
from fleetcast.bootenv.init import KMSG_STAMP, boot_times
from fleetcast.errors import CommandError

PY = f"python{sys.version_info.major}.{sys.version_info.minor}"


def test_compile_pyc_writes_unchecked_hash_pyc_for_the_site_tree(tmp_path: Path) -> None:
    (tmp_path / "usr" / "lib" / PY).mkdir(parents=True)
    pkg = tmp_path / pydeps.SITE / "demo"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("VALUE = 42\n")
    (pkg / "broken.py").write_text("def (:\n")  # a file that does not compile is left to import time
    assert pydeps.compile_pyc(tmp_path) == 1  # /usr/lib/python3/dist-packages absent: skipped
    pyc = Path(importlib.util.cache_from_source(str(pkg / "__init__.py")))
    data = pyc.read_bytes()
    assert data[:4] == importlib.util.MAGIC_NUMBER
    assert int.from_bytes(data[4:8], "little") == 0b01  # hash-based, check_source off
    assert not Path(importlib.util.cache_from_source(str(pkg / "broken.py"))).exists()


def test_compile_pyc_refuses_an_initrd_of_another_python(tmp_path: Path) -> None:
    (tmp_path / "usr" / "lib" / "python3.99").mkdir(parents=True)
    with pytest.raises(CommandError, match=r"runs Python 3\.\d+ but the initrd has python3\.99"):
        pydeps.compile_pyc(tmp_path)


def test_boot_times_names_the_unpack_the_init_and_the_modules() -> None:
    records = [
        "6,1,1000,-;Linux version 6.1.0",
        "6,200,1250000,-;Trying to unpack rootfs image as initramfs...",
        "6,300,6500000,-;Freeing initrd memory: 98872K",
    ]
    kmsg = []
    for r in records:
        m = KMSG_STAMP.match(r)
        assert m is not None
        kmsg.append((int(m.group(1)) / 1e6, m.group(2)))
    line = boot_times(kmsg, {"FC_UP_INIT": "7.02", "FC_UP_MODULES": "8.40", "PATH": "/bin"}, 9.75)
    assert line == (
        "times since the kernel started: initramfs unpacked 1.2-6.5 s, /init 7.02 s, "
        "modules loaded 8.40 s, python init 9.8 s"
    )
    assert boot_times([], {}, 3.0) == "times since the kernel started: python init 3.0 s"


def test_modules_are_compressed_one_by_one_and_decompress_to_the_same_bytes(tmp_path: Path) -> None:
    import subprocess

    from fleetcast.bootenv import rootfs

    moddir = tmp_path / "lib" / "modules" / "6.1.0-test"
    (moddir / "kernel" / "drivers" / "net").mkdir(parents=True)
    payload = b"\x7fELF" + bytes(range(256)) * 64
    for name in ("virtio_net.ko", "e1000.ko"):
        (moddir / "kernel" / "drivers" / "net" / name).write_bytes(payload)
    (moddir / "modules.dep").write_text("")  # not a module: left alone
    assert rootfs.compress_modules(moddir, batch=1) == 2
    left = sorted(p.name for p in moddir.rglob("*") if p.is_file())
    assert left == ["e1000.ko.zst", "modules.dep", "virtio_net.ko.zst"]
    packed = moddir / "kernel" / "drivers" / "net" / "e1000.ko.zst"
    assert packed.stat().st_size < len(payload)
    assert subprocess.run(["zstd", "-dc", packed], capture_output=True, check=True).stdout == payload
    assert rootfs.compress_modules(moddir) == 0  # a second run finds nothing plain


def test_the_forked_agent_runs_the_cli_only_once_started(capfd: pytest.CaptureFixture[str]) -> None:
    from fleetcast.bootenv.init import ForkedAgent

    agent = ForkedAgent(["agent", "--no-such-flag"])
    agent.start()
    assert agent.wait() == 2  # argparse's usage error, from the CLI's main in the forked child
    assert "--no-such-flag" in capfd.readouterr().err
    idle = ForkedAgent(["agent", "--no-such-flag"])
    os.close(idle._go)  # the init went away before starting it: the child exits, running nothing
    assert idle.wait() == 0
    assert capfd.readouterr().err == ""


def test_strip_debug_shrinks_an_extension_that_carries_debug_info(tmp_path: Path) -> None:
    import shutil
    import subprocess

    if shutil.which("cc") is None or shutil.which("strip") is None:
        pytest.skip("needs a C compiler and binutils")
    site = tmp_path / pydeps.SITE / "demo"
    site.mkdir(parents=True)
    src = tmp_path / "x.c"
    src.write_text("int fc_answer(void) { return 42; }\n")
    so = site / "x.cpython-311-x86_64-linux-gnu.so"
    subprocess.run(["cc", "-g", "-shared", "-fPIC", "-o", so, src], check=True)
    before = so.stat().st_size
    assert pydeps.strip_debug(tmp_path) == 1
    assert so.stat().st_size < before
    assert b".debug_info" not in so.read_bytes()
