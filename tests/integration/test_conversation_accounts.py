"""Who holds a key and who owns an address, as the gateway asks conversation_service over its
internal routes, on the real PostgreSQL; and Idempotency-Keys kept per account."""

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import psycopg2
import pytest
from aiohttp.test_utils import TestClient
from aiopg.sa import Engine, create_engine

from common.accounts import (
    ADDRESS_OWNER_PATH,
    DEVELOPMENT_ACCOUNT_ID,
    VERIFY_KEY_PATH,
    KeyIdentity,
    Scope,
    hash_api_key,
    prefix_of,
)
from common.idempotency import ClaimState, KeyClaimRequest
from common.settings import Profile, ServiceSettings
from conversation_service.accounts import Account, AccountStore
from conversation_service.app import create_app
from conversation_service.idempotency import IdempotencyKeyStore
from conversation_service.settings import ConversationSettings
from tests.factories import gateway_headers, send_message

pytestmark = pytest.mark.integration


def query(database_url: str, sql: str, *params: object) -> list[tuple[Any, ...]]:
    with psycopg2.connect(database_url) as connection, connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall() if cursor.description else []
    connection.close()
    return rows


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[Engine]:
    async with create_engine(database_url) as engine:
        yield engine


@pytest.fixture
def store(engine: Engine) -> AccountStore:
    return AccountStore(engine, development_fallback=False)


@pytest.fixture
async def acme(store: AccountStore) -> Account:
    return await store.create_account("acme")


def conversation_settings(database_url: str, amqp_url: str, broker_namespace: str) -> ConversationSettings:
    broker = ServiceSettings(amqp_url=amqp_url, broker_namespace=broker_namespace).model_dump(exclude_unset=True)
    return ConversationSettings(**broker, database_url=database_url)


@pytest.fixture
async def service(aiohttp_client: Any, database_url: str, amqp_url: str, broker_namespace: str) -> TestClient:
    """conversation_service in the development profile, called as the gateway calls it."""
    app = create_app(conversation_settings(database_url, amqp_url, broker_namespace))
    return await aiohttp_client(app, headers=gateway_headers(account_id=None))


@pytest.fixture
async def production_service(
    aiohttp_client: Any, database_url: str, amqp_url: str, broker_namespace: str
) -> TestClient:
    # Built without validation: the test database's credentials are the development defaults, which
    # production would rightly refuse; what is under test is what the profile changes in the answers.
    development = conversation_settings(database_url, amqp_url, broker_namespace)
    settings = ConversationSettings.model_construct(
        **{**development.model_dump(), "messaging_profile": Profile.PRODUCTION}
    )
    return await aiohttp_client(create_app(settings), headers=gateway_headers(account_id=None))


async def verify(service: TestClient, key: str) -> tuple[int, Any]:
    response = await service.post(VERIFY_KEY_PATH, json={"key_hash": hash_api_key(key)})
    return response.status, await response.json()


async def owner_of(service: TestClient, address: str) -> tuple[int, Any]:
    response = await service.post(ADDRESS_OWNER_PATH, json={"address": address})
    return response.status, await response.json()


async def test_a_good_key_names_its_account_prefix_and_scopes_and_records_its_use(
    service: TestClient, store: AccountStore, acme: Account, database_url: str
) -> None:
    key, stored = await store.create_key(acme, [Scope.READ], expires_in=timedelta(days=30))

    status, body = await verify(service, key)

    assert status == 200
    identity = KeyIdentity.model_validate(body)
    assert (identity.account_id, identity.key_prefix, identity.scopes) == (acme.id, prefix_of(key), (Scope.READ,))
    assert identity.expires_at == stored.expires_at
    ((last_used,),) = query(database_url, "SELECT last_used_at FROM api_keys WHERE prefix = %s", stored.prefix)
    assert last_used is not None


async def test_a_busy_key_records_its_use_at_most_once_a_minute(
    service: TestClient, store: AccountStore, acme: Account, database_url: str
) -> None:
    key, stored = await store.create_key(acme, [Scope.SEND, Scope.READ])

    def last_used() -> Any:
        ((at,),) = query(database_url, "SELECT last_used_at FROM api_keys WHERE prefix = %s", stored.prefix)
        return at

    await verify(service, key)
    first = last_used()
    for _ in range(3):
        assert (await verify(service, key))[0] == 200
    assert last_used() == first

    query(database_url, "UPDATE api_keys SET last_used_at = now() - interval '61 seconds'")
    await verify(service, key)
    assert last_used() > first


async def test_an_unknown_revoked_or_expired_key_is_not_found(
    service: TestClient, store: AccountStore, acme: Account, database_url: str
) -> None:
    revoked, revoked_stored = await store.create_key(acme, [Scope.SEND])
    expired, expired_stored = await store.create_key(acme, [Scope.SEND], expires_in=timedelta(days=1))
    await store.revoke_key(revoked_stored.prefix)
    query(
        database_url,
        "UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE prefix = %s",
        expired_stored.prefix,
    )
    unknown = revoked[:-4] + "abcd"

    for key in (unknown, revoked, expired):
        status, body = await verify(service, key)
        assert (status, body["error"]) == (404, "not_found")
    # A key that is refused is not counted as used.
    assert query(database_url, "SELECT count(*) FROM api_keys WHERE last_used_at IS NOT NULL") == [(0,)]


@pytest.mark.parametrize("body", [{}, {"key_hash": "short"}, {"key_hash": "0" * 64, "extra": 1}])
async def test_a_malformed_verification_is_a_422(service: TestClient, body: dict[str, Any]) -> None:
    response = await service.post(VERIFY_KEY_PATH, json=body)

    assert response.status == 422


async def test_the_owner_is_the_exact_address_then_its_domain(
    service: TestClient, store: AccountStore, acme: Account
) -> None:
    globex = await store.create_account("globex")
    await store.add_address(acme, "@example.com")
    await store.add_address(globex, "ceo@example.com")
    await store.add_address(globex, "+12016661234")

    assert await owner_of(service, "sales@example.com") == (200, {"account_id": str(acme.id)})
    assert await owner_of(service, "ceo@example.com") == (200, {"account_id": str(globex.id)})
    assert await owner_of(service, "+12016661234") == (200, {"account_id": str(globex.id)})


async def test_an_address_nobody_owns_is_the_development_accounts_in_development_only(
    service: TestClient, production_service: TestClient, store: AccountStore, acme: Account
) -> None:
    await store.add_address(acme, "+12016661234")

    assert await owner_of(service, "+18045551234") == (200, {"account_id": str(DEVELOPMENT_ACCOUNT_ID)})
    assert await owner_of(service, "someone@elsewhere.example") == (200, {"account_id": str(DEVELOPMENT_ACCOUNT_ID)})
    # An explicit owner wins over the development account.
    assert await owner_of(service, "+12016661234") == (200, {"account_id": str(acme.id)})

    status, body = await owner_of(production_service, "+18045551234")
    assert (status, body["error"]) == (404, "not_found")
    assert await owner_of(production_service, "+12016661234") == (200, {"account_id": str(acme.id)})


async def test_two_accounts_using_one_idempotency_key_hold_two_keys(engine: Engine, acme: Account) -> None:
    keys = IdempotencyKeyStore(engine, ttl_seconds=3600, claim_seconds=60)
    ours = send_message(body="ours")
    theirs = send_message(account_id=acme.id, body="theirs")

    first = await keys.claim(KeyClaimRequest(key="order-42", request_fingerprint="ours", command=ours))
    second = await keys.claim(KeyClaimRequest(key="order-42", request_fingerprint="theirs", command=theirs))

    assert (first.state, first.command) == (ClaimState.CLAIMED, ours)
    assert (second.state, second.command) == (ClaimState.CLAIMED, theirs)
    # Each account's key still holds its own request only.
    repeat = await keys.claim(
        KeyClaimRequest(key="order-42", request_fingerprint="theirs", command=send_message(body="theirs"))
    )
    assert (repeat.state, repeat.command) == (ClaimState.MISMATCH, ours)
    # Reporting one account's key published leaves the other's alone.
    assert await keys.mark_published(acme.id, "order-42", ours.message_id) is False
    assert await keys.mark_published(acme.id, "order-42", theirs.message_id) is True
    again = await keys.claim(KeyClaimRequest(key="order-42", request_fingerprint="ours", command=send_message()))
    assert again.state is ClaimState.IN_PROGRESS


async def test_the_internal_routes_need_the_service_token(
    service: TestClient, store: AccountStore, acme: Account
) -> None:
    key, _ = await store.create_key(acme, [Scope.SEND])

    for path, body in ((VERIFY_KEY_PATH, {"key_hash": hash_api_key(key)}), (ADDRESS_OWNER_PATH, {"address": "a@b.c"})):
        for headers in ({"Authorization": ""}, gateway_headers(account_id=None, token="not-the-service-token")):
            response = await service.post(path, json=body, headers=headers)
            assert response.status == 401, (path, headers)
