"""Prepared statements on the real PostgreSQL: planned once per connection, prepared afresh on a new one."""

import psycopg2
import pytest
import sqlalchemy as sa
from aiopg.sa import SAConnection

from conversation_service.database import Database, Prepared, connect

pytestmark = pytest.mark.integration


def _suffixed() -> Prepared:
    # A constant with a `%` in it, bound by SQLAlchemy, then a parameter of the caller's.
    return Prepared.of(sa.select(sa.literal("100%") + sa.bindparam("suffix", type_=sa.String)))


async def _plans(connection: SAConnection, statement: Prepared) -> tuple[int, int]:
    result = await connection.execute(
        "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement = %(prepare)s",
        {"prepare": statement.prepare.replace("%%", "%")},
    )
    [row] = await result.fetchall()
    return row.generic_plans, row.custom_plans


async def test_a_statement_is_prepared_once_per_connection_and_planned_once_for_any_parameters(
    database_url: str,
) -> None:
    statement = _suffixed()
    async with connect(database_url, pool_size=1) as engine, engine.acquire() as connection:
        answers = [await statement.scalar(connection, {"suffix": suffix}) for suffix in ("a", "b", "c", "d", "e", "f")]

        assert answers == ["100%a", "100%b", "100%c", "100%d", "100%e", "100%f"]
        # PostgreSQL's own choice would plan the first five executions for their parameters.
        assert await _plans(connection, statement) == (6, 0)


async def test_a_new_connection_prepares_the_statement_again(database_url: str) -> None:
    statement = _suffixed()
    async with connect(database_url, pool_size=1) as engine:
        database = Database(engine, retry_max_interval=0.05)
        assert await database.read(lambda connection: statement.scalar(connection, {"suffix": "x"})) == "100%x"
        with psycopg2.connect(database_url) as admin, admin.cursor() as cursor:
            cursor.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            assert cursor.fetchone() == (1,)
        admin.close()

        # The pool's dead connection fails the read once; the retry's fresh one prepares it before use.
        assert await database.read(lambda connection: statement.scalar(connection, {"suffix": "y"})) == "100%y"
        async with engine.acquire() as connection:
            assert await _plans(connection, statement) == (1, 0)


async def test_a_statement_prepared_in_a_transaction_that_rolls_back_stays_prepared(database_url: str) -> None:
    """What the connection's record relies on: PREPARE is not undone by a rollback."""
    statement = _suffixed()

    async def then_fail(connection: SAConnection) -> None:
        assert await statement.scalar(connection, {"suffix": "a"}) == "100%a"
        raise psycopg2.errors.UniqueViolation("the batch failed after the statement was prepared")

    async with connect(database_url, pool_size=1) as engine:
        database = Database(engine, retry_max_interval=0.05)
        with pytest.raises(psycopg2.errors.UniqueViolation):
            await database.write(then_fail)

        assert await database.write(lambda connection: statement.scalar(connection, {"suffix": "b"})) == "100%b"


async def test_a_statement_without_parameters(database_url: str) -> None:
    statement = Prepared.of(sa.select(sa.literal_column("'100%'")))
    async with connect(database_url, pool_size=1) as engine, engine.acquire() as connection:
        assert [await statement.scalar(connection, {}) for _ in range(2)] == ["100%", "100%"]


def test_a_statement_with_an_untyped_parameter_is_refused_at_import() -> None:
    with pytest.raises(TypeError, match="need types: status"):
        Prepared.of(sa.text("SELECT :status"))
