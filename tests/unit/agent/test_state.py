"""Each agent's state is its own (keyed by identity, locked), and its credential survives a restart."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from fleetcast.agent.state import claim
from fleetcast.errors import AgentError


def test_two_identities_on_one_host_have_separate_states(tmp_path: Path) -> None:
    a, lock_a = claim(tmp_path, "52:54:00:00:00:01")
    b, lock_b = claim(tmp_path, "52:54:00:00:00:02")
    assert (a.directory, b.directory) == (tmp_path / "525400000001", tmp_path / "525400000002")
    lock_a.release()
    lock_b.release()


def test_a_second_agent_of_one_identity_is_refused_naming_the_first(tmp_path: Path) -> None:
    code = (
        "import sys, time; from pathlib import Path; from fleetcast.agent.state import claim; "
        f"held = claim(Path({str(tmp_path)!r}), '52:54:00:00:00:01'); "
        "print('held', flush=True); time.sleep(60)"
    )
    other = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout is not None and other.stdout.readline() == "held\n"
        with pytest.raises(AgentError) as info:
            claim(tmp_path, "52:54:00:00:00:01")
        assert str(info.value) == (
            f"agent state directory {tmp_path / '525400000001'} is in use by another agent (PID {other.pid})"
        )
    finally:
        other.kill()
        other.wait()
        assert other.stdout is not None
        other.stdout.close()
    _, lock = claim(tmp_path, "52:54:00:00:00:01")  # the dead agent's lock is gone with it
    lock.release()


def test_credential_round_trip_is_private_and_per_server(tmp_path: Path) -> None:
    store, lock = claim(tmp_path, "52:54:00:00:00:01")
    assert store.load_credential("http://s") is None
    store.save_credential("http://s", "fc_abc")
    assert store.load_credential("http://s") == "fc_abc"
    assert store.load_credential("http://other") is None
    mode = stat.S_IMODE(os.stat(store.directory / "credential.json").st_mode)
    assert mode == 0o600
    lock.release()


def test_tls_pin_survives_a_restart_per_server_and_is_private(tmp_path: Path) -> None:
    from fleetcast.agent.state import PINS_FILE, load_pin, save_pin

    pin = "sha256:" + "ab" * 32
    assert load_pin(tmp_path, "https://srv:8443") is None
    save_pin(tmp_path, "https://srv:8443/", "AB:" * 31 + "AB")  # the pasted form, normalized
    assert load_pin(tmp_path, "https://srv:8443") == pin
    assert load_pin(tmp_path, "https://other:8443") is None
    assert stat.S_IMODE(os.stat(tmp_path / PINS_FILE).st_mode) == 0o600
    save_pin(tmp_path, "https://srv:8443", "cd" * 32)  # a pin given again replaces it
    assert load_pin(tmp_path, "https://srv:8443") == "sha256:" + "cd" * 32
    (tmp_path / PINS_FILE).write_text("[not a dict")
    assert load_pin(tmp_path, "https://srv:8443") is None
    with pytest.raises(AgentError) as bad:
        save_pin(tmp_path, "https://srv:8443", "not-hex")
    assert bad.value.message == "TLS fingerprint 'not-hex' is not a SHA-256 fingerprint (64 hex digits)"
