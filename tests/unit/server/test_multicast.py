"""--transport in the plan and the deployment; start rules changed while waiting; exact refusals."""

from __future__ import annotations

import pytest
from serverkit import IMAGE, Server

from fleetcast.errors import UsageError
from fleetcast.server.multicast import MulticastOptions, check_options, resolve_transport

MACS = [f"52:54:00:00:01:{i:02x}" for i in range(1, 6)]


def test_auto_is_multicast_from_k_clients_per_batch() -> None:
    opts = MulticastOptions()
    assert resolve_transport("auto", batch=4, clients=5, opts=opts) == (
        "multicast", "auto: batches of 4 clients (multicast from 4)",
    )  # fmt: skip
    assert resolve_transport("auto", batch=8, clients=3, opts=opts)[0] == "unicast"
    assert (
        resolve_transport("auto", batch=2, clients=9, opts=MulticastOptions(multicast_from=2))[0]
        == "multicast"
    )
    assert resolve_transport("unicast", batch=50, clients=50, opts=opts) == ("unicast", "unicast (asked for)")


@pytest.mark.parametrize(
    ("transport", "opts", "message"),
    [
        (
            "carrier-pigeon",
            MulticastOptions(),
            "transport 'carrier-pigeon' is not one of unicast, multicast, auto",
        ),
        ("multicast", MulticastOptions(min_clients=0), "--min-clients must be at least 1, found 0"),
        ("multicast", MulticastOptions(max_wait=-1), "--max-wait must be 0 to 86400 seconds, found -1"),
        ("auto", MulticastOptions(multicast_from=0), "--multicast-from must be at least 1, found 0"),
        ("multicast", MulticastOptions(drop_below=-5), "--drop-below must be 0 or more bytes/s, found -5"),
    ],
)
def test_bad_options_are_refused(transport: str, opts: MulticastOptions, message: str) -> None:
    with pytest.raises(UsageError) as info:
        check_options(transport, opts)
    assert info.value.message == message


def test_plan_and_deployment_show_the_transport(server: Server) -> None:
    for mac in MACS:
        server.agent(mac)
    body = {"image": IMAGE, "clients": "all", "disk": "0", "batch": 5, "transport": "auto", "max_wait": 5.0}
    plan = server.post("/api/deployments/plan", body)
    assert (plan["transport"], plan["transport_reason"]) == (
        "multicast", "auto: batches of 5 clients (multicast from 4)",
    )  # fmt: skip
    assert plan["multicast"] == {"min_clients": None, "max_wait": 5.0, "multicast_from": 4, "drop_below": 0.0}
    dep = server.post("/api/deployments", body, status=201)
    assert dep["transport"] == "multicast"
    view = server.get(f"/api/deployments/{dep['deployment']}/multicast")
    assert (view["transport"], view["sessions"]) == ("multicast", [])
    changed = server.post(f"/api/deployments/{dep['deployment']}/multicast", {"min_clients": 3})
    assert changed["options"]["min_clients"] == 3
    assert server.post("/api/deployments/plan", {**body, "batch": 3})["transport"] == "unicast"


def test_repair_mode_and_start_now_through_the_rules_endpoint(server: Server) -> None:
    for mac in MACS[:4]:
        server.agent(mac)
    body = {"image": IMAGE, "clients": "all", "disk": "0", "batch": 4, "transport": "multicast"}
    dep = server.post("/api/deployments", body, status=201)["deployment"]
    view = server.post(f"/api/deployments/{dep}/multicast", {"repair": "cycle"})
    assert view["options"]["repair"] == "cycle"
    bad = server.post(f"/api/deployments/{dep}/multicast", {"repair": "pigeon"}, status=400)
    assert "repair must be one of sooner, cycle, http, found 'pigeon'" in str(bad)
    none = server.post(f"/api/deployments/{dep}/multicast", {"start_now": True}, status=409)
    assert "has no waiting multicast session with a client in it to start (its newest session: none)" in str(
        none
    )
    empty = server.post(f"/api/deployments/{dep}/multicast", {}, status=400)
    assert "nothing to change: give min_clients, max_wait, repair and/or start_now" in str(empty)
