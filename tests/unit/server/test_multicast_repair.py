"""Next cycle or HTTP (server/multicast_repair.py): the estimate and the choice, with fixed numbers."""

from __future__ import annotations

import pytest

from fleetcast.errors import TransportError
from fleetcast.server.multicast_repair import CYCLE_START, GUESS_RATE, choose, estimate
from fleetcast.transport.multicast import from_ranges, to_ranges

MB = 1_000_000
RATE = 10 * MB  # bytes/s


def test_a_lone_late_joiner_of_a_whole_image_takes_http() -> None:
    # 100 MB image, the stream has 90 MB to go: HTTP shares the link with it, then has it alone
    est = estimate(missing=100 * MB, union=100 * MB, remaining=90 * MB, rate=RATE, http_clients=0)
    assert est.cycle == pytest.approx(9 + CYCLE_START + 10)
    assert est.http == pytest.approx(9 + (100 - 45) / 10)  # 45 MB at half the link, 55 MB at all of it
    assert est.sooner == "http"


def test_the_next_cycle_is_sooner_when_others_already_repair_by_http() -> None:
    # two clients on HTTP already: a third would get a quarter of the link while the stream runs
    est = estimate(missing=100 * MB, union=100 * MB, remaining=20 * MB, rate=RATE, http_clients=2)
    assert est.cycle == pytest.approx(2 + CYCLE_START + 10)
    assert est.http == pytest.approx(2 + (100 - 5) * 3 / 10)
    assert est.sooner == "cycle"


def test_a_few_missing_packs_come_by_http_and_no_stream_means_the_whole_link() -> None:
    assert (
        estimate(missing=2 * MB, union=2 * MB, remaining=50 * MB, rate=RATE, http_clients=0).sooner == "http"
    )
    idle = estimate(missing=30 * MB, union=30 * MB, remaining=0, rate=RATE, http_clients=0)
    assert (idle.http, idle.cycle) == (pytest.approx(3.0), pytest.approx(CYCLE_START + 3))
    assert estimate(missing=1, union=1, remaining=0, rate=None, http_clients=0).rate == GUESS_RATE


def test_the_mode_and_the_cycle_limit_decide_first() -> None:
    est = estimate(missing=100 * MB, union=100 * MB, remaining=90 * MB, rate=RATE, http_clients=0)
    assert choose("sooner", est, cycle=2, max_cycles=3) == "http"
    assert choose("cycle", est, cycle=2, max_cycles=3) == "cycle"
    assert choose("cycle", est, cycle=4, max_cycles=3) == "http"
    assert choose("http", est, cycle=2, max_cycles=3) == "http"
    assert est.to_dict() == {"cycle_s": 22.0, "http_s": 14.5, "rate_bps": 10_000_000}


def test_pack_ranges_round_trip_and_refuse_what_is_out_of_the_image() -> None:
    assert to_ranges([5, 1, 2, 3, 9, 2]) == [[1, 4], [5, 6], [9, 10]]
    assert from_ranges([[1, 4], [9, 10]], 10) == {1, 2, 3, 9}
    assert to_ranges([]) == []
    with pytest.raises(TransportError, match=r"pack range \[3, 11\] is not \[start, end\) within 0..10"):
        from_ranges([[3, 11]], 10)
    with pytest.raises(TransportError, match="pack range"):
        from_ranges([[4, 4]], 10)
