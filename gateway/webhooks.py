"""The provider webhook path, from the raw request to a confirmed publish: verify, parse, publish.

It knows nothing of aiohttp, so the HTTP views and the quarantine replay run the very same steps on
a `WebhookRequest`: the replay on one kept from when it was refused, judged by its own arrival time.
"""

import functools
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from email.message import Message
from typing import Any

from multidict import CIMultiDict
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError
from yarl import URL

from common import context
from common.errors import InvalidRequest
from common.forms import parse_form
from common.http import request_validation
from common.settings import Profile
from gateway.handlers import MessageIntake
from gateway.requests import (
    DeliveryReport,
    EmailWebhook,
    SmsStatusCallback,
    SmsWebhook,
    ValidationRules,
    Webhook,
    email_status_events_adapter,
    webhook_adapter,
)
from gateway.settings import GatewaySettings
from gateway.signatures import (
    SendGridSignature,
    SignatureRefused,
    SignatureScheme,
    SignedRequest,
    TwilioSignature,
    WebhookVerifier,
    XillioSignature,
)

SMS_INBOUND = "/api/webhooks/sms"
EMAIL_INBOUND = "/api/webhooks/email"
SMS_STATUS = "/api/webhooks/sms/status"
EMAIL_STATUS = "/api/webhooks/email/status"
# The earlier Django service's generic route: its `type` picks the channel, and so the signature.
COMPATIBLE_INBOUND = "/messages/inbound/"
WEBHOOK_PATHS = (SMS_INBOUND, EMAIL_INBOUND, SMS_STATUS, EMAIL_STATUS, COMPATIBLE_INBOUND)


class WebhookRequest(BaseModel):
    """A webhook as it arrived. `origin` is the public origin its provider called (PUBLIC_BASE_URL),
    `path_qs` the path and query as sent, undecoded: together, the URL a signature covers. A model,
    so that the quarantine keeps it as it is (the body in base64)."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_bytes="base64", val_json_bytes="base64")

    webhook: str
    method: str
    origin: str
    path_qs: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    received_at: datetime

    @property
    def url(self) -> str:
        return self.origin + self.path_qs

    def media_type(self) -> tuple[str, str | None]:
        """The Content-Type's media type (lower-cased; "" if none) and its charset, if it names one."""
        value = CIMultiDict(self.headers).get("Content-Type")
        if not value:
            return "", None
        return _parse_content_type(value)

    def signed(self) -> SignedRequest:
        return SignedRequest(
            url=self.url,
            headers=CIMultiDict(self.headers),
            body=self.body,
            content_type=self.media_type()[0],
            received_at=self.received_at,
        )


# A provider sends the same Content-Type on every webhook; the email package's parser is slow.
@functools.lru_cache(maxsize=256)
def _parse_content_type(value: str) -> tuple[str, str | None]:
    header = Message()
    header["Content-Type"] = value
    return header.get_content_type(), header.get_content_charset()


@dataclass(frozen=True)
class WebhookAnswer:
    status: int
    body: str


@dataclass(frozen=True)
class SignatureSchemes:
    sms: TwilioSignature
    email_events: SendGridSignature
    email: XillioSignature


class _ChannelType(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str


_channel_type = TypeAdapter(_ChannelType)
_json_object: TypeAdapter[dict[str, Any]] = TypeAdapter(dict[str, Any])

Accept = Callable[[WebhookRequest, uuid.UUID], Awaitable[WebhookAnswer]]


class Webhooks:
    """Every webhook route: which scheme signs it, and how it is read and published.

    `handle` raises `SignatureRefused` for a webhook that is not provably its provider's, before a
    byte of it is parsed (but the compatibility route's `type`, which says whose signature it is),
    and a 4xx domain error for one that is signed but not valid.
    """

    def __init__(
        self,
        intake: MessageIntake,
        schemes: SignatureSchemes,
        profile: Profile,
        rules: ValidationRules,
        *,
        public_base_url: str,
        max_status_events: int,
    ) -> None:
        self._intake = intake
        self._public_base_url = public_base_url.rstrip("/")
        self._schemes = schemes
        self._profile = profile
        self._verifier = WebhookVerifier(profile)
        self._rules = rules
        self._max_status_events = max_status_events
        self._routes: Mapping[str, tuple[Callable[[WebhookRequest], SignatureScheme | None], Accept]] = {
            SMS_INBOUND: (lambda _: schemes.sms, self._inbound(TypeAdapter(SmsWebhook))),
            EMAIL_INBOUND: (lambda _: schemes.email, self._inbound(TypeAdapter(EmailWebhook))),
            SMS_STATUS: (lambda _: schemes.sms, self._sms_status),
            EMAIL_STATUS: (lambda _: schemes.email_events, self._email_status),
            COMPATIBLE_INBOUND: (self._scheme_by_type, self._inbound(webhook_adapter)),
        }

    @classmethod
    def from_settings(cls, intake: MessageIntake, settings: GatewaySettings) -> "Webhooks":
        tolerance = settings.webhook_signature_tolerance_seconds
        schemes = SignatureSchemes(
            sms=TwilioSignature(settings.sms_webhook_auth_token),
            email_events=SendGridSignature(settings.events_public_key, tolerance),
            email=XillioSignature(settings.email_webhook_secret, tolerance),
        )
        return cls(
            intake,
            schemes,
            settings.messaging_profile,
            settings.validation_rules,
            public_base_url=settings.public_base_url,
            max_status_events=settings.email_status_max_events,
        )

    def origin_for(self, arrived_at: str) -> str:
        """The origin signatures cover: PUBLIC_BASE_URL, or (empty, in development) where it arrived."""
        return self._public_base_url or arrived_at

    async def handle(self, request: WebhookRequest, correlation_id: uuid.UUID) -> WebhookAnswer:
        context.correlation_id.set(correlation_id)
        scheme_of, accept = self._routes[request.webhook]
        scheme = scheme_of(request)
        if scheme is not None:
            self._verifier.check(scheme, request.signed())
        elif self._profile is Profile.PRODUCTION:
            raise SignatureRefused("without a known `type` no provider's signature applies", "type")
        return await accept(request, correlation_id)

    def _scheme_by_type(self, request: WebhookRequest) -> SignatureScheme | None:
        try:
            channel = _channel_type.validate_json(request.body).type
        except ValidationError:
            return None
        return {"sms": self._schemes.sms, "mms": self._schemes.sms, "email": self._schemes.email}.get(channel)

    def _inbound(self, adapter: TypeAdapter[Any]) -> Accept:
        async def accept(request: WebhookRequest, correlation_id: uuid.UUID) -> WebhookAnswer:
            with request_validation():
                webhook: Webhook = adapter.validate_json(request.body, context=self._rules)
            accepted = await self._intake.receive(webhook)
            return WebhookAnswer(202, accepted.model_dump_json(by_alias=True))

        return accept

    async def _sms_status(self, request: WebhookRequest, correlation_id: uuid.UUID) -> WebhookAnswer:
        media_type, charset = request.media_type()
        if media_type == "application/json":
            with request_validation():
                fields: dict[str, Any] = _json_object.validate_json(request.body)
        else:
            # Twilio posts a form; the same fields as a JSON object are taken too.
            fields = dict(parse_form(request.body, charset))
        # Our message id is in the query of the callback URL the channel service gave the provider;
        # nothing else is taken from there.
        message_id = URL(request.path_qs, encoded=True).query.get("message_id")
        if message_id is not None:
            fields["message_id"] = message_id
        with request_validation():
            report = SmsStatusCallback.model_validate(fields)
        return await self._report(request, [report], correlation_id)

    async def _email_status(self, request: WebhookRequest, correlation_id: uuid.UUID) -> WebhookAnswer:
        with request_validation():
            events = email_status_events_adapter.validate_json(request.body)
        if len(events) > self._max_status_events:
            raise InvalidRequest(
                "too many events in one webhook",
                [{"field": "request", "reason": f"at most {self._max_status_events} events are taken at once"}],
            )
        return await self._report(request, [event for event in events if event is not None], correlation_id)

    async def _report(
        self, request: WebhookRequest, reports: list[DeliveryReport], correlation_id: uuid.UUID
    ) -> WebhookAnswer:
        published = await self._intake.report_deliveries(reports)
        return WebhookAnswer(200, f'{{"published": {published}}}')
