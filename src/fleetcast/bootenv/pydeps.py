"""fleetcast and the Python distributions its agent imports, copied into the boot environment.

The initrd's python3 is Debian's (3.11, like the interpreter running this), so the installed files of
the running interpreter's distributions (compiled extensions included) work there as they are."""

from __future__ import annotations

import compileall
import importlib.metadata as md
import logging
import py_compile
import shutil
import sys
from pathlib import Path

from fleetcast.bootenv.options import AGENT_DISTRIBUTIONS, source_tree
from fleetcast.errors import CommandError
from fleetcast.run import run

logger = logging.getLogger(__name__)

SITE = Path("usr/local/lib/python3.11/dist-packages")
# Trees compiled to .pyc at build time: without them every boot compiles fleetcast, httpx, pydantic ...
# again under the client's CPU (2.2 s instead of 0.5 s on the build host; ~10 s under QEMU TCG).
COMPILED = (SITE, Path("usr/lib/python3/dist-packages"))


def closure(names: tuple[str, ...]) -> list[md.Distribution]:
    """The distributions named and everything they require (markers evaluated without extras)."""
    from packaging.requirements import Requirement  # build host only: the initrd has no packaging

    todo = list(names)
    found: dict[str, md.Distribution] = {}
    while todo:
        name = todo.pop()
        canon = name.lower().replace("_", "-")
        if canon in found:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError as exc:
            raise CommandError(
                f"boot environment: Python distribution {name!r} is not installed here",
                argv=[],
                hint="run 'make setup' (the agent's dependencies are copied from this interpreter)",
            ) from exc
        found[canon] = dist
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return [found[k] for k in sorted(found)]


def install(root: Path) -> list[str]:
    """Copy the agent's distributions and the fleetcast package; return ``name==version`` lines."""
    site = root / SITE
    site.mkdir(parents=True, exist_ok=True)
    lines = []
    for dist in closure(AGENT_DISTRIBUTIONS):
        base = Path(str(dist.locate_file("")))
        for f in dist.files or []:
            src = Path(str(dist.locate_file(f)))
            rel = src.relative_to(base) if src.is_relative_to(base) else None
            if rel is None or rel.parts[0] == ".." or "__pycache__" in rel.parts or not src.is_file():
                continue
            if rel.parts[0].endswith(".data") or rel.suffix == ".pyc":
                continue
            dest = site / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
        lines.append(f"{dist.metadata['Name']}=={dist.version}")
    shutil.copytree(
        source_tree(),
        site / "fleetcast",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        dirs_exist_ok=True,
    )
    return lines


def strip_debug(root: Path) -> int:
    """``strip --strip-debug`` the compiled extensions copied into :data:`SITE` (zstandard's wheel ships
    two with their debug info: 23.7 MB of a 251 MiB initrd tree, 2 MB stripped); the count stripped.
    Without binutils' ``strip`` on the build host they stay as they are (a warning)."""
    if shutil.which("strip") is None:
        logger.warning("boot environment: no 'strip' (binutils): Python extensions keep their debug info")
        return 0
    count = 0
    for so in sorted((root / SITE).rglob("*.so")):
        if so.is_file() and not so.is_symlink():
            run(["strip", "--strip-debug", so])
            count += 1
    return count


def compile_pyc(root: Path) -> int:
    """Compile :data:`COMPILED` under ``root`` to ``__pycache__/*.cpython-311.pyc`` with unchecked hashes
    (valid whatever the files' mtimes; the initrd never changes). The build interpreter must be the
    initrd's Python version (both are Debian's 3.11), else the .pyc would be ignored: CommandError.
    Returns the number of trees compiled."""
    want = root / "usr" / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    if not want.is_dir():
        found = sorted(p.name for p in (root / "usr" / "lib").glob("python3.*"))
        raise CommandError(
            f"boot environment: the build runs Python {sys.version_info.major}.{sys.version_info.minor} "
            f"but the initrd has {', '.join(found) or 'no python3.X'}: its .pyc would not match",
            argv=[],
            hint="build with Debian's python3 of the same release (make setup)",
        )
    done = 0
    for rel in COMPILED:
        tree = root / rel
        if not tree.is_dir():
            continue
        ok = compileall.compile_dir(
            tree,
            ddir=f"/{rel}",
            quiet=2,
            workers=0,
            invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
        )
        if not ok:  # such a file is compiled (or fails) at import, as without this step
            logger.warning("boot environment: some Python files in /%s did not compile", rel)
        done += 1
    return done
