"""Every third-party module the agent's code imports is in the boot environment (issue 8): pydantic and
then regipy were missing from the initrd, and a network-booted agent died at import, or failed at its
first Windows personalization, though every test outside the boot environment passed."""

from __future__ import annotations

import ast
import importlib.metadata as md
import sys
from pathlib import Path

import fleetcast
from fleetcast.bootenv.options import AGENT_DISTRIBUTIONS, BASE_PACKAGES
from fleetcast.bootenv.pydeps import closure

SRC = Path(fleetcast.__file__).parent
# what the agent runs: its packages, everything they reach below, and its command line
AGENT_TREES = ("agent", "identity", "store", "disk", "transport")
AGENT_FILES = ("protocol.py", "errors.py", "run.py", "config.py", "progress.py", "log.py", "pidlock.py",
               "cli/main.py", "cli/common.py", "cli/agent.py")  # fmt: skip
# modules that come from Debian packages of the boot environment, not from Python distributions
FROM_DEBIAN = {"hivex": "python3-hivex"}


def _imported(files: list[Path]) -> set[str]:
    """Top-level names of every absolute import, also those inside functions (lazy imports)."""
    names: set[str] = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def test_every_module_the_agent_imports_is_in_the_boot_environment() -> None:
    files = [p for tree in AGENT_TREES for p in (SRC / tree).rglob("*.py")] + [SRC / f for f in AGENT_FILES]
    third_party = {n for n in _imported(files) if n not in sys.stdlib_module_names and n != "fleetcast"}
    assert "httpx" in third_party  # the scan sees the agent's imports at all
    shipped = {d.metadata["Name"].lower().replace("_", "-") for d in closure(AGENT_DISTRIBUTIONS)}
    by_module = md.packages_distributions()
    missing = []
    for name in sorted(third_party):
        if name in FROM_DEBIAN:
            assert FROM_DEBIAN[name] in BASE_PACKAGES, (
                f"{name}: Debian package {FROM_DEBIAN[name]} not in the image"
            )
            continue
        dists = {d.lower().replace("_", "-") for d in by_module.get(name, [])}
        if not dists & shipped:
            missing.append(f"{name} (distribution {', '.join(sorted(dists)) or 'unknown'})")
    assert missing == [], f"imported by the agent's code but not in AGENT_DISTRIBUTIONS' closure: {missing}"
