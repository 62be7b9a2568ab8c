"""Accounts and API keys end to end in one process: the real gateway publishing to RabbitMQ, the real
conversation_service verifying keys, naming owners and storing in PostgreSQL, driven over HTTP as a
client would drive them, with keys made as bin/admin makes them."""

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg2
import pytest
from aiohttp.test_utils import TestClient
from aiopg.sa import Engine, create_engine

from common.accounts import Scope
from common.settings import Profile, ServiceSettings
from conversation_service.accounts import Account, AccountStore
from conversation_service.app import create_app as create_conversation_app
from conversation_service.settings import ConversationSettings
from gateway.app import create_app as create_gateway_app
from gateway.auth import ROUTE_ACCESS
from gateway.settings import GatewaySettings
from tests.factories import EMAIL_REQUEST, SMS_REQUEST, eventually, log_lines
from tests.unit.test_gateway_api import SMS_WEBHOOK

pytestmark = pytest.mark.integration

ACME_PHONE = "+12016661234"
GLOBEX_PHONE = "+12016665678"
TOKEN = "integration-internal-service-token"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def count(database_url: str, sql: str, *params: object) -> int:
    with psycopg2.connect(database_url) as connection, connection.cursor() as cursor:
        cursor.execute(sql, params)
        (value,) = cursor.fetchone()
    connection.close()
    return int(value)


@dataclass
class Stack:
    client: TestClient
    store: AccountStore
    acme: Account
    globex: Account
    database_url: str


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[Engine]:
    async with create_engine(database_url) as engine:
        yield engine


def in_profile(settings: Any, profile: Profile) -> Any:
    # Without validation: the test database and broker use the development credentials, which the
    # production profile rightly refuses (the start-up check is tested on a real process elsewhere);
    # what is under test here is what the profile changes in the answers.
    return settings.model_copy(update={"messaging_profile": profile})


StartStack = Callable[..., Awaitable[Stack]]


@pytest.fixture
def start(
    aiohttp_server: Any, aiohttp_client: Any, engine: Engine, database_url: str, amqp_url: str, broker_namespace: str
) -> StartStack:
    """`await start(gateway_profile=..., conversation_profile=...)`: both services in those profiles
    (production unless told), and two accounts with their addresses."""

    async def make(
        *, gateway_profile: Profile = Profile.PRODUCTION, conversation_profile: Profile = Profile.PRODUCTION
    ) -> Stack:
        broker = ServiceSettings(amqp_url=amqp_url, broker_namespace=broker_namespace).model_dump(exclude_unset=True)
        conversation = await aiohttp_server(
            create_conversation_app(
                in_profile(
                    ConversationSettings(**broker, database_url=database_url, internal_service_token=TOKEN),
                    conversation_profile,
                )
            )
        )
        gateway_settings = GatewaySettings(
            **broker,
            conversation_service_url=str(conversation.make_url("")),
            internal_service_token=TOKEN,
            # A revoke must show at once here; the cache is the unit tests' business.
            auth_cache_seconds=0,
        )
        gateway = await aiohttp_server(create_gateway_app(in_profile(gateway_settings, gateway_profile)))
        store = AccountStore(engine, development_fallback=False)
        acme, globex = await store.create_account("acme"), await store.create_account("globex")
        await store.add_address(acme, ACME_PHONE)
        await store.add_address(acme, "@usehatchapp.com")
        await store.add_address(globex, GLOBEX_PHONE)
        return Stack(await aiohttp_client(gateway), store, acme, globex, database_url)

    return make


@pytest.fixture
async def production(start: StartStack) -> Stack:
    return await start()


async def key_of(stack: Stack, account: Account, *scopes: Scope, **options: Any) -> str:
    key, _ = await stack.store.create_key(account, scopes or (Scope.SEND, Scope.READ), **options)
    return key


async def stored_message(stack: Stack, key: str, message_id: str) -> dict[str, Any] | None:
    response = await stack.client.get(f"/api/messages/{message_id}", headers=bearer(key))
    return await response.json() if response.status == 200 else None


def keyed_routes(stack: Stack) -> list[tuple[str, str, Scope]]:
    """The gateway's routes that ask for a key, with their scopes, straight from its router."""
    app = stack.client.server.app  # type: ignore[union-attr]
    routes = []
    for route in app.router.routes():
        if route.method == "HEAD" or route.resource is None:
            continue
        access = app[ROUTE_ACCESS].get(route.resource.canonical)
        if access is not None and access.scope is not None:
            routes.append((route.method, route.resource.canonical, access.scope))
    return routes


async def test_every_keyed_route_refuses_a_missing_unknown_revoked_expired_or_unscoped_key(
    production: Stack,
) -> None:
    stack = production
    revoked, revoked_stored = await stack.store.create_key(stack.acme, [Scope.SEND, Scope.READ])
    await stack.store.revoke_key(revoked_stored.prefix)
    expired = await key_of(stack, stack.acme, Scope.SEND, Scope.READ, expires_in=timedelta(seconds=-1))
    refusals = {
        "no key": ({}, 401),
        "unknown": (bearer(revoked[:-4] + "abcd"), 401),
        "revoked": (bearer(revoked), 401),
        "expired": (bearer(expired), 401),
    }
    routes = keyed_routes(stack)
    assert len(routes) == 6
    bodies = {"/api/messages/email": EMAIL_REQUEST}
    for method, path, scope in routes:
        unscoped = await key_of(stack, stack.acme, Scope.READ if scope is Scope.SEND else Scope.SEND)
        concrete = path.replace("{conversation_id}", "1").replace("{message_id}", str(uuid.uuid4()))
        body = bodies.get(path, SMS_REQUEST) if method == "POST" else None
        for what, (headers, status) in {**refusals, "unscoped": (bearer(unscoped), 403)}.items():
            response = await stack.client.request(method, concrete, json=body, headers=headers)
            assert response.status == status, f"{method} {path} with {what}: {await response.text()}"

    # Had any refused send been published, it would be stored before this one.
    key = await key_of(stack, stack.acme)
    sentinel = await (await stack.client.post("/api/messages/sms", json=SMS_REQUEST, headers=bearer(key))).json()
    await eventually(lambda: stored_message(stack, key, sentinel["id"]), "the accepted send to be stored")
    assert count(stack.database_url, "SELECT count(*) FROM messages") == 1


async def test_another_accounts_conversations_and_messages_are_not_found(production: Stack) -> None:
    stack = production
    acme, globex = await key_of(stack, stack.acme), await key_of(stack, stack.globex)
    sent = await (await stack.client.post("/api/messages/sms", json=SMS_REQUEST, headers=bearer(acme))).json()
    message = await eventually(lambda: stored_message(stack, acme, sent["id"]), "the send to be stored")
    conversation = message["conversation_id"]

    theirs = await stack.client.get(f"/api/messages/{sent['id']}", headers=bearer(globex))
    their_conversation = await stack.client.get(f"/api/conversations/{conversation}/messages", headers=bearer(globex))
    missing = await stack.client.get(f"/api/messages/{uuid.uuid4()}", headers=bearer(globex))
    their_list = await (await stack.client.get("/api/conversations", headers=bearer(globex))).json()
    our_list = await (await stack.client.get("/api/conversations", headers=bearer(acme))).json()

    assert (theirs.status, their_conversation.status, missing.status) == (404, 404, 404)
    # Exactly as for an id that does not exist: nothing tells the two apart.
    assert (await theirs.json())["error"] == (await missing.json())["error"] == "not_found"
    assert their_list["conversations"] == []
    assert [item["id"] for item in our_list["conversations"]] == [conversation]


async def test_a_send_from_an_address_the_account_does_not_own_is_a_403(production: Stack) -> None:
    stack = production
    acme = await key_of(stack, stack.acme)

    theirs = await stack.client.post(
        "/api/messages/sms", json={**SMS_REQUEST, "from": GLOBEX_PHONE}, headers=bearer(acme)
    )
    nobodys = await stack.client.post(
        "/api/messages/sms", json={**SMS_REQUEST, "from": "+12016669999"}, headers=bearer(acme)
    )
    in_our_domain = await stack.client.post(
        "/api/messages/email", json={**EMAIL_REQUEST, "from": "sales@usehatchapp.com"}, headers=bearer(acme)
    )

    assert (theirs.status, nobodys.status, in_our_domain.status) == (403, 403, 202)
    assert (await theirs.json())["details"][0]["field"] == "from"


async def test_two_accounts_using_one_idempotency_key_make_two_messages(production: Stack) -> None:
    stack = production
    acme, globex = await key_of(stack, stack.acme), await key_of(stack, stack.globex)
    idempotency = {"Idempotency-Key": "order-42"}

    first = await stack.client.post("/api/messages/sms", json=SMS_REQUEST, headers={**idempotency, **bearer(acme)})
    second = await stack.client.post(
        "/api/messages/sms",
        json={**SMS_REQUEST, "from": GLOBEX_PHONE, "body": "a different body"},
        headers={**idempotency, **bearer(globex)},
    )

    assert (first.status, second.status) == (202, 202)
    ids = [(await first.json())["id"], (await second.json())["id"]]
    assert ids[0] != ids[1]
    await eventually(lambda: stored_message(stack, acme, ids[0]), "acme's message to be stored")
    await eventually(lambda: stored_message(stack, globex, ids[1]), "globex's message to be stored")
    assert count(stack.database_url, "SELECT count(DISTINCT account_id) FROM messages") == 2


async def test_an_inbound_message_is_stored_under_the_owner_of_its_to(start: StartStack) -> None:
    # Unsigned webhooks pass in the development profile only; an explicit owner still wins there.
    stack = await start(gateway_profile=Profile.DEVELOPMENT, conversation_profile=Profile.DEVELOPMENT)
    globex, acme = await key_of(stack, stack.globex), await key_of(stack, stack.acme)

    response = await stack.client.post("/api/webhooks/sms", json={**SMS_WEBHOOK, "to": GLOBEX_PHONE})

    assert response.status == 202
    message_id = (await response.json())["id"]
    stored = await eventually(lambda: stored_message(stack, globex, message_id), "the inbound message to be stored")
    assert stored["to"] == GLOBEX_PHONE
    assert await stored_message(stack, acme, message_id) is None
    assert (await stack.client.get(f"/api/messages/{message_id}")).status == 404  # the development account's view


async def test_an_inbound_message_that_no_account_receives_is_a_422_naming_to(start: StartStack) -> None:
    # conversation_service decides who owns what: in production nobody owns an unregistered address.
    stack = await start(gateway_profile=Profile.DEVELOPMENT)

    response = await stack.client.post("/api/webhooks/sms", json={**SMS_WEBHOOK, "to": "+12016669999"})

    assert response.status == 422
    assert [detail["field"] for detail in (await response.json())["details"]] == ["to"]


@pytest.fixture
def all_log_lines() -> Iterator[list[str]]:
    with log_lines() as lines:
        yield lines


async def test_keys_never_appear_in_clear_in_either_services_logs(production: Stack, all_log_lines: list[str]) -> None:
    stack = production
    key = await key_of(stack, stack.acme)
    revoked, revoked_stored = await stack.store.create_key(stack.acme, [Scope.READ])
    await stack.store.revoke_key(revoked_stored.prefix)

    sent = await (await stack.client.post("/api/messages/sms", json=SMS_REQUEST, headers=bearer(key))).json()
    await eventually(lambda: stored_message(stack, key, sent["id"]), "the send to be stored")
    await stack.client.get("/api/conversations", headers=bearer(revoked))
    await stack.client.post("/api/messages/sms", json={**SMS_REQUEST, "from": GLOBEX_PHONE}, headers=bearer(key))

    logged = "\n".join(all_log_lines)
    assert str(stack.acme.id) in logged
    for secret in (key, revoked):
        assert secret.split("_", 2)[2] not in logged
