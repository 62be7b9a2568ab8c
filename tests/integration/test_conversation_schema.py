"""The tables the repository is written against are the ones the migrations create."""

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from conversation_service.schema import metadata

pytestmark = pytest.mark.integration


def test_schema_module_matches_the_migrated_database(database_url: str) -> None:
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection), metadata)
    finally:
        engine.dispose()

    assert differences == []
