"""`--data D` means `D/store` for every command that opens the store (issue 7, 4th point): each image and
store subcommand resolves the same store from the same flags, environment and config file, through the
function `serve` uses (config.store_path)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from fleetcast import config
from fleetcast.cli.main import build_parser

# every command that opens the image store, with its required arguments
COMMANDS = [
    ["image", "capture", "/dev/null", "x"],
    ["image", "restore", "x", "/tmp/t.img"],
    ["image", "list"],
    ["image", "info", "x"],
    ["image", "verify", "x"],
    ["image", "rm", "x"],
    ["image", "export", "x", "/tmp/x.img"],
    ["image", "import", "/tmp/x.img", "x"],
    ["store", "check"],
    ["store", "gc"],
    ["store", "upgrade"],
]


def _args(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_every_store_command_resolves_data_to_data_store(command: list[str], tmp_path: Path) -> None:
    cfg = tmp_path / "none.toml"  # an empty config file, so /etc/fleetcast does not take part
    cfg.write_text("")
    d, s = tmp_path / "D", tmp_path / "S"
    for argv, env, expected in (
        (["--data", str(d), "--config", str(cfg), *command], {}, d / "store"),  # before the command
        ([*command, "--data", str(d), "--config", str(cfg)], {}, d / "store"),  # after it
        ([*command, "--data", str(d), "--store", str(s), "--config", str(cfg)], {}, s),
        ([*command, "--config", str(cfg)], {config.DATA_ENV: str(d)}, d / "store"),
        ([*command, "--data", str(s), "--config", str(cfg)], {config.STORE_ENV: str(d)}, s / "store"),
        ([*command, "--config", str(cfg)], {}, config.DEFAULT_STORE_DIR),
    ):
        args = _args(argv)
        assert config.store_from_args(args, environ=env) == expected, argv
        # the server resolves it with the same function from the same inputs
        assert (
            config.store_path(
                getattr(args, "store", None),
                getattr(args, "data", None),
                config.file_values_from_args(args),
                env,
            )
            == expected
        )


def test_the_config_file_data_means_its_store(tmp_path: Path) -> None:
    cfg = tmp_path / "f.toml"
    cfg.write_text(f'data = "{tmp_path / "FD"}"\n')
    for command in COMMANDS:
        args = _args([*command, "--config", str(cfg)])
        assert config.store_from_args(args, environ={}) == tmp_path / "FD" / "store", command
