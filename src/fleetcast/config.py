"""Settings resolved once at start-up and passed down; nothing deeper reads the environment.

Precedence, highest first: command-line flag, environment variable, config file
(``/etc/fleetcast/fleetcast.toml`` or ``--config``), built-in default.

The data directory and the image store are resolved the same way by every command
(:func:`store_path`): at each level (flag, environment, file) a store given at that level wins over a
data directory given at that level, and a data directory ``D`` means the store ``D/store``. So
``fleetcast --data D image capture …``, ``image list``, ``store gc`` and ``serve`` all use ``D/store``
unless ``--store`` is given.

``SETTINGS`` is the one table of settings: :func:`add_flag` builds each flag's help from it, and
:func:`configuration_markdown` generates docs/configuration.md (``python -m fleetcast.config``
rewrites it; a test checks the committed file is up to date).
"""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetcast.errors import UsageError

DEFAULT_CONFIG_FILE = Path("/etc/fleetcast/fleetcast.toml")
DEFAULT_DATA_DIR = Path("/var/lib/fleetcast")
DEFAULT_STORE_DIR = DEFAULT_DATA_DIR / "store"
DATA_ENV = "FLEETCAST_DATA"
STORE_ENV = "FLEETCAST_STORE"
SECTIONS = ("server", "agent", "multicast")  # sub-tables of the config file, validated by their owners


@dataclass(frozen=True)
class Setting:
    """One row of the settings table: drives the config file keys, CLI flags and docs."""

    key: str
    flag: str
    default: str
    help: str
    env: str | None = None
    metavar: str = "VALUE"
    commands: str = "all commands"
    default_text: str = ""  # how help and docs show the default when it is derived ("DATA/store")

    @property
    def shown_default(self) -> str:
        return self.default_text or self.default


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "data",
        "--data",
        str(DEFAULT_DATA_DIR),
        "data directory: server database, image store (DATA/store), secrets",
        env=DATA_ENV,
        metavar="DIR",
    ),
    Setting(
        "store",
        "--store",
        "",
        "image store directory",
        env=STORE_ENV,
        metavar="DIR",
        commands="image, store, serve",
        default_text="DATA/store",
    ),
    Setting(
        "listen",
        "--listen",
        "0.0.0.0:8080",
        "server address and port",
        metavar="ADDR:PORT",
        commands="serve",
    ),
    Setting(
        "database",
        "--database",
        "",
        "SQLAlchemy URL, e.g. postgresql+psycopg://...",
        metavar="URL",
        commands="serve",
        default_text="sqlite file DATA/fleetcast.db",
    ),
    Setting(
        "interface",
        "--interface",
        "",
        "network interface where clients network-boot (DHCP/TFTP by a supervised dnsmasq, only there)",
        metavar="IF",
        commands="serve",
        default_text="none: no network boot",
    ),
    Setting(
        "dhcp",
        "--dhcp",
        "",
        "DHCP on --interface: full (lease --range), proxy (beside the site's DHCP server) or off (TFTP only)",
        metavar="full|proxy|off",
        commands="serve",
        default_text="full with --range, else proxy",
    ),
    Setting(
        "dhcp_range",
        "--range",
        "",
        "addresses full DHCP leases, START-END in --interface's subnet",
        metavar="A-B",
        commands="serve",
        default_text="none",
    ),
    Setting(
        "server_url",
        "--server-url",
        "",
        "URL network-booting clients reach this server at",
        metavar="URL",
        commands="serve",
        default_text="http://IPv4-of-interface:PORT",
    ),
    Setting(
        "bootenv",
        "--bootenv",
        "",
        "boot environment folder (vmlinuz, initrd.img) that clients boot",
        metavar="DIR",
        commands="serve",
        default_text="newest in /var/cache/fleetcast/bootenv",
    ),
    Setting(
        "uefi_boot",
        "--uefi-boot",
        "ipxe",
        "what UEFI PXE clients get: ipxe (snponly.efi) or shim (signed shim + GRUB: Secure Boot on)",
        metavar="ipxe|shim",
        commands="serve",
    ),
    Setting(
        "tls_cert",
        "--tls-cert",
        "",
        "serve HTTPS with this PEM certificate (chain); its SHA-256 fingerprint is printed for agents to "
        "pin (fleetcast.tls=)",
        metavar="FILE",
        commands="serve",
        default_text="none: plain HTTP",
    ),
    Setting(
        "tls_key",
        "--tls-key",
        "",
        "the TLS certificate's private key (PEM, mode 0600)",
        metavar="FILE",
        commands="serve",
        default_text="none",
    ),
)


def setting(key: str) -> Setting:
    for s in SETTINGS:
        if s.key == key:
            return s
    raise KeyError(key)


def flag_help(key: str) -> str:
    """The ``--help`` text of a setting's flag: what it is, its default, environment variable, file key."""
    s = setting(key)
    where = [f"default: {s.shown_default}"]
    if s.env:
        where.append(f"env {s.env}")
    where.append(f"config key '{s.key}'")
    return f"{s.help} ({'; '.join(where)})".replace("%", "%%")


def add_flag(parser: argparse.ArgumentParser, key: str, **kwargs: Any) -> None:
    """Add a setting's flag to ``parser`` with the help text from the table."""
    s = setting(key)
    parser.add_argument(s.flag, metavar=s.metavar, help=flag_help(key), **kwargs)


def load_config_file(path: Path | None) -> dict[str, Any]:
    """Read the TOML config file; a missing default file is fine, a missing named file is an error."""
    target = path or DEFAULT_CONFIG_FILE
    if not target.exists():
        if path is not None:
            raise UsageError(f"config file {target} does not exist")
        return {}
    try:
        with target.open("rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"config file {target} is not valid TOML: {exc}") from exc
    section = data.get("fleetcast", data)
    if not isinstance(section, dict):
        raise UsageError(f"config file {target}: expected a table, found {type(section).__name__}")
    known = {s.key for s in SETTINGS}
    unknown = sorted(set(section) - known - set(SECTIONS))
    if unknown:
        raise UsageError(
            f"config file {target}: unknown setting(s) {', '.join(unknown)}",
            hint=f"known settings: {', '.join(sorted(known))}",
        )
    return section


def resolve(
    key: str,
    flag_value: str | None,
    file_values: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
) -> str:
    """One setting's value by the documented precedence."""
    s = setting(key)
    if flag_value:
        return flag_value
    env = os.environ if environ is None else environ
    if s.env and env.get(s.env):
        return env[s.env]
    if key in file_values:
        return str(file_values[key])
    return s.default


def store_path(
    store_flag: str | None,
    data_flag: str | None,
    file_values: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
) -> Path:
    """The image store: level by level (flag, environment, file), a store beats a data directory D of the
    same level, which means D/store; else /var/lib/fleetcast/store."""
    env = os.environ if environ is None else environ
    levels = (
        (store_flag, data_flag),
        (env.get(STORE_ENV), env.get(DATA_ENV)),
        (file_values.get("store"), file_values.get("data")),
    )
    for store, data in levels:
        if store:
            return Path(str(store))
        if data:
            return Path(str(data)) / "store"
    return DEFAULT_STORE_DIR


def file_values_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The config file named by ``--config`` (or the default one) of a parsed command line."""
    config_file = getattr(args, "config", None)
    return load_config_file(Path(config_file) if config_file else None)


def store_from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Path:
    """:func:`store_path` for a parsed command line (its ``--store``, ``--data`` and ``--config``)."""
    return store_path(
        getattr(args, "store", None), getattr(args, "data", None), file_values_from_args(args), environ
    )


def configuration_markdown() -> str:
    """docs/configuration.md, generated from ``SETTINGS``."""
    lines = [
        "# Configuration",
        "",
        "<!-- generated by `python -m fleetcast.config > docs/configuration.md` from the settings table",
        "     in src/fleetcast/config.py; tests/unit/test_config.py checks it is up to date -->",
        "",
        "Every setting is resolved in this order, highest first: the command-line flag, the environment",
        f"variable, the config file (`{DEFAULT_CONFIG_FILE}`, or the file given with `--config FILE`), the",
        "built-in default. Flags are accepted before or after the command (`fleetcast --data D image list`",
        "or `fleetcast image list --data D`).",
        "",
        "| setting (file key) | flag | environment | default | commands | meaning |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for s in SETTINGS:
        lines.append(
            f"| `{s.key}` | `{s.flag} {s.metavar}` | {f'`{s.env}`' if s.env else '-'} | "
            f"`{s.shown_default}` | {s.commands} | {s.help} |"
        )
    lines += [
        "",
        "## The data directory and the image store",
        "",
        "Every command finds the image store the same way. Level by level (flag, then environment, then",
        "config file), a store given at that level wins over a data directory given at that level, and a",
        "data directory `D` means the store `D/store`:",
        "",
        "- `fleetcast --data D image capture …`, `image list`, `store gc` and `serve` all use `D/store`;",
        '- `--store S` (or `FLEETCAST_STORE=S`, or `store = "S"` in the file) uses `S` whatever the data',
        "  directory is;",
        f"- with nothing given: `{DEFAULT_STORE_DIR}`.",
        "",
        "## The config file",
        "",
        "TOML; the keys above at the top level (or under `[fleetcast]`), and the server's and agent's own",
        "tables `[server]` and `[agent]` (see docs/server.md and docs/agent.md). An unknown key is an",
        "error naming it:",
        "",
        "```toml",
        'data = "/srv/fleetcast"',
        'listen = "0.0.0.0:8080"',
        "",
        "[server]",
        "heartbeat_interval = 10",
        "```",
        "",
        "`[multicast]`: server-wide multicast defaults (see docs/multicast.md#settings: the keys and an",
        "example).",
        "",
        "## Disk images of 4Kn disks",
        "",
        "A plain file has no sector size of its own. fleetcast reads it as a disk with 4096-byte logical",
        "sectors when it holds a GPT for 4096-byte sectors, or when the size is declared on the file:",
        "`setfattr -n user.fleetcast.sector_size -v 4096 disk.img` (a restore or export to a new file",
        "declares it itself). To give such a file to other tools as a 4Kn disk:",
        "`losetup --sector-size 4096 --find --show disk.img`.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(configuration_markdown())
