"""A stand-in for SendGrid's mail send API: `python -m email_service.mock_provider` serves it on port 9002."""

import secrets
from typing import Any

from aiohttp import web

from common import mock_provider as mock
from email_service.settings import EmailMockProviderSettings


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


class SendGridMock(mock.MockProvider):
    name = "email_provider_mock"
    send_path = "/v3/mail/send"
    attachments_field = "attachments"

    async def parse(self, request: web.Request) -> mock.RequestedSend:
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer" or not key:
            raise mock.SendRejected(401, "authorization required")
        try:
            document = await request.json()
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
        return mock.RequestedSend(to=to, sender=sender, body=body, attachments=urls)

    def new_id(self) -> str:
        return secrets.token_urlsafe(16)

    def accepted(self, record: mock.RecordedSend) -> mock.Reply:
        return mock.Reply(202, headers={"X-Message-Id": record.id})

    def rejected(self, error: mock.SendRejected) -> mock.Reply:
        return mock.Reply.json(
            error.status, {"errors": [{"message": error.reason, "field": error.field, "help": None}]}
        )


def create_app() -> web.Application:
    return mock.create_mock_app(SendGridMock())


def main() -> None:
    settings = EmailMockProviderSettings()
    mock.run_mock_provider(create_app(), settings, settings.email_provider_port)


if __name__ == "__main__":
    main()
