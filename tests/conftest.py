"""Fixtures for the integration and end-to-end tiers: a database and a broker namespace of the tests' own,
and TCP proxies a test can cut.

Tests never touch a developer's data: they use a database of their own, created fresh for each run
and dropped after it (named by TEST_DATABASE_URL, or by default one per test run, so two runs at
once do not truncate each other's tables), and queue names under a random namespace, removed
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

from common.broker import Topology
from common.settings import DatabaseSettings, ServiceSettings
from tests.proxy import ProxyFactory, TcpProxy

# Where the services are comes from the same settings the stack reads (environment, then .env);
# only the database name is the tests' own.
_configured = DatabaseSettings()
TEST_DATABASE_URL = os.environ.get(
    "TEST_DATABASE_URL",
    str(URL(_configured.database_url).with_path(f"/messaging_service_test_{os.getpid()}")),
)
DATABASE_ADMIN_URL = _configured.database_admin_url
TEST_AMQP_URL = os.environ.get("TEST_AMQP_URL", ServiceSettings().amqp_url)


@pytest.fixture(autouse=True)
def _ignore_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings built inside a test read `.env` from the working directory: run each test away from
    the developer's, so their knobs (a phone region, a size limit) cannot change what tests see."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def database_settings() -> DatabaseSettings:
    return DatabaseSettings(database_url=TEST_DATABASE_URL, database_admin_url=DATABASE_ADMIN_URL)


@pytest.fixture(scope="session")
def migrated_database(database_settings: DatabaseSettings) -> Iterator[str]:
    """A freshly created and migrated test database, dropped after the run; its URL."""
    from conversation_service.migrate import create_role_and_database, drop_database, upgrade

    drop_database(database_settings)
    create_role_and_database(database_settings)
    upgrade(database_settings.database_url)
    yield database_settings.database_url
    drop_database(database_settings)


@pytest.fixture
def database_url(migrated_database: str) -> Iterator[str]:
    """The test database, emptied before each test so ids start at 1 again."""
    with psycopg2.connect(migrated_database) as connection, connection.cursor() as cursor:
        cursor.execute(
            "SELECT string_agg(quote_ident(tablename), ', ') FROM pg_tables "
            "WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
        )
        (tables,) = cursor.fetchone()
        if tables:
            cursor.execute(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
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
