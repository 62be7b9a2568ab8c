"""A stand-in for Twilio's Messages API: `python -m sms_service.mock_provider` serves it on port 9001."""

import base64
import binascii
import uuid
from email.utils import format_datetime

from aiohttp import web

from common import mock_provider as mock
from sms_service.settings import SmsMockProviderSettings

API_VERSION = "2010-04-01"

# Twilio's error codes for the refusals this mock makes.
ERROR_CODES = {"auth": 20003, "To": 21604, "From": 21603, "Body": 21602}


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

    async def parse(self, request: web.Request) -> mock.RequestedSend:
        if _basic_auth_user(request.headers.get("Authorization", "")) != request.match_info["account_sid"]:
            raise mock.SendRejected(401, "Authenticate", "auth")
        form = await request.post()
        media = tuple(str(url) for url in form.getall("MediaUrl", []))
        to, sender, body = (str(form.get(name, "")) for name in ("To", "From", "Body"))
        if not to:
            raise mock.SendRejected(400, "A 'To' phone number is required.", "To")
        if not sender:
            raise mock.SendRejected(400, "A 'From' phone number is required.", "From")
        # As in Twilio, an MMS may go without text, a message with neither text nor media may not.
        if not body and not media:
            raise mock.SendRejected(400, "Message body is required.", "Body")
        return mock.RequestedSend(to=to, sender=sender, body=body, attachments=media)

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
        code = ERROR_CODES.get(error.field or "")
        return mock.Reply.json(
            error.status,
            {
                "code": code,
                "message": error.reason,
                "more_info": f"https://www.twilio.com/docs/errors/{code}",
                "status": error.status,
            },
        )


def create_app() -> web.Application:
    return mock.create_mock_app(TwilioMock())


def main() -> None:
    settings = SmsMockProviderSettings()
    mock.run_mock_provider(create_app(), settings, settings.sms_provider_port)


if __name__ == "__main__":
    main()
