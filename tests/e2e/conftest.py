from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.e2e.stack import Stack, launch, stack_environment, stop, wait_until_ready


@pytest.fixture
async def stack(
    database_url: str, database_owner_url: str, amqp_url: str, broker_namespace: str, tmp_path: Path
) -> AsyncIterator[Stack]:
    """bin/start.sh, started and ready; stopped with SIGTERM afterwards if a test left it running."""
    env = stack_environment(database_url, database_owner_url, amqp_url, broker_namespace)
    stack = await launch(env, tmp_path / "stack.log")
    try:
        await wait_until_ready(stack)
        yield stack
    finally:
        await stop(stack)
