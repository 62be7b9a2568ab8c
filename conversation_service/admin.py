"""`bin/admin`: the operators' command line for accounts, the addresses they own and their API keys.

It works on the database directly, as the services' runtime role (DATABASE_URL, read like the
services read it). What a command made is printed on stdout, the value a script wants (an account's
id, a new key) on the last line; what it did is logged on stderr, where a key never appears: only
its prefix names it.
"""

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from datetime import datetime, timedelta

import psycopg2
from aiopg.sa import create_engine
from pydantic import Field

from common.accounts import Scope
from common.addresses import normalize_owned_address
from common.errors import DomainError
from common.logs import JsonFormatter, TextFormatter
from common.settings import DatabaseSettings, ProcessSettings, load_settings
from conversation_service.accounts import AccountStore

log = logging.getLogger("conversation_service.admin")


class AdminSettings(ProcessSettings, DatabaseSettings):
    default_phone_region: str = Field(
        "US", description="Region of a phone number written without a + country code, as the gateway reads it"
    )


class CommandFailed(Exception):
    """A command that cannot do what it was asked: its message is the whole explanation."""


def _positive_days(value: str) -> int:
    days = int(value)
    if days < 1:
        raise argparse.ArgumentTypeError("must be a whole number of days, 1 or more")
    return days


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bin/admin", description="Accounts, the sender addresses they own, and their API keys."
    )
    nouns = parser.add_subparsers(dest="noun", required=True, metavar="{accounts,addresses,keys}")

    accounts = nouns.add_parser("accounts", help="create and list accounts").add_subparsers(dest="verb", required=True)
    accounts.add_parser("create", help="create an account; prints its id on the last line").add_argument("name")
    accounts.add_parser("list", help="every account: id, name, created")

    addresses = nouns.add_parser("addresses", help="the sender addresses an account owns").add_subparsers(
        dest="verb", required=True
    )
    add = addresses.add_parser("add", help="give an address (+E.164, user@domain or @domain) to an account")
    add.add_argument("account", help="the account's id or name")
    add.add_argument("address")
    addresses.add_parser("list", help="the addresses an account owns").add_argument("account")

    keys = nouns.add_parser("keys", help="API keys").add_subparsers(dest="verb", required=True)
    create = keys.add_parser("create", help="a new key for an account; printed once, on the last line")
    create.add_argument("account", help="the account's id or name")
    create.add_argument(
        "--scope",
        action="append",
        choices=[scope.value for scope in Scope],
        dest="scopes",
        help="what the key may do; repeat for both (the default)",
    )
    create.add_argument("--expires-days", type=_positive_days, help="the key stops working after this many days")
    keys.add_parser("list", help="an account's keys: prefix, scopes, created, last used, expiry, revoked").add_argument(
        "account"
    )
    keys.add_parser("revoke", help="stop a key from working, from now on").add_argument("prefix")
    return parser


def _when(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value is not None else "-"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]


async def run(arguments: argparse.Namespace, store: AccountStore, settings: AdminSettings) -> list[str]:
    """The command's output lines."""
    match arguments.noun, arguments.verb:
        case "accounts", "create":
            account = await store.create_account(arguments.name)
            log.info("created account", extra={"account": str(account.id), "account_name": account.name})
            return [f"created account {account.name}", str(account.id)]
        case "accounts", "list":
            rows = [[str(a.id), a.name, _when(a.created_at)] for a in await store.list_accounts()]
            return _table(["id", "name", "created"], rows)
        case "addresses", "add":
            try:
                address = normalize_owned_address(arguments.address, settings.default_phone_region)
            except ValueError as error:
                raise CommandFailed(f"{arguments.address!r} is not an address an account can own: {error}") from None
            account = await store.find_account(arguments.account)
            await store.add_address(account, address)
            log.info("added address", extra={"account": str(account.id), "address": address})
            return [f"{address} now belongs to the account {account.name} ({account.id})"]
        case "addresses", "list":
            account = await store.find_account(arguments.account)
            return [owned.address for owned in await store.list_addresses(account)]
        case "keys", "create":
            account = await store.find_account(arguments.account)
            scopes = [Scope(scope) for scope in arguments.scopes or list(Scope)]
            expires_in = timedelta(days=arguments.expires_days) if arguments.expires_days else None
            key, stored = await store.create_key(account, scopes, expires_in=expires_in)
            log.info("created API key", extra={"account": str(account.id), "prefix": stored.prefix})
            return [
                f"created key {stored.prefix} for the account {account.name} ({account.id}), "
                f"scopes {', '.join(stored.scopes)}, expires {_when(stored.expires_at)}",
                "the key is shown this once and cannot be shown again; keep it secret:",
                key,
            ]
        case "keys", "list":
            account = await store.find_account(arguments.account)
            rows = [
                [
                    key.prefix,
                    ",".join(key.scopes),
                    _when(key.created_at),
                    _when(key.last_used_at),
                    _when(key.expires_at),
                    _when(key.revoked_at),
                ]
                for key in await store.list_keys(account)
            ]
            return _table(["prefix", "scopes", "created", "last used", "expires", "revoked"], rows)
        case "keys", "revoke":
            revoked = await store.revoke_key(arguments.prefix)
            log.info("revoked API key", extra={"account": str(revoked.account_id), "prefix": revoked.prefix})
            return [f"revoked key {revoked.prefix} as of {_when(revoked.revoked_at)}"]
    raise AssertionError(f"argparse let through {arguments.noun} {arguments.verb}")


async def _main(arguments: argparse.Namespace, settings: AdminSettings) -> list[str]:
    # One connection is all a command needs. Operators see owners as stored, without the fallback.
    async with create_engine(settings.database_url, minsize=1, maxsize=1) as engine:
        return await run(arguments, AccountStore(engine, development_fallback=False), settings)


def _configure_logging(settings: AdminSettings) -> None:
    # stderr: stdout is the command's output, whose last line scripts read.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter("admin") if settings.log_format == "json" else TextFormatter())
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler], force=True)


def main(argv: Sequence[str] | None = None) -> None:
    arguments = _parser().parse_args(argv)
    settings = load_settings(AdminSettings)
    _configure_logging(settings)
    try:
        lines = asyncio.run(_main(arguments, settings))
    except (DomainError, CommandFailed) as error:
        raise SystemExit(f"bin/admin: {error}") from None
    except psycopg2.OperationalError as error:
        raise SystemExit(f"bin/admin: cannot reach the database at DATABASE_URL: {error}".rstrip()) from None
    print("\n".join(lines))


if __name__ == "__main__":
    main()
