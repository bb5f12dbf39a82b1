"""The CLI side of the API: problem documents -> errors/exit codes, and what deploy prints."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from fleetcast.cli.deploy import CLIENT_KEYS, print_result, progress_line, seconds, summary
from fleetcast.errors import ClientNotFound, ImageNotFound, NotFoundError, ServerError, UsageError
from fleetcast.server.apiclient import ApiClient, error_from_response


def response(status: int, body: object) -> httpx.Response:
    return httpx.Response(status, json=body)


@pytest.mark.parametrize(
    ("status", "error", "cls", "exit_code"),
    [
        (404, "ImageNotFound", ImageNotFound, 3),
        (404, "ClientNotFound", ClientNotFound, 3),
        (404, "DeploymentNotFound", NotFoundError, 3),
        (400, "UsageError", UsageError, 2),
        (422, "ValidationError", UsageError, 2),
        (409, "ServerError", ServerError, 1),
        (500, "InternalError", ServerError, 1),
    ],
)
def test_problem_documents_become_errors(
    status: int, error: str, cls: type[Exception], exit_code: int
) -> None:
    exc = error_from_response(response(status, {"error": error, "message": "m", "hint": "h"}))
    assert type(exc) is cls
    assert (exc.message, exc.hint, exc.exit_code) == ("m", "h", exit_code)


def test_401_names_the_token() -> None:
    exc = error_from_response(response(401, {"error": "AuthError", "message": "bad", "hint": None}))
    assert isinstance(exc, UsageError)
    assert exc.message == "the server refused the token: bad"


def test_non_json_error() -> None:
    exc = error_from_response(httpx.Response(502, text="Bad Gateway"))
    assert exc.message == "HTTP 502: Bad Gateway"


def test_server_url_must_be_http() -> None:
    with pytest.raises(UsageError) as info:
        ApiClient("10.0.0.1:8080", "t")
    assert str(info.value) == "server URL '10.0.0.1:8080' must start with http:// or https://"


VIEW = {
    "deployment": 7,
    "state": "failed",
    "clients": [
        {
            "mac": "52:54:00:00:00:01",
            "name": "LAB-01",
            "ip": "10.0.0.101/24",
            "disk": "/dev/sda",
            "state": "done",
            "bytes": 200_000_000,
            "started_at": "2026-01-01T10:00:00+00:00",
            "finished_at": "2026-01-01T10:00:10+00:00",
            "error": None,
            "phase": None,
            "bytes_total": 200_000_000,
            "rate_bps": 0,
            "eta_seconds": None,
        },
        {
            "mac": "52:54:00:00:00:02",
            "name": "LAB-02",
            "ip": "10.0.0.102/24",
            "disk": None,
            "state": "running",
            "bytes": 1 << 20,
            "started_at": "2026-01-01T10:00:00+00:00",
            "finished_at": None,
            "error": None,
            "phase": "writing",
            "bytes_total": 4 << 20,
            "rate_bps": 1 << 20,
            "eta_seconds": 3.0,
        },
    ],
}


def test_summary_has_exactly_the_documented_keys() -> None:
    out = summary(VIEW)
    assert list(out) == ["deployment", "clients"]
    assert [list(c) for c in out["clients"]] == [list(CLIENT_KEYS)] * 2
    assert out["clients"][0]["bytes"] == 200_000_000


def test_progress_lines_and_result_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert progress_line(VIEW["clients"][1]) == (
        "LAB-02       52:54:00:00:00:02  writing         25.0% 1.0 MiB/4.0 MiB 1.0 MiB/s ETA 0:03"
    )
    assert progress_line(VIEW["clients"][0]) == "LAB-01       52:54:00:00:00:01  done"
    assert seconds(VIEW["clients"][0]) == 10.0
    assert seconds(VIEW["clients"][1]) is None
    print_result(VIEW)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "deployment 7: failed"
    assert lines[1].split() == ["name", "mac", "ip", "disk", "state", "seconds", "MB/s", "error"]
    assert lines[3].split() == [
        "LAB-01",
        "52:54:00:00:00:01",
        "10.0.0.101/24",
        "/dev/sda",
        "done",
        "10.0",
        "20.0",
    ]


def test_control_characters_from_agents_are_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    from fleetcast.cli.common import print_table, printable

    evil = "pc\x1b[2J\x1b]0;owned\x07\r\nfake\x9b"
    assert printable(evil) == "pc\\x1b[2J\\x1b]0;owned\\x07\\x0d\\x0afake\\x9b"
    failed = {**VIEW["clients"][0], "state": "failed", "error": "disk \x1b[31mred"}
    assert progress_line(failed) == "LAB-01       52:54:00:00:00:01  failed: disk \\x1b[31mred"
    print_table(["hostname"], [[evil]])
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\r" not in out
    assert out.splitlines()[2] == "pc\\x1b[2J\\x1b]0;owned\\x07\\x0d\\x0afake\\x9b"


def test_token_file_is_read(tmp_path: Path) -> None:
    import argparse

    from fleetcast.cli.deploy import api_client

    (tmp_path / "t").write_text("fc_secret\n")
    args = argparse.Namespace(server="http://127.0.0.1:1", token=None, token_file=str(tmp_path / "t"))
    with api_client(args) as api:
        assert api.http.headers["Authorization"] == "Bearer fc_secret"
    args.token_file = str(tmp_path / "missing")
    with pytest.raises(UsageError) as info:
        api_client(args)
    assert str(info.value) == f"cannot read the token file {tmp_path / 'missing'}: No such file or directory"


def test_agent_takes_the_pin_of_the_kernel_line_that_names_its_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """REVIEW 6: the boot environment passes --server/--enroll-token itself; the pin on the kernel
    command line still applies when that line names the same server (here refused with http://,
    which shows it was taken)."""
    from fleetcast.cli.main import main

    line = tmp_path / "cmdline"
    line.write_text(f"quiet fleetcast.server=http://10.0.0.1:8080/ fleetcast.tls={'ab' * 32}\n")
    argv = ["agent", "--server", "http://10.0.0.1:8080", "--enroll-token", "t", "--cmdline", str(line)]
    assert main(argv) == 1
    assert "a TLS fingerprint is set but the server URL 'http://10.0.0.1:8080' is not https://" in (
        capsys.readouterr().err
    )
