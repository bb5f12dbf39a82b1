"""The check every sub-table of the config file gets first (``[server]``, ``[multicast]``): it is a
table, and it names only keys its owner knows (a typo must not silently leave a setting out)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from fleetcast.errors import UsageError


def check_table(name: str, table: object, keys: Collection[str], source: str) -> Mapping[str, Any]:
    """``table`` as a mapping; UsageError when it is not a table or has keys outside ``keys``."""
    if not isinstance(table, Mapping):
        raise UsageError(f"{source}: [{name}] must be a table, found {type(table).__name__}")
    unknown = sorted(set(table) - set(keys))
    if unknown:
        raise UsageError(
            f"{source}: unknown {name} setting(s) {', '.join(unknown)}", hint=f"known: {', '.join(keys)}"
        )
    return table
