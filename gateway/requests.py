"""HTTP request models of the public API, kept apart from the bus contracts they convert to.

Addresses are normalized here, once: phones to E.164 with phonenumbers, emails with email-validator
and lower-cased, so that every later step (conversation keying above all) sees one spelling.
Unknown fields are ignored: providers add fields to their webhooks over time.
"""

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, ClassVar, Literal

from pydantic import (
    AfterValidator,
    AliasChoices,
    AnyHttpUrl,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationInfo,
    field_validator,
    model_validator,
)

from common.addresses import normalize_email, normalize_phone
from common.contracts import EMAIL_PROVIDER, SMS_PROVIDER, Channel, MessageContent, MessageStatus, utcnow


@dataclass(frozen=True)
class ValidationRules:
    """The deployment's limits (from GatewaySettings), handed to the models as validation context."""

    default_phone_region: str
    sms_body_max_chars: int
    email_body_max_chars: int
    max_attachments: int


def _rules(info: ValidationInfo) -> ValidationRules:
    if not isinstance(info.context, ValidationRules):
        raise TypeError("request models are validated with ValidationRules as context")
    return info.context


def _normalize_phone(value: str, info: ValidationInfo) -> str:
    return normalize_phone(value, _rules(info).default_phone_region)


def _reject_nul(value: str) -> str:
    # PostgreSQL text cannot hold NUL: accepting one would queue a message that can never be stored.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


_http_url = TypeAdapter(AnyHttpUrl)


def _check_url(value: str) -> str:
    _http_url.validate_python(value)
    return value


_ISO_8601_START = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]")


def _iso_8601_text(value: object) -> object:
    # pydantic alone would also read 1700000000 (or "1700000000") as seconds since 1970: a client that
    # sent one meant some other format, and would get its message dated by a guess.
    if not isinstance(value, str) or not _ISO_8601_START.match(value):
        raise ValueError("must be an ISO 8601 date and time, like 2024-11-01T14:00:00Z")
    return value


def _as_utc(value: datetime) -> datetime:
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError as error:
        raise ValueError("is out of range once converted to UTC") from error


def _stripped(min_length: int) -> AfterValidator:
    """Surrounding whitespace dropped, then at least `min_length` characters.

    Pydantic's strip_whitespace strips before it checks max_length, so a value the OpenAPI description
    calls too long would pass once stripped: the lengths are checked on the value as sent, the
    minimum again on what is kept."""

    def strip(value: str) -> str:
        value = value.strip()
        if len(value) < min_length:
            raise ValueError(f"must have at least {min_length} characters besides surrounding whitespace")
        return value

    return AfterValidator(strip)


Text = Annotated[str, AfterValidator(_reject_nul)]
PhoneNumber = Annotated[
    str,
    StringConstraints(min_length=1, max_length=64),
    _stripped(1),
    AfterValidator(_normalize_phone),
    Field(
        description="A phone number, stored in E.164; one without a + is read in DEFAULT_PHONE_REGION",
        examples=["+18045551234"],
        json_schema_extra={"format": "phone"},
    ),
]
EmailAddress = Annotated[
    str,
    StringConstraints(min_length=3, max_length=320),
    _stripped(3),
    AfterValidator(normalize_email),
    Field(
        description="An email address, stored lower-cased",
        examples=["contact@gmail.com"],
        json_schema_extra={"format": "email"},
    ),
]
AttachmentUrl = Annotated[
    str,
    StringConstraints(max_length=2048),
    AfterValidator(_reject_nul),
    AfterValidator(_check_url),
    Field(
        description="An http or https URL",
        examples=["https://example.com/document.pdf"],
        json_schema_extra={"format": "uri"},
    ),
]
Timestamp = Annotated[datetime, BeforeValidator(_iso_8601_text), AfterValidator(_as_utc)]
ProviderMessageId = Annotated[
    str, StringConstraints(min_length=1, max_length=255), _stripped(1), AfterValidator(_reject_nul)
]


class MessageRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    from_address: str = Field(alias="from")
    to: str
    body: Text
    attachments: list[AttachmentUrl] | None = None
    timestamp: Timestamp | None = Field(None, description="When the message was written; defaults to now")

    @property
    def channel(self) -> Channel:
        raise NotImplementedError

    @classmethod
    def body_limit(cls, rules: ValidationRules) -> int:
        raise NotImplementedError

    # Field validators rather than one on the model, so that the error names the field at fault.
    @field_validator("body")
    @classmethod
    def _within_body_limit(cls, body: str, info: ValidationInfo) -> str:
        limit = cls.body_limit(_rules(info))
        if len(body) > limit:
            raise ValueError(f"is longer than this channel's limit of {limit} characters")
        return body

    @field_validator("attachments")
    @classmethod
    def _within_attachment_limit(cls, attachments: list[str] | None, info: ValidationInfo) -> list[str] | None:
        limit = _rules(info).max_attachments
        if len(attachments or ()) > limit:
            raise ValueError(f"at most {limit} attachments are allowed")
        return attachments

    def to_content(self) -> MessageContent:
        return MessageContent(
            channel=self.channel,
            from_address=self.from_address,
            to_address=self.to,
            body=self.body,
            attachments=tuple(self.attachments or ()),
            timestamp=self.timestamp or utcnow(),
        )


class SmsFields(MessageRequest):
    from_address: PhoneNumber = Field(alias="from")
    to: PhoneNumber
    type: Literal["sms", "mms"]

    @property
    def channel(self) -> Channel:
        return Channel(self.type)

    @classmethod
    def body_limit(cls, rules: ValidationRules) -> int:
        return rules.sms_body_max_chars


class EmailFields(MessageRequest):
    from_address: EmailAddress = Field(alias="from")
    to: EmailAddress
    type: Literal["email"] = "email"

    @property
    def channel(self) -> Channel:
        return Channel.EMAIL

    @classmethod
    def body_limit(cls, rules: ValidationRules) -> int:
        return rules.email_body_max_chars


class SendSmsRequest(SmsFields):
    """An SMS or MMS to send: an sms has a body and no attachments, an mms at least one attachment URL."""

    @model_validator(mode="after")
    def _media_matches_type(self) -> "SendSmsRequest":
        if self.type == "sms" and self.attachments:
            raise ValueError("an sms carries no attachments; send it with type mms")
        if self.type == "mms" and not self.attachments:
            raise ValueError("an mms carries media: attachments must list at least one URL")
        if self.type == "sms" and not self.body:
            raise ValueError("an sms needs a body")
        return self


class SendEmailRequest(EmailFields):
    """An email to send; its body may hold HTML and must not be blank."""

    @model_validator(mode="after")
    def _has_a_body(self) -> "SendEmailRequest":
        # The provider refuses an empty email, so accepting one would only queue a certain failure.
        if not self.body.strip():
            raise ValueError("an email needs a body")
        return self


class SmsWebhook(SmsFields):
    """An SMS or MMS the SMS provider received; the same messaging_provider_id twice is one message."""

    messaging_provider_id: ProviderMessageId

    provider: ClassVar[str] = SMS_PROVIDER

    @property
    def provider_message_id(self) -> str:
        return self.messaging_provider_id


class EmailWebhook(EmailFields):
    """An email the email provider received; the same xillio_id twice is one message."""

    # The generic compatibility route sends the provider id as messaging_provider_id for email too.
    xillio_id: ProviderMessageId = Field(validation_alias=AliasChoices("xillio_id", "messaging_provider_id"))

    provider: ClassVar[str] = EMAIL_PROVIDER

    @property
    def provider_message_id(self) -> str:
        return self.xillio_id


SendRequest = SendSmsRequest | SendEmailRequest
Webhook = SmsWebhook | EmailWebhook

send_request_adapter: TypeAdapter[SendRequest] = TypeAdapter(
    Annotated[SendSmsRequest | SendEmailRequest, Field(discriminator="type")]
)
webhook_adapter: TypeAdapter[Webhook] = TypeAdapter(Annotated[SmsWebhook | EmailWebhook, Field(discriminator="type")])


# Delivery receipts: the providers' status webhooks for messages we sent.

ProviderStatus = Annotated[str, StringConstraints(to_lower=True, min_length=1, max_length=64), _stripped(1)]
ProviderText = Annotated[str, StringConstraints(max_length=2048), AfterValidator(_reject_nul)]
# Seconds since 1970, up to the last second datetime can hold.
UnixSeconds = Annotated[int, Field(ge=0, le=253_402_300_799)]


@dataclass(frozen=True)
class DeliveryOutcome:
    status: Literal[MessageStatus.DELIVERED, MessageStatus.FAILED]
    error: str | None = None


class DeliveryReport(BaseModel):
    """A provider's word on a message we sent, naming our message id (which the channel service
    handed it with the send). Only a final word has an `outcome`: the rest (queued, sent, opened...)
    tell the conversation service nothing it keeps."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    message_id: uuid.UUID

    provider: ClassVar[str]
    channel: ClassVar[Channel]

    @property
    def provider_message_id(self) -> str:
        raise NotImplementedError

    @property
    def outcome(self) -> DeliveryOutcome | None:
        raise NotImplementedError

    @property
    def occurred_at(self) -> datetime:
        raise NotImplementedError


class SmsStatusCallback(DeliveryReport):
    """Twilio's status callback: a form (or the same fields as JSON); our message id comes in the
    query string of the callback URL the channel service gave with the send."""

    model_config = ConfigDict(coerce_numbers_to_str=True)

    message_sid: ProviderMessageId = Field(alias="MessageSid")
    message_status: ProviderStatus = Field(alias="MessageStatus")
    error_code: ProviderText | None = Field(None, alias="ErrorCode")

    provider: ClassVar[str] = SMS_PROVIDER
    # The callback does not say whether it was an MMS; the receipt's channel only routes it.
    channel: ClassVar[Channel] = Channel.SMS

    @property
    def provider_message_id(self) -> str:
        return self.message_sid

    @property
    def outcome(self) -> DeliveryOutcome | None:
        if self.message_status == "delivered":
            return DeliveryOutcome(MessageStatus.DELIVERED)
        if self.message_status in ("undelivered", "failed"):
            return DeliveryOutcome(
                MessageStatus.FAILED, f"error {self.error_code}" if self.error_code else self.message_status
            )
        return None

    @property
    def occurred_at(self) -> datetime:
        # The callback carries no time of its own: it is posted as the status changes.
        return utcnow()


class EmailStatusEvent(DeliveryReport):
    """One event of SendGrid's event webhook; our message id is the custom arg it echoes."""

    event: ProviderStatus
    sg_message_id: ProviderMessageId
    timestamp: UnixSeconds
    reason: ProviderText | None = None

    provider: ClassVar[str] = EMAIL_PROVIDER
    channel: ClassVar[Channel] = Channel.EMAIL

    @property
    def provider_message_id(self) -> str:
        return self.sg_message_id

    @property
    def outcome(self) -> DeliveryOutcome | None:
        if self.event == "delivered":
            return DeliveryOutcome(MessageStatus.DELIVERED)
        if self.event in ("bounce", "dropped"):
            return DeliveryOutcome(MessageStatus.FAILED, self.reason or self.event)
        return None

    @property
    def occurred_at(self) -> datetime:
        return datetime.fromtimestamp(self.timestamp, UTC)


def _ours_only(event: object) -> object:
    # SendGrid posts every event of the account: one without our message id is mail some other
    # system sent, and becomes None instead of being held to our format.
    return None if isinstance(event, dict) and event.get("message_id") is None else event


email_status_events_adapter: TypeAdapter[list[EmailStatusEvent | None]] = TypeAdapter(
    list[Annotated[EmailStatusEvent | None, BeforeValidator(_ours_only)]]
)
