"""One way to run external commands: logged, clean environment, typed errors with the stderr tail."""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from fleetcast.errors import CommandError

logger = logging.getLogger(__name__)

_CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
STDERR_TAIL_LINES = 20
#: What a child inherits from our own environment (when set): where to write, and the site's web proxy
#: (apt inside mmdebstrap needs it behind one). Nothing else: no FLEETCAST_* setting, no PYTHONPATH, no
#: locale of the caller's terminal (tools' messages are parsed in English).
INHERITED = (
    "HOME",
    "TMPDIR",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
)


def clean_env(
    extra: Mapping[str, str] | None = None, *, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of every child of :func:`run` and :func:`spawn`: the system PATH, the C.UTF-8
    locale, the :data:`INHERITED` variables that ``environ`` (default ``os.environ``) has, then ``extra``
    (which wins, PATH included). Settings reach children as arguments, never by inheritance."""
    source = os.environ if environ is None else environ
    env = {"PATH": _CLEAN_PATH, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
    env.update((key, source[key]) for key in INHERITED if key in source)
    if extra:
        env.update(extra)
    return env


def which(program: str, *, package: str | None = None) -> str:
    """Absolute path of ``program`` or a CommandError naming the Debian package that provides it."""
    found = shutil.which(program, path=_CLEAN_PATH)
    if found is None:
        hint = f"install it: apt-get install {package}" if package else "install it and retry"
        raise CommandError(f"required program {program!r} is not installed", argv=[program], hint=hint)
    return found


def _tail(text: str) -> str:
    return "\n".join(text.strip().splitlines()[-STDERR_TAIL_LINES:])


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    input: bytes | None = None,
    check: bool = True,
    capture: bool = True,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run a command to completion; raise CommandError (with its stderr tail) when it fails."""
    args = [os.fspath(a) for a in argv]
    logger.debug("run: %s", shlex.join(args))
    try:
        proc = subprocess.run(
            args,
            input=input,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            env=clean_env(env),
            cwd=cwd,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise CommandError(f"program {args[0]!r} not found", argv=args) from exc
    except subprocess.TimeoutExpired as exc:
        raise CommandError(f"{shlex.join(args)} did not finish within {timeout} s", argv=args) from exc
    if check and proc.returncode != 0:
        stderr = _tail((proc.stderr or b"").decode(errors="replace"))
        raise CommandError(
            f"{args[0]} failed with exit status {proc.returncode}: {stderr or '(no error output)'}",
            argv=args,
            returncode=proc.returncode,
            stderr=stderr,
        )
    return proc


def run_text(
    argv: Sequence[str | os.PathLike[str]],
    *,
    input: bytes | None = None,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float | None = None,
) -> str:
    """Run a command and return its standard output as text (as :func:`run`, output captured)."""
    proc = run(argv, input=input, check=check, env=env, cwd=cwd, timeout=timeout)
    return (proc.stdout or b"").decode()


def spawn(
    argv: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    stdin: int | None = subprocess.DEVNULL,
    stdout: int | None = subprocess.PIPE,
    stderr: int | None = subprocess.PIPE,
    new_session: bool = False,
) -> subprocess.Popen[bytes]:
    """Start a long-running child (dnsmasq, qemu, udp-sender); the caller owns and ends it by PID.
    Its environment is :func:`clean_env` (``env`` added), as for :func:`run`: a child that needs a
    variable of ours (the lab's agents, a PYTHONPATH) gets it through ``env``.
    ``new_session``: the child is not in the caller's session, so a signal to the caller's process
    group (Ctrl-C, a kill of the group) does not reach it."""
    args = [os.fspath(a) for a in argv]
    logger.debug("spawn: %s", shlex.join(args))
    try:
        return subprocess.Popen(
            args,
            env=clean_env(env),
            cwd=cwd,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            start_new_session=new_session,
        )
    except FileNotFoundError as exc:
        raise CommandError(f"program {args[0]!r} not found", argv=args) from exc
