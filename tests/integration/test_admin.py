"""bin/admin as an operator runs it: a process of its own against the test database, its output read
as a script would (the last line), and a key that shows up nowhere but that one line."""

import os
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import pytest

from common.accounts import Scope, hash_api_key, prefix_of

pytestmark = pytest.mark.integration

ADMIN = Path(__file__).resolve().parents[2] / "bin" / "admin"


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str

    @property
    def last_line(self) -> str:
        return self.stdout.splitlines()[-1]


@pytest.fixture
def admin(database_url: str) -> "Admin":
    return Admin(database_url)


class Admin:
    """Runs bin/admin with the test database as its DATABASE_URL, and keeps everything it wrote."""

    def __init__(self, database_url: str) -> None:
        self.environment = {**os.environ, "DATABASE_URL": database_url, "LOG_LEVEL": "INFO", "LOG_FORMAT": "text"}
        self.runs: list[Ran] = []

    def __call__(self, *arguments: str) -> Ran:
        done = subprocess.run(
            [str(ADMIN), *arguments], env=self.environment, capture_output=True, text=True, timeout=60, check=False
        )
        ran = Ran(done.returncode, done.stdout, done.stderr)
        self.runs.append(ran)
        return ran

    def ok(self, *arguments: str) -> Ran:
        ran = self(*arguments)
        assert ran.returncode == 0, ran
        return ran

    def refused(self, *arguments: str) -> str:
        ran = self(*arguments)
        assert ran.returncode != 0, ran
        assert ran.stdout == ""
        return ran.stderr


def everything_stored(database_url: str) -> str:
    """Every row of every table, as text: what someone who reads the database sees."""
    with psycopg2.connect(database_url) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        tables = [name for (name,) in cursor.fetchall()]
        dumped = []
        for table in tables:
            cursor.execute(f"SELECT row_to_json(t)::text FROM {table} AS t")
            dumped += [row for (row,) in cursor.fetchall()]
    connection.close()
    return "\n".join(dumped)


def stored_key(database_url: str, key: str) -> tuple[object, ...] | None:
    with psycopg2.connect(database_url) as connection, connection.cursor() as cursor:
        cursor.execute(
            "SELECT accounts.name, prefix, scopes, expires_at IS NOT NULL, revoked_at IS NOT NULL "
            "FROM api_keys JOIN accounts ON accounts.id = api_keys.account_id WHERE key_hash = %s",
            (hash_api_key(key),),
        )
        row = cursor.fetchone()
    connection.close()
    return row


def test_an_operator_sets_up_an_account_with_an_address_and_keys(admin: Admin, database_url: str) -> None:
    account_id = uuid.UUID(admin.ok("accounts", "create", "acme").last_line)

    assert "(201) 666-1234 " not in admin.ok("addresses", "add", "acme", "(201) 666-1234").stdout
    admin.ok("addresses", "add", str(account_id), "@Example.COM")
    admin.ok("addresses", "add", "acme", "Sales@Other.Example")
    assert admin.ok("addresses", "list", "acme").stdout.splitlines() == [
        "+12016661234",
        "@example.com",
        "sales@other.example",
    ]
    listed = admin.ok("accounts", "list").stdout
    assert str(account_id) in listed and "development" in listed

    send_only = admin.ok("keys", "create", "acme", "--scope", "send", "--expires-days", "30").last_line
    both = admin.ok("keys", "create", str(account_id)).last_line

    assert stored_key(database_url, send_only) == ("acme", prefix_of(send_only), [Scope.SEND.value], True, False)
    assert stored_key(database_url, both) == ("acme", prefix_of(both), ["read", "send"], False, False)
    keys = admin.ok("keys", "list", "acme").stdout
    assert prefix_of(send_only) in keys and prefix_of(both) in keys
    assert send_only not in keys and both not in keys

    revoked = admin.ok("keys", "revoke", str(prefix_of(send_only))).stdout
    assert prefix_of(send_only) in revoked
    assert stored_key(database_url, send_only) == ("acme", prefix_of(send_only), ["send"], True, True)
    (revoked_row,) = [
        line for line in admin.ok("keys", "list", "acme").stdout.splitlines() if prefix_of(send_only) in line
    ]
    assert not revoked_row.endswith("-"), "the revoked column shows when"

    # Shown once, on that one line: never in the database, any other output or the logs.
    stored = everything_stored(database_url)
    for key in (send_only, both):
        # The whole secret: it may hold "_" itself, and a short piece of it could turn up anywhere by chance.
        secret = key.split("_", 2)[2]
        assert secret not in stored
        assert [ran for ran in admin.runs if secret in ran.stderr] == []
        assert [ran for ran in admin.runs if secret in ran.stdout and ran.last_line != key] == []
    assert any("created API key" in ran.stderr for ran in admin.runs), "key creation is logged, by prefix"


def test_mistakes_are_refused_with_a_reason_and_change_nothing(admin: Admin, database_url: str) -> None:
    admin.ok("accounts", "create", "acme")
    admin.ok("accounts", "create", "globex")
    admin.ok("addresses", "add", "acme", "+12016661234")
    before = everything_stored(database_url)

    assert "exists already" in admin.refused("accounts", "create", "acme")
    owned = admin.refused("addresses", "add", "globex", "+1 201 666 1234")
    assert "+12016661234 is already owned by the account acme" in owned
    assert "not an address" in admin.refused("addresses", "add", "acme", "not-an-address")
    assert "not an address" in admin.refused("addresses", "add", "acme", "@")
    assert "no account" in admin.refused("addresses", "add", "nobody", "+18045551234")
    assert "no account" in admin.refused("keys", "create", str(uuid.uuid4()))
    assert "no key" in admin.refused("keys", "revoke", "deadbeef")
    assert "invalid choice" in admin.refused("keys", "create", "acme", "--scope", "admin")
    assert "1 or more" in admin.refused("keys", "create", "acme", "--expires-days", "0")

    assert everything_stored(database_url) == before


def test_an_unreachable_database_is_named(admin: Admin) -> None:
    admin.environment["DATABASE_URL"] = "postgresql://nobody:nothing@127.0.0.1:1/nowhere"

    assert "DATABASE_URL" in admin.refused("accounts", "list")
