"""``fleetcast agent`` argument handling (exact messages, exit codes); nothing reaches a network."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetcast.cli.main import main


@pytest.fixture(autouse=True)
def _keep_logging() -> Iterator[None]:
    """main() sets up logging on the (captured) stderr; put the root logger back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["--workers", "0"], 2, "fleetcast: error: --workers must be at least 1, got 0\n"),
        (["--checkpoint-mib", "0"], 2, "fleetcast: error: --checkpoint-mib must be at least 1, got 0\n"),
        (["--outage-limit", "-1"], 2, "fleetcast: error: --outage-limit must not be negative, got -1.0\n"),
        (
            ["--outage-limit", "nan"],
            2,
            "fleetcast: error: --outage-limit must be a number of seconds, got nan\n",
        ),
        (
            ["--outage-limit", "inf"],
            2,
            "fleetcast: error: --outage-limit must be a number of seconds, got inf\n",
        ),
    ],
)
def test_bad_numbers(argv: list[str], code: int, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["agent", "--server", "http://127.0.0.1:9", "--enroll-token", "t", *argv]) == code
    assert capsys.readouterr().err == message


def test_bad_server_url(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["agent", "--server", "ftp://x", "--enroll-token", "t"]) == 1
    err = capsys.readouterr().err
    assert err == (
        "fleetcast: error: server URL 'ftp://x' does not start with http:// or https://\n"
        "hint: e.g. --server http://10.0.0.1:8080\n"
    )


def test_token_starting_with_dash_works_with_equals(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["agent", "--server", "ftp://x", "--enroll-token=-abc"]) == 1
    assert "does not start with http://" in capsys.readouterr().err


def test_enroll_token_from_a_file_or_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 12 item 13: a token on a command line is readable in /proc by every local user."""
    empty = tmp_path / "cmdline"
    empty.write_text("quiet\n")
    base = ["agent", "--server", "ftp://x", "--cmdline", str(empty)]
    monkeypatch.delenv("FLEETCAST_ENROLL_TOKEN", raising=False)
    assert main(base) == 2  # no token anywhere
    assert "no server URL or enrollment token" in capsys.readouterr().err
    token = tmp_path / "enroll-token"
    token.write_text("fc_secret\n")
    assert main([*base, "--enroll-token-file", str(token)]) == 1  # got past the token: the URL is refused
    assert "does not start with http://" in capsys.readouterr().err
    assert main([*base, "--enroll-token-file", str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err == (
        f"fleetcast: error: cannot read the enrollment token file {tmp_path / 'none'}: "
        "No such file or directory\n"
    )
    monkeypatch.setenv("FLEETCAST_ENROLL_TOKEN", "fc_secret")
    assert main(base) == 1
    assert "does not start with http://" in capsys.readouterr().err


def test_no_server_anywhere_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No --server and no fleetcast.server= on the kernel line: the message, exit 2 (not a traceback)."""
    empty = tmp_path / "cmdline"
    empty.write_text("quiet\n")
    monkeypatch.delenv("FLEETCAST_ENROLL_TOKEN", raising=False)
    assert main(["agent", "--cmdline", str(empty)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fleetcast: error: agent: no server URL or enrollment token")
    assert "Traceback" not in err
