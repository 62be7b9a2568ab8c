"""Fixtures for the integration and end-to-end tiers: a database and a broker namespace of the tests' own,
and TCP proxies a test can cut.

Tests never touch a developer's data: they use a database of their own, created fresh for each run
and dropped after it (named by TEST_DATABASE_URL, or by default one per test run, so two runs at
once do not truncate each other's tables), reached as the services reach theirs (a runtime role with
no DDL rights; its owner migrates it), and queue names under a random namespace, removed
afterwards. A missing PostgreSQL or RabbitMQ is an error, never a skip.
"""

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aio_pika
import psycopg2
import pytest
from yarl import URL

from common.accounts import DEVELOPMENT_ACCOUNT_ID, DEVELOPMENT_ACCOUNT_NAME
from common.broker import Topology
from common.settings import ServiceSettings
from conversation_service.settings import MigrationSettings
from tests.proxy import ProxyFactory, TcpProxy

# Where the services are comes from the same settings the stack reads (environment, then .env);
# only the database name is the tests' own. Its two roles are the stack's: the services' runtime role
# (TEST_DATABASE_URL, no DDL rights) and the owner that migrates it (TEST_DATABASE_OWNER_URL).
_configured = MigrationSettings()
_TEST_DATABASE = f"/messaging_service_test_{os.getpid()}"
TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL", str(URL(_configured.database_url).with_path(_TEST_DATABASE)))
TEST_DATABASE_OWNER_URL = os.environ.get(
    "TEST_DATABASE_OWNER_URL",
    str(URL(_configured.database_owner_url).with_path(URL(TEST_DATABASE_URL).path)),
)
DATABASE_ADMIN_URL = _configured.database_admin_url
TEST_AMQP_URL = os.environ.get("TEST_AMQP_URL", ServiceSettings().amqp_url)


@pytest.fixture(autouse=True)
def _ignore_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings built inside a test read `.env` from the working directory: run each test away from
    the developer's, so their knobs (a phone region, a size limit) cannot change what tests see."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def database_settings() -> MigrationSettings:
    return MigrationSettings(
        database_url=TEST_DATABASE_URL,
        database_owner_url=TEST_DATABASE_OWNER_URL,
        database_admin_url=DATABASE_ADMIN_URL,
    )


@pytest.fixture(scope="session")
def migrated_database(database_settings: MigrationSettings) -> Iterator[str]:
    """A freshly created and migrated test database, dropped after the run; its runtime role's URL."""
    from conversation_service.migrate import drop_database, migrate

    drop_database(database_settings)
    migrate(database_settings)
    yield database_settings.database_url
    drop_database(database_settings)


@pytest.fixture
def database_owner_url(migrated_database: str, database_settings: MigrationSettings) -> str:
    """The test database as its owner, which may change the schema; the services never get this."""
    return database_settings.database_owner_url


@pytest.fixture
def database_url(migrated_database: str, database_settings: MigrationSettings) -> Iterator[str]:
    """The test database as the services' runtime role, emptied before each test so ids start at 1
    again, and holding the built-in development account as the migration left it."""
    with psycopg2.connect(database_settings.database_owner_url) as connection, connection.cursor() as cursor:
        cursor.execute(
            "SELECT string_agg(quote_ident(tablename), ', ') FROM pg_tables "
            "WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
        )
        (tables,) = cursor.fetchone()
        if tables:
            cursor.execute(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
        cursor.execute(
            "INSERT INTO accounts (id, name) VALUES (%s, %s)",
            (str(DEVELOPMENT_ACCOUNT_ID), DEVELOPMENT_ACCOUNT_NAME),
        )
    connection.close()
    yield migrated_database


@pytest.fixture
def amqp_url() -> str:
    return TEST_AMQP_URL


@pytest.fixture
async def broker_namespace(amqp_url: str) -> AsyncIterator[str]:
    """A namespace of this test's own; its exchanges and queues are deleted afterwards."""
    namespace = f"test-{uuid.uuid4().hex[:12]}"
    yield namespace
    topology = Topology(namespace)
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        for spec in topology.queues:
            for name in (spec.name, spec.dead_letter_name):
                await channel.queue_delete(name)
        await channel.queue_delete(topology.quarantine.name)
        for name in (topology.exchange, topology.dead_letter_exchange):
            await channel.exchange_delete(name)


@pytest.fixture
async def proxy_to() -> AsyncIterator[ProxyFactory]:
    """`await proxy_to(url)`: a proxy to that URL's host and port, and the URL rewritten through it."""
    proxies: list[TcpProxy] = []

    async def make(url: str) -> tuple[TcpProxy, str]:
        target = URL(url)
        assert target.host is not None and target.port is not None
        proxy = await TcpProxy(target.host, target.port).start()
        proxies.append(proxy)
        return proxy, str(target.with_host("127.0.0.1").with_port(proxy.port))

    yield make
    for proxy in proxies:
        await proxy.stop()
