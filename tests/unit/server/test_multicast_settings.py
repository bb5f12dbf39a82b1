"""The ``[multicast]`` table (server/multicast_settings.py) and the defaults it gives deployments."""

from __future__ import annotations

import pytest

from fleetcast.errors import UsageError
from fleetcast.server.multicast import MulticastOptions
from fleetcast.server.multicast_settings import MulticastSettings, from_table


def test_defaults_and_a_full_table() -> None:
    assert from_table(None) == MulticastSettings()
    assert from_table({}) == MulticastSettings()
    s = from_table(
        {"multicast_from": 8, "min_clients": 10, "max_wait": 120, "drop_below_mbit": 40,
         "group_base": "239.1.2.0", "port_base": 20000, "sessions": 16}
    )  # fmt: skip
    assert (s.multicast_from, s.min_clients, s.max_wait, s.drop_below) == (8, 10, 120.0, 5e6)
    assert [s.group(0), s.group(15), s.group(16)] == ["239.1.2.1", "239.1.2.16", "239.1.2.1"]
    assert [s.port(0), s.port(1), s.port(16)] == [20000, 20002, 20000]
    assert from_table({"min_clients": 0}).min_clients is None


@pytest.mark.parametrize(
    ("table", "text"),
    [
        ({"colour": 1}, "config file: unknown multicast setting(s) colour"),
        ({"group_base": "10.0.0.0"}, "multicast.group_base must be an IPv4 multicast address"),
        ({"group_base": "239.255.255.250", "sessions": 250}, "with room for 250 groups"),
        ({"max_wait": -1}, "multicast.max_wait must be a number from 0 to 86400, found -1"),
        ({"multicast_from": 2.5}, "multicast.multicast_from must be a whole number, found 2.5"),
        ({"port_base": 80}, "multicast.port_base must be a number from 1024"),
        ({"drop_below_mbit": True}, "multicast.drop_below_mbit must be a number"),
    ],
)
def test_refused_with_the_key_named(table: dict[str, object], text: str) -> None:
    with pytest.raises(UsageError) as err:
        from_table(table)
    assert text in err.value.message


def test_deployment_options_win_over_server_defaults() -> None:
    server = MulticastSettings(multicast_from=6, max_wait=90.0, drop_below=1e6)
    opts = MulticastOptions.from_dict({"max_wait": 10, "min_clients": None}, defaults=server)
    assert (opts.max_wait, opts.multicast_from, opts.drop_below, opts.min_clients) == (10.0, 6, 1e6, None)
    assert MulticastOptions.from_dict(None).max_wait == 60.0
