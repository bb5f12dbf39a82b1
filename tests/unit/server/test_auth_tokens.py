"""Tokens must survive being passed as a separate argument (``--token T``)."""

from __future__ import annotations

from fleetcast.server.auth import new_secret


def test_tokens_never_start_with_a_dash() -> None:
    tokens = {new_secret() for _ in range(2000)}
    assert len(tokens) == 2000
    assert all(t.startswith("fc_") and not t.startswith("-") for t in tokens)
