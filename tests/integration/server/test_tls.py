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

from fleetcast.server.tls import fingerprint_of_der

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
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


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
    for extra, message in cases:
        proc = cli(*base, *extra, check=False, timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.splitlines()[0] == message
