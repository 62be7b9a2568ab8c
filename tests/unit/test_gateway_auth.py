"""The gateway's perimeter against a fake conversation_service: keys, scopes, owners, profiles, the
rate limit, and what the logs keep. What a client notices, and what reaches the bus."""

import asyncio
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from common.accounts import DEVELOPMENT_ACCOUNT_ID, Scope
from common.contracts import MessageReceived, SendMessage
from common.settings import Profile
from gateway.app import create_app
from gateway.auth import ROUTE_ACCESS
from gateway.settings import GatewaySettings
from tests.factories import EMAIL_REQUEST, SMS_REQUEST, log_lines, production_settings
from tests.fakes import FakeConversationService, MemoryKeyStore, RecordingPublisher
from tests.unit.test_gateway_api import EMAIL_WEBHOOK, SMS_WEBHOOK

ACME = uuid.UUID("0e6d2c1a-3b7f-4d1e-9a2b-5c8f0d4e6a71")
GLOBEX = uuid.UUID("7a1f3e5c-9d2b-4c6a-8e0f-1b3d5a7c9e24")
ACME_PHONE = "+12016661234"
GLOBEX_PHONE = "+12016665678"
# No account owns it, so in the development profile the development account does.
UNOWNED_PHONE = "+12016660000"
DEVELOPMENT_SMS = {**SMS_REQUEST, "from": UNOWNED_PHONE}

# A body each route accepts, so a refusal can only be the perimeter's.
BODIES: dict[str, Any] = {
    "/api/messages/sms": SMS_REQUEST,
    "/api/messages/email": EMAIL_REQUEST,
    "/messages/outbound/": SMS_REQUEST,
}
# The routes that take no API key, and why; every other route must ask for one.
KEYLESS = {
    ("GET", "/healthz"): "health",
    ("GET", "/readyz"): "health",
    # Prometheus's, with the internal service token in production (tests/integration/test_metrics.py).
    ("GET", "/metrics"): "metrics",
    ("GET", "/api/openapi.json"): "documentation",
    ("GET", "/api/docs"): "documentation",
    ("POST", "/api/webhooks/sms"): "provider",
    ("POST", "/api/webhooks/email"): "provider",
    ("POST", "/api/webhooks/sms/status"): "provider",
    ("POST", "/api/webhooks/email/status"): "provider",
    ("POST", "/messages/inbound/"): "provider",
}


class Stack:
    def __init__(self, client: TestClient, service: FakeConversationService, publisher: RecordingPublisher) -> None:
        self.client = client
        self.service = service
        self.publisher = publisher


async def start(
    aiohttp_client: Any,
    aiohttp_server: Any,
    *,
    profile: Profile = Profile.PRODUCTION,
    development_fallback: bool | None = None,
    **settings: Any,
) -> Stack:
    """The gateway in `profile`, before a fake conversation_service that gives unowned addresses to
    the development account as a development one does, unless `development_fallback` says otherwise."""
    if development_fallback is None:
        development_fallback = profile is Profile.DEVELOPMENT
    service = FakeConversationService("internal-token-for-tests", development_fallback=development_fallback)
    service.owners |= {ACME_PHONE: ACME, "@usehatchapp.com": ACME, GLOBEX_PHONE: GLOBEX}
    upstream = await aiohttp_server(service.app())
    values = {
        "conversation_service_url": str(upstream.make_url("")),
        "internal_service_token": service.service_token,
        **settings,
    }
    gateway_settings = (
        production_settings(GatewaySettings, **values) if profile is Profile.PRODUCTION else GatewaySettings(**values)
    )
    publisher = RecordingPublisher()
    app = create_app(gateway_settings, publisher=publisher, key_store=MemoryKeyStore())
    return Stack(await aiohttp_client(app), service, publisher)


@pytest.fixture
async def production(aiohttp_client: Any, aiohttp_server: Any) -> Stack:
    return await start(aiohttp_client, aiohttp_server)


@pytest.fixture
async def development(aiohttp_client: Any, aiohttp_server: Any) -> Stack:
    return await start(aiohttp_client, aiohttp_server, profile=Profile.DEVELOPMENT)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def keyed_routes() -> list[tuple[str, str, Scope]]:
    """Every route the app registers that asks for a key, with its scope, straight from the router."""
    app = create_app(GatewaySettings(), publisher=RecordingPublisher(), key_store=MemoryKeyStore())
    access = app[ROUTE_ACCESS]
    routes = [
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    ]
    unkeyed = {(method, path) for method, path in routes if access.get(path) is None or access[path].scope is None}
    # A route added without saying what it needs would be open: the list of open routes is fixed here.
    assert unkeyed == set(KEYLESS), unkeyed ^ set(KEYLESS)
    return [
        (method, path, scope)
        for method, path in routes
        if (method, path) not in KEYLESS and (scope := access[path].scope) is not None
    ]


KEYED = keyed_routes()


def request_options(method: str, path: str, headers: dict[str, str]) -> tuple[str, dict[str, Any]]:
    concrete = path.replace("{conversation_id}", "1").replace("{message_id}", str(uuid.uuid4()))
    options: dict[str, Any] = {"headers": headers}
    if method == "POST":
        options["json"] = BODIES[path]
    return concrete, options


def test_the_table_covers_sends_and_reads() -> None:
    assert {(path, scope) for _, path, scope in KEYED} >= {
        ("/api/messages/sms", Scope.SEND),
        ("/api/messages/email", Scope.SEND),
        ("/messages/outbound/", Scope.SEND),
        ("/api/conversations", Scope.READ),
        ("/api/conversations/{conversation_id}/messages", Scope.READ),
        ("/api/messages/{message_id}", Scope.READ),
    }


def other_scope(scope: Scope) -> Scope:
    return Scope.READ if scope is Scope.SEND else Scope.SEND


@pytest.mark.parametrize(("method", "path", "scope"), KEYED, ids=[f"{m} {p}" for m, p, _ in KEYED])
@pytest.mark.parametrize(
    "credential", ["none", "not bearer", "malformed", "unknown", "revoked", "expired", "wrong scope", "right scope"]
)
async def test_every_keyed_route_in_production(
    production: Stack, method: str, path: str, scope: Scope, credential: str
) -> None:
    service = production.service
    headers = {
        "none": {},
        "not bearer": {"Authorization": f"Basic {service.add_key(ACME)}"},
        "malformed": bearer("not-a-key"),
        "unknown": bearer("msk_0123abcd_" + "x" * 43),
        "revoked": bearer(revoked := service.add_key(ACME)),
        "expired": bearer(service.add_key(ACME, expires_at=datetime.now(UTC) - timedelta(seconds=1))),
        "wrong scope": bearer(service.add_key(ACME, (other_scope(scope),))),
        "right scope": bearer(service.add_key(ACME, (scope,))),
    }[credential]
    service.revoke(revoked)
    concrete, options = request_options(method, path, headers)

    response = await production.client.request(method, concrete, **options)
    body = await response.json()

    if credential == "right scope":
        assert response.status in (200, 202), body
        assert len(production.publisher.published) == (1 if method == "POST" else 0)
        return
    expected = 403 if credential == "wrong scope" else 401
    assert response.status == expected, body
    assert body["error"] == ("forbidden" if expected == 403 else "unauthorized")
    if expected == 401:
        assert response.headers["WWW-Authenticate"] == "Bearer"
    assert production.publisher.published == []
    assert service.reads == []


async def test_a_send_from_an_address_the_account_does_not_own_is_a_403_naming_from(production: Stack) -> None:
    key = production.service.add_key(ACME)

    theirs = await production.client.post(
        "/api/messages/sms", json={**SMS_REQUEST, "from": GLOBEX_PHONE}, headers=bearer(key)
    )
    nobodys = await production.client.post(
        "/api/messages/sms", json={**SMS_REQUEST, "from": "+12016669999"}, headers=bearer(key)
    )
    # A whole domain is the account's: any mailbox in it may send.
    ours = await production.client.post(
        "/api/messages/email", json={**EMAIL_REQUEST, "from": "sales@usehatchapp.com"}, headers=bearer(key)
    )

    assert (theirs.status, nobodys.status, ours.status) == (403, 403, 202)
    for refused in (theirs, nobodys):
        assert [detail["field"] for detail in (await refused.json())["details"]] == ["from"]
    [command] = production.publisher.published
    assert isinstance(command, SendMessage)
    assert command.account_id == ACME


async def test_two_accounts_may_use_one_idempotency_key_for_different_messages(production: Stack) -> None:
    headers = {"Idempotency-Key": "order-42"}
    acme = await production.client.post(
        "/api/messages/sms", json=SMS_REQUEST, headers={**headers, **bearer(production.service.add_key(ACME))}
    )
    globex = await production.client.post(
        "/api/messages/sms",
        json={**SMS_REQUEST, "from": GLOBEX_PHONE, "body": "another body"},
        headers={**headers, **bearer(production.service.add_key(GLOBEX))},
    )

    assert (acme.status, globex.status) == (202, 202)
    assert "Idempotent-Replayed" not in globex.headers
    assert (await acme.json())["id"] != (await globex.json())["id"]
    assert [command.account_id for command in production.publisher.published] == [ACME, GLOBEX]  # type: ignore[attr-defined]


async def test_reads_act_for_the_keys_account(production: Stack) -> None:
    response = await production.client.get("/api/conversations", headers=bearer(production.service.add_key(GLOBEX)))

    assert response.status == 200
    assert production.service.reads == [("/conversations", str(GLOBEX))]


# Webhooks in the development profile: production asks for the providers' signatures, another matter.
@pytest.mark.parametrize("path", ["/api/webhooks/sms", "/messages/inbound/"])
async def test_an_inbound_message_goes_to_the_owner_of_its_to_without_a_key(
    aiohttp_client: Any, aiohttp_server: Any, path: str
) -> None:
    stack = await start(aiohttp_client, aiohttp_server, profile=Profile.DEVELOPMENT)

    response = await stack.client.post(path, json={**SMS_WEBHOOK, "to": GLOBEX_PHONE})

    assert response.status == 202
    [event] = stack.publisher.published
    assert isinstance(event, MessageReceived)
    # An explicit owner wins over the development account.
    assert event.account_id == GLOBEX


async def test_an_inbound_message_nobody_receives_is_a_422_naming_to(aiohttp_client: Any, aiohttp_server: Any) -> None:
    stack = await start(aiohttp_client, aiohttp_server, profile=Profile.DEVELOPMENT, development_fallback=False)

    sms = await stack.client.post("/api/webhooks/sms", json={**SMS_WEBHOOK, "to": "+12016669999"})
    email = await stack.client.post("/api/webhooks/email", json={**EMAIL_WEBHOOK, "to": "someone@elsewhere.org"})

    assert (sms.status, email.status) == (422, 422)
    for response in (sms, email):
        assert [detail["field"] for detail in (await response.json())["details"]] == ["to"]
    assert stack.publisher.published == []


async def test_documentation_needs_no_key_in_production(production: Stack) -> None:
    description = await production.client.get("/api/openapi.json")
    docs = await production.client.get("/api/docs")

    assert (description.status, docs.status) == (200, 200)


async def test_development_passes_without_a_key_as_the_development_account(development: Stack) -> None:
    send = await development.client.post("/api/messages/sms", json=DEVELOPMENT_SMS)
    webhook = await development.client.post("/api/webhooks/sms", json={**SMS_WEBHOOK, "to": UNOWNED_PHONE})
    read = await development.client.get("/api/conversations")

    assert (send.status, webhook.status, read.status) == (202, 202, 200)
    assert [contract.account_id for contract in development.publisher.published] == [  # type: ignore[attr-defined]
        DEVELOPMENT_ACCOUNT_ID,
        DEVELOPMENT_ACCOUNT_ID,
    ]
    assert development.service.reads == [("/conversations", str(DEVELOPMENT_ACCOUNT_ID))]


async def test_development_checks_a_key_that_is_there(development: Stack) -> None:
    unknown = await development.client.get("/api/conversations", headers=bearer("msk_0123abcd_" + "x" * 43))
    acme = await development.client.get("/api/conversations", headers=bearer(development.service.add_key(ACME)))
    # An owned address stays its owner's, development or not.
    theft = await development.client.post("/api/messages/sms", json={**SMS_REQUEST, "from": GLOBEX_PHONE})

    assert (unknown.status, acme.status, theft.status) == (401, 200, 403)
    assert development.service.reads == [("/conversations", str(ACME))]


@pytest.mark.parametrize("host", ["evil.example", "192.168.1.20:8080", "127.0.0.1.evil.example", "[::2]"])
async def test_development_refuses_a_host_that_is_not_loopback(development: Stack, host: str) -> None:
    response = await development.client.post("/api/messages/sms", json=SMS_REQUEST, headers={"Host": host})

    assert response.status == 403
    body = await response.json()
    assert [detail["field"] for detail in body["details"]] == ["Host"]
    assert development.publisher.published == []


@pytest.mark.parametrize("host", ["127.0.0.1:8080", "localhost", "LOCALHOST:1234", "[::1]:8080", "127.0.0.1"])
async def test_development_answers_loopback_hosts(development: Stack, host: str) -> None:
    response = await development.client.post("/api/messages/sms", json=DEVELOPMENT_SMS, headers={"Host": host})

    assert response.status == 202


async def test_production_serves_any_host(production: Stack) -> None:
    key = production.service.add_key(ACME)
    response = await production.client.get("/api/conversations", headers={**bearer(key), "Host": "api.example.com"})

    assert response.status == 200


@pytest.mark.parametrize("path", ["/api/messages/sms", "/api/webhooks/sms", "/messages/outbound/"])
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
async def test_json_routes_refuse_another_content_type_with_a_415(
    development: Stack, path: str, content_type: str
) -> None:
    # What a page can post to another origin without asking first.
    body = json.dumps(SMS_REQUEST if "webhooks" not in path else SMS_WEBHOOK)
    response = await development.client.post(path, data=body, headers={"Content-Type": content_type})

    assert response.status == 415
    assert [detail["field"] for detail in (await response.json())["details"]] == ["Content-Type"]
    assert development.publisher.published == []


async def test_a_key_past_its_rate_limit_gets_a_429_with_retry_after(aiohttp_client: Any, aiohttp_server: Any) -> None:
    stack = await start(aiohttp_client, aiohttp_server, rate_limit_per_second=0.5, rate_limit_burst=2)
    key, other = stack.service.add_key(ACME), stack.service.add_key(ACME)

    answers = [(await stack.client.get("/api/conversations", headers=bearer(key))) for _ in range(3)]
    others = await stack.client.get("/api/conversations", headers=bearer(other))

    assert [answer.status for answer in answers] == [200, 200, 429]
    limited = answers[2]
    assert limited.headers["Retry-After"] == "2"
    assert (await limited.json())["error"] == "rate_limited"
    # Per key: another key of the same account has its own bucket.
    assert others.status == 200


async def test_the_development_account_without_a_key_is_limited_as_one_client(
    aiohttp_client: Any, aiohttp_server: Any
) -> None:
    stack = await start(
        aiohttp_client, aiohttp_server, profile=Profile.DEVELOPMENT, rate_limit_per_second=0.5, rate_limit_burst=1
    )

    first = await stack.client.post("/api/messages/sms", json=DEVELOPMENT_SMS)
    second = await stack.client.get("/api/conversations")

    assert (first.status, second.status) == (202, 429)


async def test_a_verified_key_is_cached_and_a_revoke_holds_once_the_cache_lapses(
    aiohttp_client: Any, aiohttp_server: Any
) -> None:
    cached = await start(aiohttp_client, aiohttp_server, auth_cache_seconds=60)
    key = cached.service.add_key(ACME)
    for _ in range(3):
        assert (await cached.client.get("/api/conversations", headers=bearer(key))).status == 200
    assert cached.service.verifications == 1

    uncached = await start(aiohttp_client, aiohttp_server, auth_cache_seconds=0)
    key = uncached.service.add_key(ACME)
    assert (await uncached.client.get("/api/conversations", headers=bearer(key))).status == 200
    uncached.service.revoke(key)
    assert (await uncached.client.get("/api/conversations", headers=bearer(key))).status == 401


async def test_webhooks_in_flight_together_ask_for_their_recipients_owner_once(
    aiohttp_client: Any, aiohttp_server: Any
) -> None:
    stack = await start(aiohttp_client, aiohttp_server, profile=Profile.DEVELOPMENT)
    stack.service.owner_gate = asyncio.Event()
    posts = [
        asyncio.create_task(
            stack.client.post(
                "/api/webhooks/sms", json={**SMS_WEBHOOK, "to": GLOBEX_PHONE, "messaging_provider_id": f"m-{n}"}
            )
        )
        for n in range(20)
    ]
    await asyncio.wait_for(stack.service.owner_asked.wait(), 5)
    # Long enough for every webhook to reach the lookup; the first one's is held at the gate meanwhile.
    await asyncio.sleep(0.2)
    stack.service.owner_gate.set()
    responses = await asyncio.gather(*posts)

    assert [response.status for response in responses] == [202] * 20
    assert stack.service.owner_lookups == 1
    assert {event.account_id for event in stack.publisher.published} == {GLOBEX}  # type: ignore[attr-defined]


async def test_a_shared_lookup_that_failed_is_not_kept(aiohttp_client: Any, aiohttp_server: Any) -> None:
    stack = await start(aiohttp_client, aiohttp_server, profile=Profile.DEVELOPMENT)
    stack.service.available = False
    refused = await asyncio.gather(
        *(
            stack.client.post(
                "/api/webhooks/sms", json={**SMS_WEBHOOK, "to": GLOBEX_PHONE, "messaging_provider_id": f"m-{n}"}
            )
            for n in range(5)
        )
    )
    stack.service.available = True
    accepted = await stack.client.post("/api/webhooks/sms", json={**SMS_WEBHOOK, "to": GLOBEX_PHONE})

    assert [response.status for response in refused] == [503] * 5
    assert accepted.status == 202


async def test_a_caller_that_gives_up_does_not_cancel_the_lookup_it_shares(
    aiohttp_client: Any, aiohttp_server: Any
) -> None:
    stack = await start(aiohttp_client, aiohttp_server, profile=Profile.DEVELOPMENT)
    stack.service.owner_gate = asyncio.Event()
    body = {**SMS_WEBHOOK, "to": GLOBEX_PHONE}
    abandoned = asyncio.create_task(stack.client.post("/api/webhooks/sms", json=body))
    await asyncio.wait_for(stack.service.owner_asked.wait(), 5)
    waiting = asyncio.create_task(
        stack.client.post("/api/webhooks/sms", json={**body, "messaging_provider_id": "message-2"})
    )
    await asyncio.sleep(0.2)
    abandoned.cancel()
    await asyncio.gather(abandoned, return_exceptions=True)
    stack.service.owner_gate.set()

    assert (await waiting).status == 202
    assert stack.service.owner_lookups == 1


async def test_while_conversation_service_is_away_owners_it_named_still_hold_but_keys_do_not(
    aiohttp_client: Any, aiohttp_server: Any
) -> None:
    stack = await start(aiohttp_client, aiohttp_server, profile=Profile.DEVELOPMENT, auth_cache_seconds=0)
    key = stack.service.add_key(ACME)
    assert (await stack.client.post("/api/webhooks/sms", json={**SMS_WEBHOOK, "to": GLOBEX_PHONE})).status == 202
    assert (await stack.client.get("/api/conversations", headers=bearer(key))).status == 200
    stack.service.available = False

    inbound = await stack.client.post(
        "/api/webhooks/sms", json={**SMS_WEBHOOK, "to": GLOBEX_PHONE, "messaging_provider_id": "message-2"}
    )
    keyed = await stack.client.get("/api/conversations", headers=bearer(key))
    never_asked = await stack.client.post("/api/webhooks/sms", json={**SMS_WEBHOOK, "to": UNOWNED_PHONE})

    assert (inbound.status, keyed.status, never_asked.status) == (202, 503, 503)
    assert [event.account_id for event in stack.publisher.published] == [GLOBEX, GLOBEX]  # type: ignore[attr-defined]


async def test_the_gateway_checks_the_expiry_itself(production: Stack) -> None:
    # As a cached answer would be: conversation_service said yes before the key expired.
    production.service.honours_expiry = False
    key = production.service.add_key(ACME, expires_at=datetime.now(UTC) - timedelta(seconds=1))

    response = await production.client.get("/api/conversations", headers=bearer(key))

    assert response.status == 401
    assert production.service.verifications == 1


async def test_the_correlation_id_is_echoed_on_every_answer(production: Stack) -> None:
    given = str(uuid.uuid4())
    key = production.service.add_key(ACME)
    refused = await production.client.get("/api/conversations", headers={"X-Correlation-ID": given})
    accepted = await production.client.post(
        "/api/messages/sms", json=SMS_REQUEST, headers={"X-Correlation-ID": given, **bearer(key)}
    )
    made_up = await production.client.get("/api/nothing", headers={"X-Correlation-ID": "not a uuid"})

    assert (refused.status, accepted.status, made_up.status) == (401, 202, 404)
    assert refused.headers["X-Correlation-ID"] == accepted.headers["X-Correlation-ID"] == given
    uuid.UUID(made_up.headers["X-Correlation-ID"])
    assert production.publisher.published[0].correlation_id == uuid.UUID(given)


@pytest.fixture
def all_log_lines() -> Iterator[list[str]]:
    with log_lines() as lines:
        yield lines


async def test_keys_never_appear_in_clear_in_the_logs(
    aiohttp_client: Any, aiohttp_server: Any, all_log_lines: list[str]
) -> None:
    stack = await start(aiohttp_client, aiohttp_server, rate_limit_burst=3)
    good, revoked = stack.service.add_key(ACME), stack.service.add_key(ACME)
    read_only = stack.service.add_key(ACME, (Scope.READ,))
    stack.service.revoke(revoked)
    client = stack.client

    await client.post("/api/messages/sms", json=SMS_REQUEST, headers=bearer(good))
    await client.post("/api/messages/sms", json={**SMS_REQUEST, "from": GLOBEX_PHONE}, headers=bearer(good))
    await client.get("/api/conversations", headers=bearer(good))
    await client.get("/api/conversations", headers=bearer(good))  # rate limited
    await client.get("/api/conversations", headers=bearer(revoked))
    await client.post("/api/messages/sms", json=SMS_REQUEST, headers=bearer(read_only))
    await client.get("/api/conversations", headers=bearer("msk_0123abcd_" + "y" * 43))
    await stack.client.server.close()  # type: ignore[union-attr]

    logged = "\n".join(all_log_lines)
    assert "api key refused" in logged
    for key in (good, revoked, read_only, "msk_0123abcd_" + "y" * 43):
        secret = key.split("_", 2)[2]
        assert secret not in logged
    # The prefix names a key in the logs, as in bin/admin's lists.
    assert revoked.split("_")[1] in logged


async def test_the_gateway_answers_only_with_the_service_token_its_upstream_expects(
    aiohttp_client: Any, aiohttp_server: Any
) -> None:
    stack = await start(aiohttp_client, aiohttp_server)
    key = stack.service.add_key(ACME)
    stack.service.service_token = "another-token-entirely"

    response = await stack.client.get("/api/conversations", headers=bearer(key))

    # The key cannot be checked: unavailable, not the client's fault.
    assert response.status == 503


async def raw_post(client: TestClient, head_lines: bytes) -> tuple[int, dict[str, Any]]:
    """POST a send over a raw socket, with header lines HTTP clients refuse to send."""
    body = json.dumps(SMS_REQUEST).encode()
    head = (
        f"POST /api/messages/sms HTTP/1.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(head + head_lines + b"\r\n" + body)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])


@pytest.mark.parametrize(
    "authorization",
    [b"Bearer msk_0123abcd_\xff\xfe\xc3\xa9", b"Bearer \xc3\xa9\xc3\xa9", b"\xff\xff", b"Bearer msk_0123abcd_"],
)
async def test_an_authorization_header_of_any_bytes_is_a_401_never_a_5xx(
    production: Stack, authorization: bytes
) -> None:
    host = f"Host: {production.client.host}\r\n".encode()
    status, body = await raw_post(production.client, host + b"Authorization: " + authorization + b"\r\n")

    assert (status, body["error"]) == (401, "unauthorized")
    assert production.publisher.published == []


async def test_a_host_of_any_bytes_is_refused_in_development_never_a_5xx(development: Stack) -> None:
    status, body = await raw_post(development.client, b"Host: 127.0.0.1\xff\xfe.evil\r\n")

    assert 400 <= status < 500, body
    assert development.publisher.published == []
