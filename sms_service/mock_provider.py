"""A stand-in for Twilio's Messages API: `python -m sms_service.mock_provider` serves it on port 9001.

Its behaviour (failures, rate limit, latency, receipt timing) starts from the SMS_MOCK_* settings
and changes at run time through `/control`; see `common.mock_provider`.
"""

import base64
import binascii
import dataclasses
import time
import uuid
from datetime import datetime
from email.utils import format_datetime
from random import Random

from aiohttp import web

from common import mock_provider as mock
from common.forms import FORM_CONTENT_TYPE, parse_form
from common.settings import load_settings
from common.webhook_signing import (
    DEVELOPMENT_SMS_WEBHOOK_AUTH_TOKEN,
    TWILIO_SIGNATURE_HEADER,
    twilio_signature,
    with_body_hash,
)
from sms_service.settings import SmsMockBehaviourSettings, SmsMockProviderSettings

API_VERSION = "2010-04-01"

# Numbers that always fail one way, in the range Twilio keeps for its own test numbers.
MAGIC_NUMBERS = mock.MagicRecipients(
    invalid="+15005550001",
    unreachable="+15005550009",
    failing="+15005550500",
)

# Twilio's error codes for what this mock refuses or fails without a more specific one.
GENERIC_ERROR_CODES = {429: 20429, 500: 20500}
INVALID_NUMBER_CODE = 21211
UNREACHABLE_HANDSET_CODE = 30003


def _basic_auth_user(header: str) -> str | None:
    scheme, _, encoded = header.partition(" ")
    if scheme != "Basic":
        return None
    try:
        user, separator, _ = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return user if separator else None


class TwilioMock(mock.MockProvider):
    name = "sms_provider_mock"
    send_path = f"/{API_VERSION}/Accounts/{{account_sid}}/Messages.json"
    attachments_field = "media"
    magic = MAGIC_NUMBERS
    invalid_recipient = mock.SendRejected(
        400, f"The 'To' number {MAGIC_NUMBERS.invalid} is not a valid phone number.", "To", INVALID_NUMBER_CODE
    )
    inbound_id_field = "messaging_provider_id"

    def __init__(self, auth_token: str, inbound_webhook_url: str | None) -> None:
        self._auth_token = auth_token
        self.inbound_webhook_url = inbound_webhook_url

    async def parse(self, request: web.Request) -> mock.RequestedSend:
        account_sid = request.match_info["account_sid"]
        if _basic_auth_user(request.headers.get("Authorization", "")) != account_sid:
            raise mock.SendRejected(401, "Authenticate", "auth", 20003)
        form = parse_form(await request.read(), request.charset)
        media = tuple(str(url) for url in form.getall("MediaUrl", []))
        to, sender, body = (str(form.get(name, "")) for name in ("To", "From", "Body"))
        if not to:
            raise mock.SendRejected(400, "A 'To' phone number is required.", "To", 21604)
        if not sender:
            raise mock.SendRejected(400, "A 'From' phone number is required.", "From", 21603)
        # As in Twilio, an MMS may go without text, a message with neither text nor media may not.
        if not body and not media:
            raise mock.SendRejected(400, "Message body is required.", "Body", 21602)
        return mock.RequestedSend(
            to=to,
            sender=sender,
            body=body,
            attachments=media,
            status_callback=str(form.get("StatusCallback", "")) or None,
            receipt_fields={"AccountSid": account_sid},
        )

    def new_id(self) -> str:
        return f"SM{uuid.uuid4().hex}"

    def accepted(self, record: mock.RecordedSend) -> mock.Reply:
        return mock.Reply.json(
            201,
            {
                "sid": record.id,
                "to": record.send.to,
                "from": record.send.sender,
                "body": record.send.body,
                "num_media": str(len(record.send.attachments)),
                "status": "queued",
                "date_created": format_datetime(record.received_at, usegmt=True),
                "api_version": API_VERSION,
            },
        )

    def rejected(self, error: mock.SendRejected) -> mock.Reply:
        code = error.code or GENERIC_ERROR_CODES.get(error.status)
        return mock.Reply.json(
            error.status,
            {
                "code": code,
                "message": error.reason,
                "more_info": f"https://www.twilio.com/docs/errors/{code}",
                "status": error.status,
            },
        )

    def receipt_url(self, record: mock.RecordedSend) -> str | None:
        return record.send.status_callback

    def receipt(self, record: mock.RecordedSend, delivered: bool, at: datetime) -> mock.Receipt:
        form = [
            ("MessageSid", record.id),
            ("MessageStatus", "delivered" if delivered else "undelivered"),
            ("To", record.send.to),
            ("From", record.send.sender),
            *record.send.receipt_fields.items(),
            ("ApiVersion", API_VERSION),
        ]
        if not delivered:
            form.append(("ErrorCode", str(UNREACHABLE_HANDSET_CODE)))
        return mock.Receipt(form=form)

    def sign_receipt(self, post: mock.Post, at: datetime) -> mock.Post:
        # A form is signed with its parameters; a JSON body through its hash, in the URL.
        if post.content_type == FORM_CONTENT_TYPE:
            url, params = post.url, parse_form(post.body)
        else:
            url, params = with_body_hash(post.url, post.body), None
        signature = twilio_signature(self._auth_token, url, params)
        return dataclasses.replace(post, url=url, headers={**post.headers, TWILIO_SIGNATURE_HEADER: signature})

    def sign_inbound(self, post: mock.Post, at: datetime) -> mock.Post:
        return self.sign_receipt(post, at)


def create_app(
    behaviour: mock.MockBehaviour | None = None,
    *,
    auth_token: str = DEVELOPMENT_SMS_WEBHOOK_AUTH_TOKEN,
    inbound_webhook_url: str | None = None,
    random_source: Random | None = None,
    clock: mock.Clock = time.monotonic,
) -> web.Application:
    """`auth_token` signs every post; `inbound_webhook_url` is where `POST /simulate/inbound` posts."""
    provider = TwilioMock(auth_token, inbound_webhook_url)
    return mock.create_mock_app(provider, behaviour, random_source=random_source, clock=clock)


def main() -> None:
    settings = load_settings(SmsMockProviderSettings)
    app = create_app(
        SmsMockBehaviourSettings(),
        auth_token=settings.sms_webhook_auth_token,
        inbound_webhook_url=settings.sms_mock_inbound_webhook_url,
    )
    mock.run_mock_provider(app, settings, settings.sms_provider_port)


if __name__ == "__main__":
    main()
