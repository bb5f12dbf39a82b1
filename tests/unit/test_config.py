"""The settings table: store/data precedence, flag help and the generated docs/configuration.md."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from fleetcast import config
from fleetcast.cli.main import build_parser

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


@pytest.mark.parametrize(
    ("store_flag", "data_flag", "env", "file", "expected"),
    [
        (None, None, {}, {}, "/var/lib/fleetcast/store"),
        (None, "/D", {}, {}, "/D/store"),
        ("/S", "/D", {}, {}, "/S"),
        (None, "/D", {"FLEETCAST_STORE": "/ES"}, {"store": "/FS"}, "/D/store"),
        (None, None, {"FLEETCAST_STORE": "/ES", "FLEETCAST_DATA": "/ED"}, {}, "/ES"),
        (None, None, {"FLEETCAST_DATA": "/ED"}, {"store": "/FS"}, "/ED/store"),
        (None, None, {}, {"store": "/FS", "data": "/FD"}, "/FS"),
        (None, None, {}, {"data": "/FD"}, "/FD/store"),
    ],
)
def test_store_path_precedence(
    store_flag: str | None, data_flag: str | None, env: dict[str, str], file: dict[str, str], expected: str
) -> None:
    assert config.store_path(store_flag, data_flag, file, env) == Path(expected)


def test_data_dir_from_environment() -> None:
    assert config.resolve("data", None, {"data": "/FD"}, {"FLEETCAST_DATA": "/ED"}) == "/ED"
    assert config.resolve("data", "/D", {}, {"FLEETCAST_DATA": "/ED"}) == "/D"


def test_store_from_args_reads_the_named_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "f.toml"
    cfg.write_text(f'data = "{tmp_path / "FD"}"\n')
    args = argparse.Namespace(config=str(cfg))
    assert config.store_from_args(args, environ={}) == tmp_path / "FD" / "store"


@pytest.mark.parametrize("argv", [["image", "list"], ["store", "gc"], ["serve"]])
def test_flag_help_comes_from_the_table(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args([*argv, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert config.flag_help("store") == (
        "image store directory (default: DATA/store; env FLEETCAST_STORE; config key 'store')"
    )
    for key in ("data", "store"):
        assert " ".join(config.flag_help(key).split()) in out


def test_configuration_doc_is_up_to_date() -> None:
    assert DOC.read_text() == config.configuration_markdown(), (
        "docs/configuration.md is stale: python -m fleetcast.config > docs/configuration.md"
    )
    for s in config.SETTINGS:
        assert f"`{s.flag} {s.metavar}`" in DOC.read_text()
