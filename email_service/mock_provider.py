"""A stand-in for SendGrid's mail send API: `python -m email_service.mock_provider` serves it on port 9002.

Its behaviour (failures, rate limit, latency, receipt timing) starts from the EMAIL_MOCK_* settings
and changes at run time through `/control`; see `common.mock_provider`. Like SendGrid's event
webhook, where its delivery events go is one setting for the whole account, not part of a send.
"""

import base64
import dataclasses
import json
import secrets
import time
from datetime import datetime
from random import Random
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from common import mock_provider as mock
from common.settings import load_settings
from common.webhook_signing import (
    DEVELOPMENT_EMAIL_WEBHOOK_SECRET,
    SENDGRID_SIGNATURE_HEADER,
    SENDGRID_TIMESTAMP_HEADER,
    XILLIO_SIGNATURE_HEADER,
    sendgrid_payload,
    xillio_header,
    xillio_signature,
)
from email_service.settings import EmailMockBehaviourSettings, EmailMockProviderSettings

# Addresses that always fail one way.
MAGIC_ADDRESSES = mock.MagicRecipients(
    invalid="invalid@example.com",
    unreachable="unreachable@example.com",
    failing="error500@example.com",
)

BOUNCE_REASON = "550 5.1.1 The email account that you tried to reach does not exist."


def _dig(document: Any, *path: str | int) -> Any:
    """The value at `path` in a JSON document, or None where the document has no such place."""
    for step in path:
        if isinstance(step, int):
            if not isinstance(document, list) or len(document) <= step:
                return None
        elif not isinstance(document, dict) or step not in document:
            return None
        document = document[step]
    return document


def _text(document: Any, *path: str | int) -> str:
    value = _dig(document, *path)
    return value if isinstance(value, str) else ""


def _custom_args(document: Any) -> dict[str, str]:
    custom_args = _dig(document, "custom_args") or {}
    # SendGrid takes only string values here, and echoes them in every event of the message.
    if not isinstance(custom_args, dict) or not all(isinstance(value, str) for value in custom_args.values()):
        raise mock.SendRejected(400, "The custom_args must be an object of string values.", "custom_args")
    return custom_args


class SendGridMock(mock.MockProvider):
    name = "email_provider_mock"
    send_path = "/v3/mail/send"
    attachments_field = "attachments"
    magic = MAGIC_ADDRESSES
    invalid_recipient = mock.SendRejected(400, "Does not contain a valid address.", "personalizations.0.to.0.email")
    inbound_id_field = "xillio_id"

    def __init__(
        self,
        event_webhook_url: str | None,
        events_private_key: ec.EllipticCurvePrivateKey | None,
        webhook_secret: str,
        inbound_webhook_url: str | None,
    ) -> None:
        self.event_webhook_url = event_webhook_url
        self._events_private_key = events_private_key
        self._webhook_secret = webhook_secret
        self.inbound_webhook_url = inbound_webhook_url

    async def parse(self, request: web.Request) -> mock.RequestedSend:
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer" or not key:
            raise mock.SendRejected(401, "authorization required")
        try:
            # From the bytes: `request.json()` decodes with the charset the client names, and a bogus one is a 500.
            document = json.loads(await request.read())
        except ValueError as error:
            raise mock.SendRejected(400, "Bad Request: the body is not valid JSON") from error
        to = _text(document, "personalizations", 0, "to", 0, "email")
        if not to:
            raise mock.SendRejected(
                400,
                "The to array is required for all personalization objects, and must have at least one "
                "email object with a valid email address.",
                "personalizations.0.to",
            )
        sender = _text(document, "from", "email")
        if not sender:
            raise mock.SendRejected(400, "The from object must be provided for every email send.", "from")
        if not _text(document, "subject"):
            raise mock.SendRejected(400, "The subject is required.", "subject")
        body = _text(document, "content", 0, "value")
        if not body:
            raise mock.SendRejected(
                400, "The content value must be a string at least one character in length.", "content.0.value"
            )
        attachments = _dig(document, "attachments") or []
        if not isinstance(attachments, list) or not all(_text(item, "url") for item in attachments):
            raise mock.SendRejected(400, "Each attachment must have a url.", "attachments")
        urls = tuple(item["url"] for item in attachments)
        return mock.RequestedSend(
            to=to, sender=sender, body=body, attachments=urls, receipt_fields=_custom_args(document)
        )

    def new_id(self) -> str:
        return secrets.token_urlsafe(16)

    def accepted(self, record: mock.RecordedSend) -> mock.Reply:
        return mock.Reply(202, headers={"X-Message-Id": record.id})

    def rejected(self, error: mock.SendRejected) -> mock.Reply:
        return mock.Reply.json(
            error.status, {"errors": [{"message": error.reason, "field": error.field, "help": None}]}
        )

    def receipt_url(self, record: mock.RecordedSend) -> str | None:
        return self.event_webhook_url

    def receipt(self, record: mock.RecordedSend, delivered: bool, at: datetime) -> mock.Receipt:
        event: dict[str, Any] = {
            **record.send.receipt_fields,
            "email": record.send.to,
            "timestamp": int(at.timestamp()),
            "event": "delivered" if delivered else "bounce",
            "sg_event_id": secrets.token_urlsafe(16),
            "sg_message_id": record.id,
        }
        if not delivered:
            event["reason"] = BOUNCE_REASON
        return mock.Receipt(json=[event])

    def sign_receipt(self, post: mock.Post, at: datetime) -> mock.Post:
        """SendGrid's Signed Event Webhook: ECDSA over the timestamp and the body; unsigned without a key."""
        if self._events_private_key is None:
            return post
        timestamp = str(int(at.timestamp()))
        der = self._events_private_key.sign(sendgrid_payload(timestamp, post.body), ec.ECDSA(hashes.SHA256()))
        headers = {SENDGRID_SIGNATURE_HEADER: base64.b64encode(der).decode(), SENDGRID_TIMESTAMP_HEADER: timestamp}
        return dataclasses.replace(post, headers={**post.headers, **headers})

    def sign_inbound(self, post: mock.Post, at: datetime) -> mock.Post:
        """Inbound email comes from Xillio, signed with its HMAC."""
        timestamp = str(int(at.timestamp()))
        signature = xillio_header(timestamp, [xillio_signature(self._webhook_secret, timestamp, post.body)])
        return dataclasses.replace(post, headers={**post.headers, XILLIO_SIGNATURE_HEADER: signature})


def create_app(
    behaviour: mock.MockBehaviour | None = None,
    *,
    event_webhook_url: str | None = None,
    events_private_key: ec.EllipticCurvePrivateKey | None = None,
    webhook_secret: str = DEVELOPMENT_EMAIL_WEBHOOK_SECRET,
    inbound_webhook_url: str | None = None,
    random_source: Random | None = None,
    clock: mock.Clock = time.monotonic,
) -> web.Application:
    """`event_webhook_url` None: no delivery events, as for an account without an event webhook;
    `events_private_key` None: events unsigned. `webhook_secret` signs what `POST /simulate/inbound`
    posts to `inbound_webhook_url`."""
    provider = SendGridMock(event_webhook_url, events_private_key, webhook_secret, inbound_webhook_url)
    return mock.create_mock_app(provider, behaviour, random_source=random_source, clock=clock)


def main() -> None:
    settings = load_settings(EmailMockProviderSettings)
    app = create_app(
        EmailMockBehaviourSettings(),
        event_webhook_url=settings.email_mock_event_webhook_url,
        events_private_key=settings.events_private_key,
        webhook_secret=settings.email_webhook_secret,
        inbound_webhook_url=settings.email_mock_inbound_webhook_url,
    )
    mock.run_mock_provider(app, settings, settings.email_provider_port)


if __name__ == "__main__":
    main()
