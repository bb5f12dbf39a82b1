"""Full hive dumps through python-registry (independent of hivex) for before/after comparisons."""

from __future__ import annotations

from pathlib import Path

from Registry import Registry

Dump = dict[str, dict[str, tuple[int, bytes]]]


def dump(path: Path) -> Dump:
    reg = Registry.Registry(str(path))
    out: Dump = {}

    def walk(key: Registry.RegistryKey, prefix: str) -> None:
        out[prefix.lower()] = {v.name(): (v.value_type(), v.raw_data()) for v in key.values()}
        for sub in key.subkeys():
            walk(sub, f"{prefix}\\{sub.name()}" if prefix else sub.name())

    walk(reg.root(), "")
    return out
