"""Console users: scrypt hashes, the rules for new users, the sign-in throttle (a real SQLite file)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetcast.errors import UsageError
from fleetcast.server.db import Database
from fleetcast.server.sessions import Sessions
from fleetcast.server.users import SignInError, SlowDown, Users, hash_password, verify_password


@pytest.fixture
def db(tmp_path: Path) -> Database:
    return Database(f"sqlite:///{tmp_path / 'fc.db'}")


def test_hash_is_salted_scrypt_and_verifies() -> None:
    a, b = hash_password("correct horse"), hash_password("correct horse")
    assert a.startswith("scrypt$32768$8$1$") and a != b
    assert verify_password("correct horse", a)
    assert not verify_password("correct horsE", a)
    assert not verify_password("x", "md5$nonsense")


def test_new_user_rules(db: Database) -> None:
    users = Users(db)
    assert users.needs_setup()
    with pytest.raises(UsageError, match=r"^the password has 3 characters; at least 8 are needed$"):
        users.add("admin", "admin", "abc")
    with pytest.raises(UsageError, match=r"^role 'root' is not one of admin, operator, viewer$"):
        users.add("admin", "root", "long enough")
    with pytest.raises(UsageError, match=r"^user name '-x' is not valid$"):
        users.add("-x", "viewer", "long enough")
    users.add("admin", "admin", "long enough", only_if_none=True)
    with pytest.raises(UsageError, match=r"^the admin password is already set$"):
        users.add("other", "admin", "long enough", only_if_none=True)
    with pytest.raises(UsageError, match=r"^user 'admin' already exists$"):
        users.add("admin", "viewer", "long enough")
    assert [u["name"] for u in users.list()] == ["admin"]
    assert not users.needs_setup()


def test_sign_in_throttle(db: Database) -> None:
    users = Users(db)
    users.add("ana", "operator", "long enough")
    assert users.sign_in("ana", "long enough") == "operator"
    for _ in range(3):
        with pytest.raises(SignInError, match=r"^wrong user name or password$"):
            users.sign_in("ana", "wrong")
    with pytest.raises(SlowDown, match=r"^too many failed sign-ins for 'ana': try again in [12] s$"):
        users.sign_in("ana", "long enough")
    with pytest.raises(SignInError, match=r"^wrong user name or password$"):
        users.sign_in("nobody", "long enough")


def test_throttle_survives_a_restart_and_is_per_address(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fc.db'}"
    first = Database(url)
    Users(first).add("ana", "operator", "long enough")
    for _ in range(3):
        with pytest.raises(SignInError):
            Users(first).sign_in("ana", "wrong", "10.0.0.9")
    first.close()
    again = Users(Database(url))  # a new server process on the same database remembers
    with pytest.raises(SlowDown, match=r"^too many failed sign-ins for 'ana': try again in [12] s$"):
        again.sign_in("ana", "long enough", "10.0.0.9")
    assert again.failures("ana") == {"10.0.0.9": 3, "*": 3}
    # the stranger at 10.0.0.9 does not lock ana out of her own machine
    assert again.sign_in("ana", "long enough", "10.0.0.5") == "operator"
    assert again.failures("ana") == {"10.0.0.9": 3}


def test_throttle_from_anywhere_slows_many_addresses(db: Database) -> None:
    from fleetcast.server.users import FREE_FAILURES_ANY, delay_after

    users = Users(db)
    users.add("ana", "operator", "long enough")
    for i in range(FREE_FAILURES_ANY):
        with pytest.raises(SignInError, match=r"^wrong user name or password$"):
            users.sign_in("ana", "wrong", f"10.0.1.{i}")
    with pytest.raises(SlowDown, match=r"^too many failed sign-ins for 'ana': try again in [12] s$"):
        users.sign_in("ana", "long enough", "10.0.2.1")
    assert [delay_after(n, 3) for n in (2, 3, 4, 5, 12, 40)] == [0.0, 2.0, 4.0, 8.0, 300.0, 300.0]


def test_sessions_end_and_expire(db: Database) -> None:
    from datetime import timedelta

    sessions = Sessions(db)
    token, csrf = sessions.create("ana")
    row = sessions.lookup(token)
    assert row is not None and row.user == "ana" and row.csrf == csrf
    sessions.end(token)
    assert sessions.lookup(token) is None
    expired = Sessions(db, lifetime=timedelta(seconds=-1))
    token, _ = expired.create("ana")
    assert expired.lookup(token) is None


def test_admin_user_add_cli(tmp_path: Path) -> None:
    import subprocess
    import sys

    fleetcast = Path(sys.executable).parent / "fleetcast"
    data = tmp_path / "new" / "data"  # made on first use, as `fleetcast serve` does

    def add(name: str, role: str, password: str) -> subprocess.CompletedProcess[str]:
        argv = [str(fleetcast), "admin", "user", "add", name, "--role", role, "--data", str(data)]
        return subprocess.run(argv, input=password + "\n", capture_output=True, text=True, check=False)

    ok = add("ana", "operator", "long enough")
    assert (ok.returncode, ok.stdout) == (0, "user ana added with role operator\n")
    again = add("ana", "viewer", "long enough")
    assert again.returncode == 2
    assert again.stderr.splitlines() == [
        "fleetcast: error: user 'ana' already exists",
        "hint: pick another name",
    ]
    short = add("bob", "viewer", "short")
    assert short.returncode == 2
    assert (
        short.stderr.splitlines()[0]
        == "fleetcast: error: the password has 5 characters; at least 8 are needed"
    )
    assert Users(Database(f"sqlite:///{data / 'fleetcast.db'}")).list()[0]["role"] == "operator"
