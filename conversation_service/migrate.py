"""Create the service's roles and database if missing, bring the schema to the head revision, and let
the runtime role use it.

`python -m conversation_service.migrate` runs before the service starts; the service itself never
changes the schema. Two roles: the owner (DATABASE_OWNER_URL) owns the database and every table and
runs the migrations; the runtime role (DATABASE_URL), which the services and bin/admin use, may read
and write rows but not create, alter, drop or truncate anything, so a compromised service cannot
change or destroy the schema.
"""

import logging
from pathlib import Path

import psycopg2
import psycopg2.errors
from alembic import command
from alembic.config import Config
from psycopg2 import sql
from psycopg2.extensions import connection as Connection
from psycopg2.extensions import cursor as Cursor
from psycopg2.extensions import parse_dsn
from yarl import URL

from common.logs import configure_logging
from common.settings import DatabaseSettings, load_settings
from conversation_service.settings import MigrationSettings

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def _role_of(database_url: str) -> tuple[str, str | None, str]:
    """The role, its password and the database named in a URL."""
    dsn = parse_dsn(database_url)
    return dsn["user"], dsn.get("password"), dsn["dbname"]


def _admin_connection(settings: DatabaseSettings) -> Connection:
    connection = psycopg2.connect(settings.database_admin_url)
    # CREATE/DROP DATABASE cannot run inside a transaction.
    connection.autocommit = True
    return connection


def _create_role(cursor: Cursor, database_url: str) -> None:
    role, password, _ = _role_of(database_url)
    cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
    if cursor.fetchone() is not None:
        return
    create_role = sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role))
    if password is not None:
        create_role = sql.SQL("{} PASSWORD {}").format(create_role, sql.Literal(password))
    # Another migrating replica (or test run) may win the race between the check and the create.
    try:
        cursor.execute(create_role)
        log.info("created role", extra={"role": role})
    except psycopg2.errors.DuplicateObject:
        pass


def create_roles_and_database(settings: MigrationSettings) -> None:
    """The owner and runtime roles, and the database owned by the owner, each unless it exists."""
    owner, _, database = _role_of(settings.database_owner_url)
    connection = _admin_connection(settings)
    try:
        with connection.cursor() as cursor:
            _create_role(cursor, settings.database_owner_url)
            _create_role(cursor, settings.database_url)
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
            if cursor.fetchone() is None:
                try:
                    cursor.execute(
                        sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(database), sql.Identifier(owner))
                    )
                    log.info("created database", extra={"database": database, "owner": owner})
                except psycopg2.errors.DuplicateDatabase:
                    pass
    finally:
        connection.close()
    # Before PostgreSQL 15 the superuser owns `public`, so the owner could not take CREATE on it away
    # from the runtime role (see grant_runtime_privileges); from 15 on this changes nothing.
    in_database = psycopg2.connect(str(URL(settings.database_admin_url).with_path(f"/{database}")))
    try:
        with in_database, in_database.cursor() as cursor:
            cursor.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(owner)))
    finally:
        in_database.close()


def drop_database(settings: DatabaseSettings) -> None:
    _, _, database = _role_of(settings.database_url)
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


def grant_runtime_privileges(settings: MigrationSettings) -> None:
    """Rows of every table and the use of every sequence to the runtime role, now and for the tables
    later migrations create (default privileges); no DDL, no TRUNCATE, and the schema's version is
    the owner's alone. Safe to repeat: every run grants again."""
    owner, _, database = _role_of(settings.database_owner_url)
    runtime, _, _ = _role_of(settings.database_url)
    if runtime == owner:
        log.warning("DATABASE_URL uses the owner role: the services may change the schema", extra={"role": owner})
        return
    runtime_role, owner_role = sql.Identifier(runtime), sql.Identifier(owner)
    statements = [
        # PostgreSQL 15 and later already deny it; older ones let every role create tables in `public`.
        sql.SQL("REVOKE CREATE ON SCHEMA public FROM PUBLIC"),
        sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(database), runtime_role),
        sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(runtime_role),
        sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {}").format(runtime_role),
        sql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {}").format(runtime_role),
        sql.SQL(
            "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {}"
        ).format(owner_role, runtime_role),
        sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {}").format(
            owner_role, runtime_role
        ),
        sql.SQL("REVOKE INSERT, UPDATE, DELETE ON alembic_version FROM {}").format(runtime_role),
    ]
    connection = psycopg2.connect(settings.database_owner_url)
    try:
        with connection, connection.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)
    finally:
        connection.close()
    log.info("granted the runtime role its privileges", extra={"role": runtime})


def _can_connect(database_url: str) -> bool:
    try:
        psycopg2.connect(database_url).close()
    except psycopg2.OperationalError:
        return False
    return True


def migrate(settings: MigrationSettings) -> None:
    # Where the roles and database exist already (a managed database, the compose file's postgres),
    # there may be no superuser to ask, and no need to.
    if not (_can_connect(settings.database_owner_url) and _can_connect(settings.database_url)):
        create_roles_and_database(settings)
    upgrade(settings.database_owner_url)
    grant_runtime_privileges(settings)


def main() -> None:
    settings = load_settings(MigrationSettings)
    configure_logging("conversation_service.migrate", settings)
    try:
        migrate(settings)
    except psycopg2.OperationalError as error:
        raise SystemExit(
            "cannot connect with DATABASE_OWNER_URL and DATABASE_URL, nor create their roles and database "
            f"with DATABASE_ADMIN_URL: {error}"
        ) from error
    log.info("schema is at the head revision")


if __name__ == "__main__":
    main()
