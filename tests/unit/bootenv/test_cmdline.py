"""fleetcast.agent.cmdline: the kernel command line the boot environment's agent reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetcast.agent.cmdline import CmdlineSettings, parse, read
from fleetcast.bootenv import BootEnv
from fleetcast.errors import AgentError

FP = "ab" * 32
TOK = "kernel command line: fleetcast.token must be 1-512 characters of letters, digits and '-._~+/=', found "
BOOTIF_TAIL = "is not 01- followed by six hex pairs joined by '-'"


def test_full_line_from_ipxe() -> None:
    line = (
        "initrd=initrd.img console=tty0 console=ttyS0,115200 fleetcast.server=http://10.0.0.1:8080/ "
        f"fleetcast.token=tok-EN_1.2~3+/= BOOTIF=01-52-54-00-AB-cd-0F fleetcast.tls=sha256:{FP.upper()} quiet"
    )
    assert parse(line) == CmdlineSettings(
        server="http://10.0.0.1:8080",
        enroll_token="tok-EN_1.2~3+/=",
        boot_mac="52:54:00:ab:cd:0f",
        tls_fingerprint=FP,
    )


def test_nothing_of_ours_and_last_value_wins() -> None:
    assert parse("ro quiet root=LABEL=x\n") == CmdlineSettings()
    assert parse("fleetcast.token=a fleetcast.token=b").enroll_token == "b"
    assert parse('fleetcast.token="abc" fleetcast.server="https://[fd00::1]:443/x"').server == (
        "https://[fd00::1]:443/x"
    )


def test_bootenv_cmdline_round_trips() -> None:
    env = BootEnv(kernel=Path("/k"), initrd=Path("/i"), key="k", manifest={})
    line = env.cmdline("http://10.0.0.1:8080", "t0k", "initrd=initrd.img", boot_mac="52:54:00:12:34:56")
    assert parse(line) == CmdlineSettings("http://10.0.0.1:8080", "t0k", "52:54:00:12:34:56", None)
    assert "console=ttyS0,115200" in line.split()
    assert "initrd=initrd.img" in line.split()


MALFORMED = [
    (
        "fleetcast.server=ftp://x",
        "kernel command line: fleetcast.server='ftp://x' is not an http:// or https:// URL with a host",
    ),
    (
        "fleetcast.server=http://",
        "kernel command line: fleetcast.server='http://' is not an http:// or https:// URL with a host",
    ),
    (
        "fleetcast.server=http://h:0",
        "kernel command line: fleetcast.server='http://h:0' has port 0, not 1-65535",
    ),
    (
        "fleetcast.server=http://h:99999",
        "kernel command line: fleetcast.server='http://h:99999' has port 99999, not 1-65535",
    ),
    (
        "fleetcast.server",
        "kernel command line: fleetcast.server has no value (expected fleetcast.server=...)",
    ),
    (
        "fleetcast.token=",
        TOK + "''",
    ),
    (
        "fleetcast.token=a;b",
        TOK + "'a;b'",
    ),
    (
        "fleetcast.token=" + "a" * 513,
        TOK + "'" + "a" * 40 + "'…",
    ),
    (
        "BOOTIF=52-54-00-12-34-56",
        "kernel command line: BOOTIF='52-54-00-12-34-56' is not 01- followed by six hex pairs joined by '-'",
    ),
    (
        "BOOTIF=01-52-54-00-12-34",
        "kernel command line: BOOTIF='01-52-54-00-12-34' is not 01- followed by six hex pairs joined by '-'",
    ),
    (
        "BOOTIF=01-52:54:00:12:34:56",
        f"kernel command line: BOOTIF='01-52:54:00:12:34:56' {BOOTIF_TAIL}",
    ),
    (
        "BOOTIF=01-zz-54-00-12-34-56",
        f"kernel command line: BOOTIF='01-zz-54-00-12-34-56' {BOOTIF_TAIL}",
    ),
    (
        "fleetcast.tls=abcd",
        "kernel command line: fleetcast.tls='abcd' is not a SHA-256 fingerprint (64 hex digits)",
    ),
    ("fleetcast.serve=http://h", "kernel command line: unknown parameter 'fleetcast.serve'"),
    ('fleetcast.token="abc', "kernel command line: a double quote is not closed in 'fleetcast.token=\"abc'"),
    ("a\x00b", "kernel command line contains a NUL byte"),
    ("x" * 4097, "kernel command line is 4097 characters, at most 4096"),
]


@pytest.mark.parametrize(("line", "message"), MALFORMED)
def test_malformed(line: str, message: str) -> None:
    with pytest.raises(AgentError) as info:
        parse(line)
    assert info.value.message == message


def test_read_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AgentError) as info:
        read(tmp_path / "nope")
    assert (
        info.value.message
        == f"cannot read the kernel command line {tmp_path / 'nope'}: No such file or directory"
    )
