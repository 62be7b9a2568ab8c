"""Every provider webhook's signature, through the gateway with a fake publisher: a valid one is taken;
a missing (in production), wrong, tampered or stale one is a 403, publishes nothing, and leaves
exactly one quarantine entry holding the request as it came.

The signatures here are made from the providers' specs with the providers' tools (twilio's
RequestValidator, cryptography, hmac), not with the gateway's or the mocks' code.
"""

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import ValidationError
from twilio.request_validator import RequestValidator

from common import context
from common.accounts import DEVELOPMENT_ACCOUNT_ID
from common.contracts import DeliveryReported, MessageReceived
from common.settings import Profile
from gateway.app import create_app
from gateway.quarantine import QuarantinedWebhook
from gateway.settings import GatewaySettings
from gateway.signatures import SignatureRefused
from gateway.views import WEBHOOKS
from tests.fakes import FakeConversationService, MemoryKeyStore, RecordingPublisher

BASE_URL = "https://hooks.example.com"
SMS_TOKEN = "sms-auth-token-of-the-tests"
EMAIL_SECRET = "email-webhook-secret-of-the-tests"
EVENTS_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_KEY = ec.generate_private_key(ec.SECP256R1())
TOLERANCE_SECONDS = 300
OURS = uuid.UUID("6f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9")

SMS_INBOUND = {
    "from": "+18045551234",
    "to": "+12016661234",
    "type": "sms",
    "messaging_provider_id": "SM-inbound-1",
    "body": "Hello from a phone",
    "attachments": None,
    "timestamp": "2024-11-01T14:00:00Z",
}
EMAIL_INBOUND = {
    "from": "contact@gmail.com",
    "to": "user@usehatchapp.com",
    "xillio_id": "xillio-inbound-1",
    "body": "<p>Hello from a mailbox</p>",
    "attachments": [],
    "timestamp": "2024-11-01T14:00:00Z",
}
SMS_STATUS_FORM = [("MessageSid", "SM0123456789abcdef"), ("MessageStatus", "delivered"), ("To", "+18045551234")]
EMAIL_EVENTS = [
    {
        "message_id": str(OURS),
        "event": "delivered",
        "sg_message_id": "sg-1.filter0001",
        "timestamp": 1730469600,
        "email": "Hello@example.com",
    }
]


def public_key_setting(key: ec.EllipticCurvePrivateKey) -> str:
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode()


def gateway_settings(profile: Profile, **overrides: Any) -> GatewaySettings:
    values: dict[str, Any] = {
        "conversation_service_url": "http://127.0.0.1:1",
        "public_base_url": BASE_URL,
        "sms_webhook_auth_token": SMS_TOKEN,
        "email_webhook_secret": EMAIL_SECRET,
        "email_events_public_key": public_key_setting(EVENTS_KEY),
        "webhook_signature_tolerance_seconds": TOLERANCE_SECONDS,
    }
    settings = GatewaySettings(**{**values, **overrides})
    # Production's start-up checks (a broker password of its own...) are not what these tests are about.
    return settings.model_copy(update={"messaging_profile": profile})


@dataclass(frozen=True)
class Signing:
    """How a test signs: which secrets, at which time."""

    sms_token: str = SMS_TOKEN
    email_secret: str = EMAIL_SECRET
    events_key: ec.EllipticCurvePrivateKey = EVENTS_KEY
    at: int = field(default_factory=lambda: int(time.time()))


@dataclass(frozen=True)
class Post:
    path_qs: str
    body: bytes
    headers: dict[str, str]


def twilio_json(path: str, document: Any, signing: Signing) -> Post:
    body = json.dumps(document).encode()
    separator = "&" if "?" in path else "?"
    path_qs = f"{path}{separator}bodySHA256={hashlib.sha256(body).hexdigest()}"
    signature = RequestValidator(signing.sms_token).compute_signature(BASE_URL + path_qs, {})
    return Post(path_qs, body, {"Content-Type": "application/json", "X-Twilio-Signature": signature})


def sms_inbound(signing: Signing) -> Post:
    return twilio_json("/api/webhooks/sms", SMS_INBOUND, signing)


def sms_status(signing: Signing, message_id: uuid.UUID = OURS) -> Post:
    path_qs = f"/api/webhooks/sms/status?message_id={message_id}"
    body = "&".join(f"{name}={value.replace('+', '%2B')}" for name, value in SMS_STATUS_FORM).encode()
    signature = RequestValidator(signing.sms_token).compute_signature(BASE_URL + path_qs, dict(SMS_STATUS_FORM))
    return Post(path_qs, body, {"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": signature})


def sms_status_as_json(signing: Signing) -> Post:
    return twilio_json(f"/api/webhooks/sms/status?message_id={OURS}", dict(SMS_STATUS_FORM), signing)


def xillio(path: str, document: Any, signing: Signing) -> Post:
    body = json.dumps(document).encode()
    digest = hmac.new(signing.email_secret.encode(), f"{signing.at}.".encode() + body, hashlib.sha256).hexdigest()
    return Post(path, body, {"Content-Type": "application/json", "X-Xillio-Signature": f"t={signing.at},v1={digest}"})


def email_inbound(signing: Signing) -> Post:
    return xillio("/api/webhooks/email", EMAIL_INBOUND, signing)


def email_status(signing: Signing) -> Post:
    body = json.dumps(EMAIL_EVENTS).encode()
    signature = signing.events_key.sign(str(signing.at).encode() + body, ec.ECDSA(hashes.SHA256()))
    return Post(
        "/api/webhooks/email/status",
        body,
        {
            "Content-Type": "application/json",
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": str(signing.at),
        },
    )


def compatible_sms(signing: Signing) -> Post:
    return twilio_json("/messages/inbound/", SMS_INBOUND, signing)


def compatible_email(signing: Signing) -> Post:
    return xillio("/messages/inbound/", {**EMAIL_INBOUND, "type": "email"}, signing)


@dataclass(frozen=True)
class Webhook:
    name: str
    post: Callable[[Signing], Post]
    accepted_status: int
    published: type
    # The headers that carry its signature, all dropped for "unsigned".
    signature_headers: tuple[str, ...]
    timestamped: bool
    wrong_secret: Signing


TWILIO = ("X-Twilio-Signature",)
XILLIO = ("X-Xillio-Signature",)
SENDGRID = ("X-Twilio-Email-Event-Webhook-Signature", "X-Twilio-Email-Event-Webhook-Timestamp")
WRONG_SMS = Signing(sms_token="not-the-token")
WRONG_EMAIL = Signing(email_secret="not-the-secret")
WRONG_KEY = Signing(events_key=OTHER_KEY)

WEBHOOKS_SIGNED = [
    Webhook("sms inbound", sms_inbound, 202, MessageReceived, TWILIO, False, WRONG_SMS),
    Webhook("sms status", sms_status, 200, DeliveryReported, TWILIO, False, WRONG_SMS),
    Webhook("email inbound", email_inbound, 202, MessageReceived, XILLIO, True, WRONG_EMAIL),
    Webhook("email status", email_status, 200, DeliveryReported, SENDGRID, True, WRONG_KEY),
    Webhook("inbound alias, sms", compatible_sms, 202, MessageReceived, TWILIO, False, WRONG_SMS),
    Webhook("inbound alias, email", compatible_email, 202, MessageReceived, XILLIO, True, WRONG_EMAIL),
    Webhook("sms status as JSON", sms_status_as_json, 200, DeliveryReported, TWILIO, False, WRONG_SMS),
]
each_webhook = pytest.mark.parametrize("webhook", WEBHOOKS_SIGNED, ids=lambda webhook: webhook.name)


@pytest.fixture
def publisher() -> RecordingPublisher:
    return RecordingPublisher()


@pytest.fixture
async def owners_url(aiohttp_server: Any) -> str:
    """A conversation_service that names the development account the owner of every address."""
    token = GatewaySettings.model_fields["internal_service_token"].default
    return str((await aiohttp_server(FakeConversationService(token).app())).make_url(""))


async def gateway(aiohttp_client: Any, publisher: RecordingPublisher, profile: Profile, owners_url: str) -> TestClient:
    app = create_app(
        gateway_settings(profile, conversation_service_url=owners_url), publisher=publisher, key_store=MemoryKeyStore()
    )
    return await aiohttp_client(app)


@pytest.fixture
async def production(aiohttp_client: Any, publisher: RecordingPublisher, owners_url: str) -> TestClient:
    return await gateway(aiohttp_client, publisher, Profile.PRODUCTION, owners_url)


@pytest.fixture
async def development(aiohttp_client: Any, publisher: RecordingPublisher, owners_url: str) -> TestClient:
    return await gateway(aiohttp_client, publisher, Profile.DEVELOPMENT, owners_url)


async def send(client: TestClient, post: Post) -> Any:
    return await client.post(post.path_qs, data=post.body, headers=post.headers)


def quarantined(publisher: RecordingPublisher) -> list[QuarantinedWebhook]:
    return [contract for contract in publisher.published if isinstance(contract, QuarantinedWebhook)]


async def assert_refused(response: Any, publisher: RecordingPublisher, post: Post, webhook: Webhook) -> str:
    """403 with a JSON error, nothing published but one quarantine entry, holding the request; its reason."""
    assert response.status == 403, await response.text()
    error = await response.json()
    assert error["error"] and error["message"]
    assert error["details"][0]["reason"]
    [entry] = publisher.published
    assert isinstance(entry, QuarantinedWebhook)
    kept = entry.request
    assert (kept.method, kept.url, kept.path_qs, kept.body) == (
        "POST",
        BASE_URL + post.path_qs,
        post.path_qs,
        post.body,
    )
    kept_headers = dict(kept.headers)
    assert all(kept_headers.get(name) == value for name, value in post.headers.items())
    assert entry.reason == error["details"][0]["reason"]
    return entry.reason


@each_webhook
async def test_a_valid_signature_is_taken(
    production: TestClient, publisher: RecordingPublisher, webhook: Webhook
) -> None:
    response = await send(production, webhook.post(Signing()))

    assert response.status == webhook.accepted_status, await response.text()
    [published] = publisher.published
    assert isinstance(published, webhook.published)


@each_webhook
async def test_production_refuses_an_unsigned_webhook(
    production: TestClient, publisher: RecordingPublisher, webhook: Webhook
) -> None:
    signed = webhook.post(Signing())
    post = Post(signed.path_qs, signed.body, {"Content-Type": "application/json"})
    if webhook.post is sms_status:
        post.headers["Content-Type"] = "application/x-www-form-urlencoded"

    reason = await assert_refused(await send(production, post), publisher, post, webhook)
    assert "not signed" in reason


@each_webhook
async def test_a_signature_with_another_secret_is_refused(
    production: TestClient, publisher: RecordingPublisher, webhook: Webhook
) -> None:
    post = webhook.post(webhook.wrong_secret)

    await assert_refused(await send(production, post), publisher, post, webhook)


@each_webhook
async def test_one_byte_changed_in_the_body_is_refused(
    production: TestClient, publisher: RecordingPublisher, webhook: Webhook
) -> None:
    signed = webhook.post(Signing())
    position = signed.body.index(b"e")
    post = Post(signed.path_qs, signed.body[:position] + b"a" + signed.body[position + 1 :], signed.headers)

    await assert_refused(await send(production, post), publisher, post, webhook)


async def test_another_message_id_in_the_callback_url_is_refused(
    production: TestClient, publisher: RecordingPublisher
) -> None:
    signed = sms_status(Signing())
    other = uuid.uuid4()
    post = Post(signed.path_qs.replace(str(OURS), str(other)), signed.body, signed.headers)

    await assert_refused(await send(production, post), publisher, post, WEBHOOKS_SIGNED[1])


async def test_a_signature_over_another_public_url_is_refused(
    production: TestClient, publisher: RecordingPublisher
) -> None:
    """What is signed is PUBLIC_BASE_URL + path + query, not the address the request reached."""
    post = sms_status(Signing())
    validator = RequestValidator(SMS_TOKEN)
    reached = str(production.make_url(post.path_qs))
    forged = Post(
        post.path_qs,
        post.body,
        {**post.headers, "X-Twilio-Signature": validator.compute_signature(reached, dict(SMS_STATUS_FORM))},
    )

    await assert_refused(await send(production, forged), publisher, forged, WEBHOOKS_SIGNED[1])


@pytest.mark.parametrize(
    "webhook", [webhook for webhook in WEBHOOKS_SIGNED if webhook.timestamped], ids=lambda webhook: webhook.name
)
@pytest.mark.parametrize("seconds", [-TOLERANCE_SECONDS - 5, TOLERANCE_SECONDS + 5], ids=["stale", "from the future"])
async def test_a_timestamp_outside_the_window_is_refused(
    production: TestClient, publisher: RecordingPublisher, webhook: Webhook, seconds: int
) -> None:
    post = webhook.post(Signing(at=int(time.time()) + seconds))

    reason = await assert_refused(await send(production, post), publisher, post, webhook)
    assert "timestamp" in reason


@each_webhook
async def test_development_takes_an_unsigned_webhook(
    development: TestClient, publisher: RecordingPublisher, webhook: Webhook
) -> None:
    signed = webhook.post(Signing())
    headers = {name: value for name, value in signed.headers.items() if name not in webhook.signature_headers}

    response = await send(development, Post(signed.path_qs, signed.body, headers))

    assert response.status == webhook.accepted_status, await response.text()
    [published] = publisher.published
    assert isinstance(published, webhook.published)


@each_webhook
async def test_development_refuses_a_signature_that_does_not_verify(
    development: TestClient, publisher: RecordingPublisher, webhook: Webhook
) -> None:
    post = webhook.post(webhook.wrong_secret)

    await assert_refused(await send(development, post), publisher, post, webhook)


async def test_production_refuses_the_inbound_alias_without_a_type(
    production: TestClient, publisher: RecordingPublisher
) -> None:
    post = xillio("/messages/inbound/", EMAIL_INBOUND, Signing())

    reason = await assert_refused(await send(production, post), publisher, post, WEBHOOKS_SIGNED[5])
    assert "type" in reason


async def test_a_quarantined_webhook_passes_once_the_secret_is_fixed(
    aiohttp_client: Any, publisher: RecordingPublisher, owners_url: str
) -> None:
    """The gateway had a wrong secret an hour ago, when the provider posted; with the secret fixed,
    the kept request verifies as it was, its timestamp judged by its arrival, and is published."""
    misconfigured = create_app(
        gateway_settings(Profile.PRODUCTION, email_webhook_secret="a-wrong-secret"),
        publisher=publisher,
        key_store=MemoryKeyStore(),
    )
    an_hour_ago = int(time.time()) - 3600
    post = email_inbound(Signing(at=an_hour_ago))
    await assert_refused(await send(await aiohttp_client(misconfigured), post), publisher, post, WEBHOOKS_SIGNED[2])
    [arrived_now] = quarantined(publisher)
    an_hour_ago_received = arrived_now.request.model_copy(
        update={"received_at": datetime.fromtimestamp(an_hour_ago, UTC)}
    )
    arrived_an_hour_ago = arrived_now.model_copy(update={"request": an_hour_ago_received})

    fixed_publisher = RecordingPublisher()
    fixed = await aiohttp_client(
        create_app(
            gateway_settings(Profile.PRODUCTION, conversation_service_url=owners_url),
            publisher=fixed_publisher,
            key_store=MemoryKeyStore(),
        )
    )
    webhooks = fixed.app[WEBHOOKS]
    context.account_id.set(DEVELOPMENT_ACCOUNT_ID)  # as the authentication middleware would
    with pytest.raises(SignatureRefused, match="timestamp"):
        await webhooks.handle(arrived_now.replayed_at(webhooks.origin_for(arrived_now.request.origin)), uuid.uuid4())
    replayed = arrived_an_hour_ago.replayed_at(webhooks.origin_for(arrived_an_hour_ago.request.origin))
    answer = await webhooks.handle(replayed, arrived_an_hour_ago.correlation_id)

    assert answer.status == 202
    [received] = fixed_publisher.published
    assert isinstance(received, MessageReceived)
    assert received.provider_message_id == EMAIL_INBOUND["xillio_id"]


async def test_a_refused_webhook_that_cannot_be_kept_is_a_503_so_the_provider_retries(
    production: TestClient, publisher: RecordingPublisher
) -> None:
    publisher.fail = True
    post = email_inbound(Signing(email_secret="not-the-secret"))

    response = await send(production, post)

    assert response.status == 503, await response.text()
    assert publisher.published == []


def production_environment(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    monkeypatch.setenv("MESSAGING_PROFILE", "production")
    monkeypatch.setenv("BIND_HOST", "0.0.0.0")
    monkeypatch.setenv("AMQP_URL", "amqp://messaging:a-real-password@rabbitmq:5672/")
    monkeypatch.setenv("INTERNAL_SERVICE_TOKEN", "an-internal-token-of-production")
    for name, value in values.items():
        monkeypatch.setenv(name, value)


def test_production_names_each_webhook_secret_it_lacks(monkeypatch: pytest.MonkeyPatch) -> None:
    production_environment(monkeypatch)

    with pytest.raises(ValidationError) as refused:
        GatewaySettings()

    message = str(refused.value)
    for name in ("SMS_WEBHOOK_AUTH_TOKEN", "EMAIL_WEBHOOK_SECRET", "EMAIL_EVENTS_PUBLIC_KEY"):
        assert name in message


def test_production_needs_the_public_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    production_environment(
        monkeypatch,
        SMS_WEBHOOK_AUTH_TOKEN="a-twilio-auth-token",
        EMAIL_WEBHOOK_SECRET="a-xillio-secret",
        EMAIL_EVENTS_PUBLIC_KEY=public_key_setting(EVENTS_KEY),
    )
    with pytest.raises(ValidationError, match="PUBLIC_BASE_URL"):
        GatewaySettings()

    monkeypatch.setenv("PUBLIC_BASE_URL", "https://api.example.com")
    assert GatewaySettings().public_base_url == "https://api.example.com"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("not base64!", "base64 DER"),
        (base64.b64encode(b"not a key").decode(), "base64 DER"),
        (
            base64.b64encode(
                ec.generate_private_key(ec.SECP384R1())
                .public_key()
                .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
            ).decode(),
            "P-256",
        ),
    ],
    ids=["not base64", "not DER", "another curve"],
)
def test_an_unreadable_events_public_key_is_refused_at_start(value: str, reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        GatewaySettings(email_events_public_key=value)


@pytest.mark.parametrize("value", ["é", "not base64 at all", "", "t=é,v1=é", "🙂"], ids=repr)
@each_webhook
async def test_a_signature_header_of_any_text_is_a_403_not_a_500(
    production: TestClient, publisher: RecordingPublisher, webhook: Webhook, value: str
) -> None:
    signed = webhook.post(Signing())
    # The signature itself; a timestamp beside it stays valid, so that the signature is what is read.
    post = Post(signed.path_qs, signed.body, {**signed.headers, webhook.signature_headers[0]: value})

    response = await production.post(
        post.path_qs, data=post.body, headers={name: v.encode().decode("latin-1") for name, v in post.headers.items()}
    )

    assert response.status == 403, await response.text()
    assert len(quarantined(publisher)) == 1
