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
# The subject is the start of the text, so only the start of the body is read: a body of a million
# characters costs what one of this many does.
SUBJECT_SCAN_CHARS = 4096
WHITESPACE = re.compile(r"\s+")


def _without_tags(markup: str) -> str:
    """`markup` with each `<...>` replaced by a space, in one pass: a regex like `<[^>]*>` rescans the
    rest of the text from every `<` that is never closed, quadratic on a run of them."""
    parts = []
    position = 0
    while (start := markup.find("<", position)) != -1:
        parts.append(markup[position:start])
        end = markup.find(">", start + 1)
        if end == -1:
            # No `>` after this `<`, so none after any later one either: the rest is text, as for the regex.
            position = start
            break
        parts.append(" ")
        position = end + 1
    parts.append(markup[position:])
    return "".join(parts)


def subject_of(body: str) -> str:
    """The public API has no subject, and the provider requires one: the start of the body's text."""
    start = body[:SUBJECT_SCAN_CHARS]
    cut = start.rfind("<")
    if len(body) > SUBJECT_SCAN_CHARS and cut > start.rfind(">"):
        # A tag the scan cut in two is no text.
        start = start[:cut]
    text = WHITESPACE.sub(" ", html.unescape(_without_tags(start))).strip()
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
