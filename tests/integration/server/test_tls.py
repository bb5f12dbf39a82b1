"""``fleetcast serve --tls-cert --tls-key`` (issue 12 item 13): HTTPS only, the printed fingerprint
is the one the server presents, and a bad pair is refused before anything starts."""

from __future__ import annotations

import os
import ssl
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from servekit import FLEETCAST, cli, free_port

from fleetcast.agent.api import AgentApi
from fleetcast.errors import AgentError, TransportError
from fleetcast.server.tls import fingerprint, fingerprint_of_der

pytestmark = pytest.mark.integration


def self_signed(folder: Path, name: str = "server") -> tuple[Path, Path]:
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-days", "2",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    os.chmod(key, 0o600)
    return cert, key


def test_serve_speaks_https_with_the_printed_fingerprint(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    port = free_port()
    data = tmp_path / "data"
    log = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETCAST_")}
    args = [str(FLEETCAST), "serve", "--data", str(data), "--listen", f"127.0.0.1:{port}"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*args, "--tls-cert", str(cert), "--tls-key", str(key)], stdout=out, stderr=subprocess.STDOUT,
            env=env,
        )  # fmt: skip
    try:
        url = f"https://127.0.0.1:{port}"
        verify = ssl.create_default_context(cafile=str(cert))
        for _ in range(300):
            assert proc.poll() is None, log.read_text()
            try:
                r = httpx.get(url + "/api/health", verify=verify, timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert r.json()["ok"] is True
        presented = ssl.get_server_certificate(("127.0.0.1", port))
        printed = fingerprint_of_der(ssl.PEM_cert_to_DER_cert(presented))
        text = log.read_text()
        assert f"fleetcast server: https://127.0.0.1:{port}/api" in text
        assert f"TLS certificate fingerprint: {printed}\n" in text
        assert cli("admin", "tls-fingerprint", "--tls-cert", str(cert)).stdout == printed + "\n"
        with pytest.raises(httpx.HTTPError):  # plain HTTP on the TLS port gets no answer
            httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=5)
        admin = cli("--data", str(data), "admin", "token").stdout.strip()
        r = httpx.get(url + "/api/clients", verify=verify, headers={"Authorization": f"Bearer {admin}"})
        assert r.json() == {"clients": []}
        enroll = cli("--data", str(data), "admin", "enroll-token").stdout.strip()
        agents_pin(url, printed, enroll, self_signed(tmp_path, "impostor")[0], tmp_path / "agent")
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def agents_pin(url: str, printed: str, enroll: str, impostor: Path, state: Path) -> None:
    """The agent's side (agent/tlspin.py): the printed fingerprint is accepted in the forms people
    paste, any other certificate is refused before the enrollment token leaves the agent, and a
    self-signed server without a pin fails the system's authorities."""
    inventory = {"macs": ["52:54:00:12:00:01"], "hostname": "pinned"}
    bare = printed.removeprefix("sha256:")
    colons = ":".join(bare[i : i + 2] for i in range(0, 64, 2)).upper()
    for pin in (printed, bare, colons):
        api = AgentApi(url, tls_fingerprint=pin, outage_limit=0)
        try:
            if pin == printed:
                assert api.enroll(enroll, inventory) > 0
                assert api.heartbeat(None, None).task is None
                assert api.tls_fingerprint == printed
            else:
                assert api.tls_fingerprint == printed
        finally:
            api.close()
    wrong = fingerprint(impostor)
    api = AgentApi(url, tls_fingerprint=wrong, outage_limit=0)
    with pytest.raises(TransportError) as refused:
        api.enroll(enroll, {"macs": ["52:54:00:12:00:02"]})
    api.close()
    assert (
        f"the server's certificate {printed} is not the pinned {wrong} (fleetcast.tls=)"
        in refused.value.message
    )
    restarted_agent_keeps_its_pin(url, printed, wrong, enroll, state)
    api = AgentApi(url, outage_limit=0)
    with pytest.raises(TransportError, match="CERTIFICATE_VERIFY_FAILED"):
        api.enroll(enroll, {"macs": ["52:54:00:12:00:03"]})
    api.close()
    with pytest.raises(AgentError) as plain:
        AgentApi(url.replace("https://", "http://"), tls_fingerprint=printed)
    assert plain.value.message.startswith("a TLS fingerprint is set but the server URL 'http://127.0.0.1:")
    with pytest.raises(AgentError) as bad:
        AgentApi(url, tls_fingerprint="sha256:1234")
    assert bad.value.message == "TLS fingerprint 'sha256:1234' is not a SHA-256 fingerprint (64 hex digits)"


def restarted_agent_keeps_its_pin(url: str, printed: str, wrong: str, enroll: str, state: Path) -> None:
    """An agent started without a fingerprint uses the one kept for this URL in its state directory
    (agent/state.py): the kept wrong pin refuses the real server, the kept right one enrolls."""
    from fleetcast.agent.loop import Agent, AgentSettings
    from fleetcast.agent.state import save_pin

    for kept, ok in ((wrong, False), (printed, True)):
        save_pin(state, url, kept)
        agent = Agent(AgentSettings(server=url, enroll_token=enroll, state_dir=state, outage_limit=0))
        try:
            assert agent.api.tls_fingerprint == kept
            if ok:
                assert agent.api.enroll(enroll, {"macs": ["52:54:00:12:00:04"]}) > 0
            else:
                with pytest.raises(TransportError) as refused:
                    agent.api.enroll(enroll, {"macs": ["52:54:00:12:00:04"]})
                assert f"is not the pinned {wrong}" in refused.value.message
        finally:
            agent.api.close()


def test_bad_tls_files_are_refused_before_start(tmp_path: Path) -> None:
    cert, _key = self_signed(tmp_path, "a")
    _other_cert, other_key = self_signed(tmp_path, "b")
    base = ["serve", "--data", str(tmp_path / "data"), "--listen", f"127.0.0.1:{free_port()}"]
    cases = [
        (["--tls-cert", str(cert)], "fleetcast: error: --tls-cert and --tls-key go together: give both "
         "(or neither, for plain HTTP)"),
        (["--tls-cert", str(cert), "--tls-key", str(other_key)],
         f"fleetcast: error: TLS key {other_key} does not fit certificate {cert}: KEY_VALUES_MISMATCH"),
        (["--tls-cert", str(tmp_path / "none.pem"), "--tls-key", str(other_key)],
         f"fleetcast: error: TLS certificate {tmp_path / 'none.pem'} cannot be read: "
         "No such file or directory"),
        (["--tls-cert", str(other_key), "--tls-key", str(other_key)],
         f"fleetcast: error: TLS certificate {other_key} has no PEM certificate "
         "(-----BEGIN CERTIFICATE-----)"),
    ]  # fmt: skip
    cfg = tmp_path / "fleetcast.toml"  # the settings table: tls_cert/tls_key in the config file too
    cfg.write_text(f'tls_cert = "{cert}"\n')
    cases.append(
        (["--config", str(cfg)], "fleetcast: error: --tls-cert and --tls-key go together: give both "
         "(or neither, for plain HTTP)")
    )  # fmt: skip
    cfg2 = tmp_path / "pair.toml"
    cfg2.write_text(f'tls_cert = "{cert}"\ntls_key = "{other_key}"\n')
    cases.append(
        (["--config", str(cfg2)],
         f"fleetcast: error: TLS key {other_key} does not fit certificate {cert}: KEY_VALUES_MISMATCH")
    )  # fmt: skip
    for extra, message in cases:
        proc = cli(*base, *extra, check=False, timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.splitlines()[0] == message
