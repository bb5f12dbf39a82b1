"""A built boot environment (the shared cache: built once per input hash) and a QEMU serial-console runner."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from bootenvkit import Serial

from fleetcast.bootenv import BootEnv, BootEnvOptions, ensure


@pytest.fixture(scope="session")
def bootenv() -> BootEnv:
    return ensure(BootEnvOptions())


@pytest.fixture
def qemu(tmp_path: Path) -> Iterator[type[Serial]]:
    started: list[Serial] = []

    class Tracked(Serial):
        def __init__(self, args: Sequence[str], log: Path | None = None) -> None:
            super().__init__(args, log or tmp_path / f"serial{len(started)}.log")
            started.append(self)

    yield Tracked
    for s in started:
        s.stop()
