"""Create the service's role and database if missing, then bring the schema to the head revision.

`python -m conversation_service.migrate` runs before the service starts; the service itself never
changes the schema.
"""

import logging
from pathlib import Path

import psycopg2
import psycopg2.errors
from alembic import command
from alembic.config import Config
from psycopg2 import sql
from psycopg2.extensions import connection as Connection
from psycopg2.extensions import parse_dsn

from common.logs import configure_logging
from common.settings import DatabaseSettings, ProcessSettings

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def _target(settings: DatabaseSettings) -> tuple[str, str | None, str]:
    """The role, its password and the database named in `database_url`."""
    dsn = parse_dsn(settings.database_url)
    return dsn["user"], dsn.get("password"), dsn["dbname"]


def _admin_connection(settings: DatabaseSettings) -> Connection:
    connection = psycopg2.connect(settings.database_admin_url)
    # CREATE/DROP DATABASE cannot run inside a transaction.
    connection.autocommit = True
    return connection


def create_role_and_database(settings: DatabaseSettings) -> None:
    role, password, database = _target(settings)
    connection = _admin_connection(settings)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
            if cursor.fetchone() is None:
                create_role = sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role))
                if password is not None:
                    create_role = sql.SQL("{} PASSWORD {}").format(create_role, sql.Literal(password))
                # Another migrating replica may win the race between the check and the create.
                try:
                    cursor.execute(create_role)
                    log.info("created role", extra={"role": role})
                except psycopg2.errors.DuplicateObject:
                    pass
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
            if cursor.fetchone() is None:
                try:
                    cursor.execute(
                        sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(database), sql.Identifier(role))
                    )
                    log.info("created database", extra={"database": database, "owner": role})
                except psycopg2.errors.DuplicateDatabase:
                    pass
    finally:
        connection.close()


def drop_database(settings: DatabaseSettings) -> None:
    _, _, database = _target(settings)
    connection = _admin_connection(settings)
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
    finally:
        connection.close()


def upgrade(database_url: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Config values go through ConfigParser interpolation, where a bare % (URL-encoded passwords)
    # would be read as a placeholder.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    command.upgrade(config, "head")


def _can_connect(database_url: str) -> bool:
    try:
        psycopg2.connect(database_url).close()
    except psycopg2.OperationalError:
        return False
    return True


def main() -> None:
    settings = DatabaseSettings()
    configure_logging("conversation_service.migrate", ProcessSettings())
    # Where the role and database exist already (a managed database, the compose file's postgres),
    # there may be no superuser to ask, and no need to.
    if not _can_connect(settings.database_url):
        try:
            create_role_and_database(settings)
        except psycopg2.OperationalError as error:
            raise SystemExit(
                f"cannot connect with DATABASE_URL, nor create its role and database with DATABASE_ADMIN_URL: {error}"
            ) from error
    upgrade(settings.database_url)
    log.info("schema is at the head revision")


if __name__ == "__main__":
    main()
