"""Settings resolved once at start-up and passed down; nothing deeper reads the environment.

Precedence, highest first: command-line flag, environment variable (where one is named),
config file (``/etc/fleetcast/fleetcast.toml`` or ``--config``), built-in default.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetcast.errors import UsageError

DEFAULT_CONFIG_FILE = Path("/etc/fleetcast/fleetcast.toml")
DEFAULT_DATA_DIR = Path("/var/lib/fleetcast")
DEFAULT_STORE_DIR = DEFAULT_DATA_DIR / "store"
STORE_ENV = "FLEETCAST_STORE"


@dataclass(frozen=True)
class Setting:
    """One row of the settings table: drives the config file keys, CLI flags and docs."""

    key: str
    flag: str
    default: str
    help: str
    env: str | None = None


SETTINGS: tuple[Setting, ...] = (
    Setting("data", "--data", str(DEFAULT_DATA_DIR), "data directory: state database, store, secrets"),
    Setting("store", "--store", "", "image store directory (default: DATA/store)", env=STORE_ENV),
    Setting("listen", "--listen", "0.0.0.0:8080", "server address and port"),
    Setting("database", "--database", "", "SQLAlchemy URL (default: sqlite file under DATA)"),
)


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
    unknown = sorted(set(section) - known - {"server", "agent"})
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
    setting = next(s for s in SETTINGS if s.key == key)
    if flag_value:
        return flag_value
    env = os.environ if environ is None else environ
    if setting.env and env.get(setting.env):
        return env[setting.env]
    if key in file_values:
        return str(file_values[key])
    return setting.default


def store_dir(flag_value: str | None, environ: Mapping[str, str] | None = None) -> Path:
    """``--store DIR``, else ``$FLEETCAST_STORE``, else ``/var/lib/fleetcast/store``."""
    env = os.environ if environ is None else environ
    if flag_value:
        return Path(flag_value)
    if env.get(STORE_ENV):
        return Path(env[STORE_ENV])
    return DEFAULT_STORE_DIR
