"""run.py: the children's environment, typed errors with the stderr tail."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fleetcast.errors import CommandError
from fleetcast.run import clean_env, run, run_text, spawn


def test_clean_env_keeps_only_path_locale_home_tmpdir_and_proxies() -> None:
    outer = {
        "PATH": "/home/u/bin",
        "LANG": "de_DE.UTF-8",
        "HOME": "/root",
        "https_proxy": "http://proxy:3128",
        "FLEETCAST_DATA": "/srv/fc",
        "PYTHONPATH": "/src",
    }
    env = clean_env(environ=outer)
    assert env == {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LC_ALL": "C.UTF-8",
        "LANG": "C.UTF-8",
        "HOME": "/root",
        "https_proxy": "http://proxy:3128",
    }
    assert clean_env({"PATH": "/opt/bin", "X": "1"}, environ=outer)["PATH"] == "/opt/bin"
    assert clean_env({"X": "1"}, environ=outer)["X"] == "1"


def test_spawn_and_run_give_the_child_the_clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETCAST_DATA", "/srv/leak")
    monkeypatch.setenv("HOME", "/home/kept")
    code = "import os, json; print(json.dumps(dict(os.environ)))"
    proc = spawn([sys.executable, "-c", code], env={"EXTRA": "yes"})
    out, _ = proc.communicate(timeout=60)
    for text in (out.decode(), run_text([sys.executable, "-c", code])):
        assert '"FLEETCAST_DATA"' not in text
        assert '"HOME": "/home/kept"' in text
        assert '"LC_ALL": "C.UTF-8"' in text
    assert '"EXTRA": "yes"' in out.decode()


def test_failure_names_the_program_status_and_stderr_tail() -> None:
    lines = "; ".join(f"print('line {n}', file=sys.stderr)" for n in range(30))
    with pytest.raises(CommandError) as info:
        run([sys.executable, "-c", f"import sys; {lines}; sys.exit(3)"])
    assert info.value.returncode == 3
    assert info.value.message.startswith(f"{sys.executable} failed with exit status 3: line 10\n")
    assert info.value.message.endswith("line 29")
    assert run([sys.executable, "-c", "import sys; sys.exit(4)"], check=False).returncode == 4


def test_missing_program_and_timeout_are_command_errors() -> None:
    with pytest.raises(CommandError, match="program 'fleetcast-no-such-tool' not found"):
        run(["fleetcast-no-such-tool"])
    with pytest.raises(CommandError, match="program 'fleetcast-no-such-tool' not found"):
        spawn(["fleetcast-no-such-tool"], stdout=subprocess.DEVNULL)
    with pytest.raises(CommandError, match=r"did not finish within 0.2 s"):
        run([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.2)
