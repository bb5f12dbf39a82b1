"""transport.http against httpx.MockTransport: retries, limits, statuses, prefetch order."""

from __future__ import annotations

import random
import threading
import time

import httpx
import pytest

from fleetcast.errors import TransportError
from fleetcast.transport.http import HttpChunkSource, HttpStatusError, request

BASE = "http://server.test"


def _client(handler: httpx.MockTransport) -> httpx.Client:
    return httpx.Client(base_url=BASE, transport=handler, headers={"Authorization": "Bearer c"})


def test_fetch_many_keeps_order_with_out_of_order_completion() -> None:
    seen_auth: set[str] = set()

    def handler(req: httpx.Request) -> httpx.Response:
        seen_auth.add(req.headers.get("authorization", ""))
        time.sleep(random.random() * 0.01)
        return httpx.Response(200, content=req.url.path.rsplit("/", 1)[1].encode())

    ids = [f"{i:064x}" for i in range(40)]
    with HttpChunkSource(
        BASE, "c", workers=4, prefetch=8, client=_client(httpx.MockTransport(handler))
    ) as src:
        got = list(src.fetch_many(ids))
        assert [i for i, _ in got] == ids
        assert all(data == i.encode() for i, data in got)
        assert src.chunks_fetched == 40
    assert seen_auth == {"Bearer c"}


def test_prefetch_keeps_several_requests_in_flight() -> None:
    lock = threading.Lock()
    in_flight = 0
    peak = 0

    def handler(req: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        time.sleep(0.02)
        with lock:
            in_flight -= 1
        return httpx.Response(200, content=b"x")

    with HttpChunkSource(
        BASE, "c", workers=3, prefetch=6, client=_client(httpx.MockTransport(handler))
    ) as src:
        assert len(list(src.fetch_many([f"{i:064x}" for i in range(12)]))) == 12
    assert peak == 3


def test_outage_is_ridden_out() -> None:
    calls = 0

    def handler(req: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise httpx.ConnectError("connection refused")
        if calls == 3:
            return httpx.Response(503, json={"error": "x", "message": "busy"})
        return httpx.Response(200, content=b"data")

    with HttpChunkSource(BASE, "c", outage_limit=30, client=_client(httpx.MockTransport(handler))) as src:
        assert src.fetch("a" * 64) == b"data"
    assert calls == 4


def test_outage_longer_than_limit_fails() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    with (
        HttpChunkSource(BASE, "c", outage_limit=0.3, client=_client(httpx.MockTransport(handler))) as src,
        pytest.raises(TransportError) as info,
    ):
        src.fetch("ab" * 32)
    assert str(info.value).startswith(f"chunk {'ab' * 8}: server unreachable for ")
    assert str(info.value).endswith("(limit 0 s): ConnectError: connection refused")


@pytest.mark.parametrize("status", [401, 403, 404])
def test_hopeless_statuses_are_not_retried(status: int) -> None:
    calls = 0

    def handler(req: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(status, json={"error": "E", "message": "no such chunk"})

    with (
        HttpChunkSource(BASE, "c", client=_client(httpx.MockTransport(handler))) as src,
        pytest.raises(HttpStatusError) as info,
    ):
        src.fetch("cd" * 32)
    assert calls == 1
    assert info.value.status == status
    assert str(info.value) == f"chunk {'cd' * 8}: server answered {status}: no such chunk"


def test_stop_interrupts_retries() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out")

    with pytest.raises(TransportError) as info:
        request(
            _client(httpx.MockTransport(handler)),
            "POST",
            "/x",
            outage_limit=600,
            stop=lambda: True,
            what="heartbeat",
        )
    assert str(info.value) == "heartbeat: stopped while the server was unreachable (ReadTimeout: timed out)"


def test_bad_parameters() -> None:
    with pytest.raises(TransportError) as info:
        HttpChunkSource(BASE, "c", workers=0)
    assert str(info.value) == "HTTP chunk source needs workers >= 1 and prefetch >= 1, got 0/16"


def test_warm_starts_early_and_is_reused() -> None:
    fetched: list[str] = []
    lock = threading.Lock()

    def handler(req: httpx.Request) -> httpx.Response:
        cid = req.url.path.rsplit("/", 1)[1]
        with lock:
            fetched.append(cid)
        return httpx.Response(200, content=cid.encode())

    ids = [f"{i:064x}" for i in range(10)]
    with HttpChunkSource(
        BASE, "c", workers=2, prefetch=4, client=_client(httpx.MockTransport(handler))
    ) as src:
        src.warm(ids)
        for _ in range(100):
            if len(fetched) == 4:
                break
            time.sleep(0.01)
        assert sorted(fetched) == ids[:4]  # started before fetch_many was called
        assert [i for i, _ in src.fetch_many(ids)] == ids
    assert sorted(fetched) == ids  # each chunk fetched exactly once


def test_warm_for_other_ids_is_dropped() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=req.url.path.rsplit("/", 1)[1].encode())

    with HttpChunkSource(
        BASE, "c", workers=1, prefetch=2, client=_client(httpx.MockTransport(handler))
    ) as src:
        src.warm(["a" * 64, "b" * 64])
        got = list(src.fetch_many(["c" * 64, "d" * 64]))
    assert got == [("c" * 64, b"c" * 64), ("d" * 64, b"d" * 64)]


def test_packs_asks_only_for_the_missing_packs() -> None:
    from fleetcast.store.source import PackSource

    asked: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        asked.append(req.url.path.rsplit("/", 1)[1])
        return httpx.Response(200, content=asked[-1].encode())

    ids = [f"{i:064x}" for i in range(10)]
    missing = ids[3:7]
    with HttpChunkSource(
        BASE, "c", workers=2, prefetch=4, client=_client(httpx.MockTransport(handler))
    ) as src:
        assert isinstance(src, PackSource)
        got = dict(src.packs(missing))
    assert sorted(asked) == missing and list(got) == missing
    assert all(got[p] == p.encode() for p in missing)
