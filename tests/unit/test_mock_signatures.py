"""The mock providers sign what they post as their providers do: each post, caught as raw bytes,
verifies with the gateway's own checks and the matching secret, and fails with another."""

import base64
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from multidict import CIMultiDict
from pytest_aiohttp import AiohttpClient, AiohttpServer

from common.mock_provider import MockBehaviour
from email_service import mock_provider as email_mock
from email_service.settings import load_private_key
from gateway.signatures import (
    SendGridSignature,
    SignatureRefused,
    SignatureScheme,
    SignedRequest,
    TwilioSignature,
    XillioSignature,
)
from sms_service import mock_provider as sms_mock
from tests.factories import eventually

TOKEN = "sms-token-of-the-mock-tests"
SECRET = "email-secret-of-the-mock-tests"
KEY = ec.generate_private_key(ec.SECP256R1())
QUICK = MockBehaviour(delivery_delay_seconds=0, receipt_backoff_seconds=0.01)
TWILIO_AUTH = {"Authorization": "Basic " + base64.b64encode(b"ACmock:mock-token").decode()}


@dataclass
class RawCatcher:
    """Keeps every post as it arrived: URL, headers and body bytes."""

    caught: list[SignedRequest] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{path:.*}", self._receive)
        return app

    async def _receive(self, request: web.Request) -> web.Response:
        self.caught.append(
            SignedRequest(
                url=str(request.url),
                headers=CIMultiDict(request.headers),
                body=await request.read(),
                content_type=request.content_type,
                received_at=datetime.now(UTC),
            )
        )
        return web.json_response({}, status=202)


@pytest.fixture
async def catcher(aiohttp_server: AiohttpServer) -> tuple[RawCatcher, str]:
    raw = RawCatcher()
    server = await aiohttp_server(raw.app())
    return raw, str(server.make_url("")).rstrip("/")


async def one_post(catcher: RawCatcher) -> SignedRequest:
    async def caught() -> bool:
        return len(catcher.caught) == 1

    await eventually(caught, "one post from the mock")
    return catcher.caught[0]


def verdict(scheme: SignatureScheme, request: SignedRequest) -> str | None:
    try:
        scheme.verify(request)
    except SignatureRefused as refusal:
        return refusal.reason
    return None


async def test_the_sms_mock_signs_its_status_callbacks(
    aiohttp_client: AiohttpClient, catcher: tuple[RawCatcher, str]
) -> None:
    raw, base = catcher
    mock = await aiohttp_client(sms_mock.create_app(QUICK, auth_token=TOKEN))
    callback = f"{base}/api/webhooks/sms/status?message_id={uuid.uuid4()}"
    form = [("To", "+18045551234"), ("From", "+12016661234"), ("Body", "hi & bye"), ("StatusCallback", callback)]

    response = await mock.post("/2010-04-01/Accounts/ACmock/Messages.json", data=form, headers=TWILIO_AUTH)

    assert response.status == 201, await response.text()
    post = await one_post(raw)
    assert post.url == callback
    assert verdict(TwilioSignature(TOKEN), post) is None
    assert verdict(TwilioSignature("another-token"), post) is not None


async def test_the_sms_mock_posts_a_signed_inbound_message_on_request(
    aiohttp_client: AiohttpClient, catcher: tuple[RawCatcher, str]
) -> None:
    raw, base = catcher
    mock = await aiohttp_client(
        sms_mock.create_app(QUICK, auth_token=TOKEN, inbound_webhook_url=f"{base}/api/webhooks/sms")
    )

    response = await mock.post(
        "/simulate/inbound", json={"from": "+18045551234", "to": "+12016661234", "type": "sms", "body": "hi"}
    )

    assert response.status == 200, await response.text()
    answer = await response.json()
    assert answer["webhook_status"] == 202
    assert answer["posted"]["messaging_provider_id"].startswith("SM")
    post = await one_post(raw)
    # A JSON body: its hash rides in the signed URL.
    assert post.url.startswith(f"{base}/api/webhooks/sms?bodySHA256=")
    assert verdict(TwilioSignature(TOKEN), post) is None
    assert verdict(TwilioSignature("another-token"), post) is not None


async def test_the_email_mock_signs_its_event_webhook(
    aiohttp_client: AiohttpClient, catcher: tuple[RawCatcher, str]
) -> None:
    raw, base = catcher
    mock = await aiohttp_client(
        email_mock.create_app(QUICK, event_webhook_url=f"{base}/api/webhooks/email/status", events_private_key=KEY)
    )
    document = {
        "personalizations": [{"to": [{"email": "contact@gmail.com"}]}],
        "from": {"email": "user@usehatchapp.com"},
        "subject": "Hello",
        "content": [{"type": "text/html", "value": "<p>Hello</p>"}],
        "custom_args": {"message_id": str(uuid.uuid4())},
    }

    response = await mock.post("/v3/mail/send", json=document, headers={"Authorization": "Bearer mock-key"})

    assert response.status == 202, await response.text()
    post = await one_post(raw)
    assert verdict(SendGridSignature(KEY.public_key(), 300), post) is None
    other = ec.generate_private_key(ec.SECP256R1())
    assert verdict(SendGridSignature(other.public_key(), 300), post) is not None


async def test_the_email_mock_posts_a_signed_inbound_email_on_request(
    aiohttp_client: AiohttpClient, catcher: tuple[RawCatcher, str]
) -> None:
    raw, base = catcher
    mock = await aiohttp_client(
        email_mock.create_app(QUICK, webhook_secret=SECRET, inbound_webhook_url=f"{base}/api/webhooks/email")
    )

    response = await mock.post(
        "/simulate/inbound", json={"from": "contact@gmail.com", "to": "user@usehatchapp.com", "body": "<p>hi</p>"}
    )

    assert response.status == 200, await response.text()
    assert (await response.json())["posted"]["xillio_id"]
    post = await one_post(raw)
    assert verdict(XillioSignature(SECRET, 300), post) is None
    assert verdict(XillioSignature("another-secret", 300), post) is not None


async def test_simulating_needs_an_inbound_url_and_a_json_object(aiohttp_client: AiohttpClient) -> None:
    nowhere: TestClient = await aiohttp_client(sms_mock.create_app(QUICK))
    response = await nowhere.post("/simulate/inbound", json={"body": "hi"})
    assert response.status == 422
    somewhere: TestClient = await aiohttp_client(
        sms_mock.create_app(QUICK, inbound_webhook_url="http://127.0.0.1:1/api/webhooks/sms")
    )
    response = await somewhere.post("/simulate/inbound", json=["not", "an", "object"])
    assert response.status == 422
    response = await somewhere.post("/simulate/inbound", json={"body": "hi"})
    assert response.status == 503, "the gateway cannot be reached"


def test_the_private_key_setting_takes_base64_der_of_a_p256_key() -> None:
    der = KEY.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    loaded = load_private_key(base64.b64encode(der).decode())
    assert loaded is not None and loaded.private_numbers() == KEY.private_numbers()
    assert load_private_key("") is None
    with pytest.raises(ValueError, match="base64 DER"):
        load_private_key("bm90IGEga2V5")
    other_curve = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(ValueError, match="P-256"):
        load_private_key(base64.b64encode(other_curve).decode())


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b"To=%2B18045551234&Body=h\xffi", "application/x-www-form-urlencoded", 400),
        (b"To=%2B18045551234&Body=hi", "application/x-www-form-urlencoded; charset=bogus", 415),
    ],
)
async def test_the_sms_mock_answers_an_unreadable_form_with_a_4xx(
    aiohttp_client: AiohttpClient, body: bytes, content_type: str, status: int
) -> None:
    """Its send reads the form strictly, as the gateway does: neither is a 500."""
    mock = await aiohttp_client(sms_mock.create_app(QUICK))
    headers: dict[str, Any] = {**TWILIO_AUTH, "Content-Type": content_type}

    response = await mock.post("/2010-04-01/Accounts/ACmock/Messages.json", data=body, headers=headers)

    assert response.status == status, await response.text()


@pytest.mark.parametrize(
    ("body", "content_type"),
    [(b'{"subject": "h\xffi"}', "application/json"), (b"{}", "application/json; charset=bogus")],
    ids=["not UTF-8", "charset=bogus"],
)
async def test_the_email_mock_answers_an_unreadable_body_with_a_400(
    aiohttp_client: AiohttpClient, body: bytes, content_type: str
) -> None:
    mock = await aiohttp_client(email_mock.create_app(QUICK))
    headers = {"Authorization": "Bearer mock-key", "Content-Type": content_type}

    response = await mock.post("/v3/mail/send", data=body, headers=headers)

    assert response.status == 400, await response.text()
