"""The SendGrid-like mail send API: a JSON post per message, a bearer key, the id in `X-Message-Id`.

Our message id goes in the send's `custom_args`, which the provider echoes in every event webhook
of the message, so that its delivery events can be matched to it.
"""

import html
import re
from collections.abc import Mapping
from typing import Any

from common.contracts import SendMessage
from common.provider import ProviderClient, ProviderRequest, load_json
from email_service.settings import EmailSettings

SUBJECT_MAX_CHARS = 78
TAG = re.compile(r"<[^>]*>")
WHITESPACE = re.compile(r"\s+")


def subject_of(body: str) -> str:
    """The public API has no subject, and the provider requires one: the start of the body's text."""
    text = WHITESPACE.sub(" ", html.unescape(TAG.sub(" ", body))).strip()
    if len(text) > SUBJECT_MAX_CHARS:
        text = text[: SUBJECT_MAX_CHARS - 1].rstrip() + "…"
    return text or "(no subject)"


class EmailProviderClient(ProviderClient[EmailSettings]):
    def build_request(self, command: SendMessage) -> ProviderRequest:
        content = command.content
        document: dict[str, Any] = {
            "personalizations": [{"to": [{"email": content.to_address}]}],
            "from": {"email": content.from_address},
            "subject": subject_of(content.body),
            "content": [{"type": "text/html", "value": content.body}],
            "custom_args": {"message_id": str(command.message_id)},
        }
        if content.attachments:
            document["attachments"] = [{"url": url} for url in content.attachments]
        return ProviderRequest(
            url=f"{self.settings.email_provider_url.rstrip('/')}/v3/mail/send",
            headers={"Authorization": f"Bearer {self.settings.email_provider_api_key}"},
            json=document,
        )

    def message_id(self, headers: Mapping[str, str], body: bytes) -> str | None:
        return headers.get("X-Message-Id") or None

    def error_reason(self, body: bytes) -> str | None:
        document = load_json(body)
        errors = document.get("errors") if isinstance(document, dict) else None
        if not isinstance(errors, list):
            return None
        messages = [e["message"] for e in errors if isinstance(e, dict) and isinstance(e.get("message"), str)]
        return "; ".join(messages) or None
