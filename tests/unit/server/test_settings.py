"""Server settings: flags over the config file over defaults; token files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from fleetcast.errors import UsageError
from fleetcast.server.auth import read_or_create
from fleetcast.server.settings import ServerSettings, build, parse_listen


def test_defaults(tmp_path: Path) -> None:
    cfg = tmp_path / "empty.toml"
    cfg.write_text("")
    s = build(data=None, listen=None, database=None, config_file=str(cfg))
    assert s.data_dir == Path("/var/lib/fleetcast")
    assert (s.host, s.port) == ("0.0.0.0", 8080)
    assert s.store == Path("/var/lib/fleetcast/store")
    assert s.db_url == "sqlite:////var/lib/fleetcast/fleetcast.db"
    assert s.secrets_dir == Path("/var/lib/fleetcast/secrets")


def test_flags_override_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLEETCAST_STORE", raising=False)
    cfg = tmp_path / "fleetcast.toml"
    cfg.write_text(
        'data = "/srv/fc"\nlisten = "10.0.0.1:9000"\ndatabase = "postgresql+psycopg://fc@db/fc"\n'
        "[server]\nheartbeat_interval = 1\ntask_timeout = 60\n"
    )
    s = build(data=None, listen=None, database=None, config_file=str(cfg))
    assert (s.data_dir, s.host, s.port) == (Path("/srv/fc"), "10.0.0.1", 9000)
    assert s.db_url == "postgresql+psycopg://fc@db/fc"
    assert (s.heartbeat_interval, s.task_timeout) == (1.0, 60.0)
    s = build(data=str(tmp_path), listen="127.0.0.1:8081", database=None, config_file=str(cfg))
    assert (s.data_dir, s.host, s.port) == (tmp_path, "127.0.0.1", 8081)
    assert s.store == tmp_path / "store"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[server]\nheartbeat_interval = 0\n",
            "server.heartbeat_interval must be a positive number of seconds, found 0",
        ),
        (
            "[server]\ntask_timeout = 'long'\n",
            "server.task_timeout must be a positive number of seconds, found 'long'",
        ),
        ("[server]\nbatch = 2\n", "unknown server setting(s) batch"),
        ("colour = 'red'\n", "unknown setting(s) colour"),
    ],
)
def test_bad_config(tmp_path: Path, text: str, message: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    with pytest.raises(UsageError) as info:
        build(data=None, listen=None, database=None, config_file=str(cfg))
    assert str(info.value) == f"config file {cfg}: {message}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("8080", "listen address '8080' is not ADDR:PORT"),
        ("host:", "listen address 'host:' is not ADDR:PORT"),
        ("0.0.0.0:http", "listen address '0.0.0.0:http': port must be 1-65535, found 'http'"),
        ("0.0.0.0:70000", "listen address '0.0.0.0:70000': port must be 1-65535, found '70000'"),
    ],
)
def test_bad_listen(text: str, message: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_listen(text)
    assert str(info.value) == message


def test_listen_ipv6() -> None:
    assert parse_listen("[::1]:8080") == ("::1", 8080)


def test_tokens_are_made_once_with_mode_0600(tmp_path: Path) -> None:
    secrets = tmp_path / "data" / "secrets"
    first = read_or_create(secrets, "admin-token")
    assert len(first) >= 40
    assert read_or_create(secrets, "admin-token") == first
    assert read_or_create(secrets, "enroll-token") != first
    assert stat.S_IMODE(os.stat(secrets / "admin-token").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(secrets).st_mode) == 0o700
    assert sorted(p.name for p in secrets.iterdir()) == ["admin-token", "enroll-token"]
    (secrets / "admin-token").write_text("\n")
    with pytest.raises(UsageError, match="is empty"):
        read_or_create(secrets, "admin-token")


def test_unusable_data_directory_is_a_usage_error(tmp_path: Path) -> None:
    from fleetcast.server.app import create_app

    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError) as info:
        create_app(ServerSettings(data_dir=tmp_path / "file" / "data"))
    assert str(info.value) == f"cannot create the data directory {tmp_path}/file/data: Not a directory"


def test_multicast_table_reaches_the_settings(tmp_path: Path) -> None:
    """MULTICAST's [multicast] table (server/multicast_settings.py) is read by build()."""
    cfg = tmp_path / "fleetcast.toml"
    cfg.write_text(f'data = "{tmp_path}"\n[multicast]\nmax_wait = 30\nmulticast_from = 6\n')
    s = build(data=None, listen=None, database=None, config_file=str(cfg))
    assert (s.multicast.max_wait, s.multicast.multicast_from) == (30.0, 6)
    assert build(data=str(tmp_path), listen=None, database=None, config_file=None).multicast.max_wait == 60.0
    cfg.write_text(f'data = "{tmp_path}"\n[multicast]\ncolour = "blue"\n')
    with pytest.raises(UsageError, match="unknown multicast setting"):
        build(data=None, listen=None, database=None, config_file=str(cfg))
