"""Kit for the console's browser tests: Debian's Chromium driven by Playwright (launched by path, never
`playwright install`), screenshots under tests/artifacts/, and a TCP relay from the host's loopback
into a lab namespace (the server of FleetLab listens inside its namespace only)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Browser, Page, sync_playwright

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-gpu",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "correct horse battery"


@contextmanager
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def new_page(b: Browser, width: int = 1366, height: int = 768) -> Page:
    page = b.new_page(viewport={"width": width, "height": height})
    page.set_default_timeout(30_000)
    return page


def shot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def set_password(page: Page, url: str, password: str = PASSWORD) -> None:
    page.goto(url + "/")
    page.wait_for_url("**/setup")
    page.get_by_label("Password (at least 8 characters)").fill(password)
    page.get_by_label("The same password again").fill(password)
    page.get_by_role("button", name="Set password and sign in").click()
    page.wait_for_url(url + "/")


def sign_in(page: Page, url: str, name: str, password: str) -> None:
    page.goto(url + "/signin")
    page.get_by_label("User name").fill(name)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


_RELAY = r"""
import ctypes, os, socket, sys, threading
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", 0))
listener.listen(64)
fd = os.open(sys.argv[1], os.O_RDONLY)
# sockets made from now on live in the lab namespace; the listener stays (Python 3.11 has no os.setns)
if ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000) != 0:
    raise OSError(ctypes.get_errno(), "setns")
target = (sys.argv[2], int(sys.argv[3]))
print(listener.getsockname()[1], flush=True)

def pipe(a, b):
    try:
        while data := a.recv(65536):
            b.sendall(data)
    except OSError:
        pass
    finally:
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

while True:
    conn, _ = listener.accept()
    try:
        up = socket.create_connection(target)
    except OSError:
        conn.close()
        continue
    threading.Thread(target=pipe, args=(conn, up), daemon=True).start()
    threading.Thread(target=pipe, args=(up, conn), daemon=True).start()
"""


@contextmanager
def relay(netns: str, host: str, port: int) -> Iterator[str]:
    """``http://127.0.0.1:P`` on the host, relayed to ``host:port`` inside namespace ``netns``;
    the relay process is ended by its PID afterwards."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _RELAY, f"/run/netns/{netns}", host, str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        local = int(proc.stdout.readline())
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", local), timeout=2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "relay did not listen"
                time.sleep(0.1)
        yield f"http://127.0.0.1:{local}"
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


__all__ = ["ARTIFACTS", "PASSWORD", "browser", "new_page", "relay", "set_password", "shot", "sign_in"]
