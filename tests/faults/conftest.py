"""Fixtures of the fault tests: a stack of real processes on free ports against the test database
and a broker namespace of the test's own."""

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.factories import free_ports
from tests.faults.harness import KINDS, Harness, base_environment
from tests.proxy import ProxyFactory


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[pytest.TestReport]:
    """A failed fault test shows the tail of every service's log under its report."""
    report = yield
    harness = getattr(item, "funcargs", {}).get("harness")
    if report.failed and isinstance(harness, Harness):
        report.sections.append(("service logs", harness.logs()))
    return report


@pytest.fixture
async def harness(
    database_url: str, amqp_url: str, broker_namespace: str, tmp_path: Path, proxy_to: ProxyFactory
) -> AsyncIterator[Harness]:
    # Depends on `proxy_to` only so that the proxies outlive the processes that connect through them.
    ports = dict(zip(KINDS, free_ports(len(KINDS)), strict=True))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        harness = Harness(
            base_environment(ports, database_url, amqp_url, broker_namespace),
            ports,
            tmp_path,
            broker_namespace,
            amqp_url,
            database_url,
            session,
        )
        try:
            yield harness
        finally:
            await harness.stop_all()
