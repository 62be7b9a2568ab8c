"""HTTP request models of the public API, kept apart from the bus contracts they convert to.

Addresses are normalized here, once: phones to E.164 with phonenumbers, emails with email-validator
and lower-cased, so that every later step (conversation keying above all) sees one spelling.
Unknown fields are ignored: providers add fields to their webhooks over time.
"""

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, ClassVar, Literal

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from pydantic import (
    AfterValidator,
    AliasChoices,
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationInfo,
    model_validator,
)

from common.contracts import EMAIL_PROVIDER, SMS_PROVIDER, Channel, MessageContent, utcnow


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
    try:
        number = phonenumbers.parse(value, _rules(info).default_phone_region)
    except phonenumbers.NumberParseException as error:
        raise ValueError(f"not a phone number ({error})") from error
    if not phonenumbers.is_valid_number(number):
        raise ValueError("not a valid phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _normalize_email(value: str) -> str:
    try:
        address = validate_email(value, check_deliverability=False)
    except EmailNotValidError as error:
        raise ValueError(f"not a valid email address ({error})") from error
    return address.normalized.lower()


def _reject_nul(value: str) -> str:
    # PostgreSQL text cannot hold NUL: accepting one would queue a message that can never be stored.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


_http_url = TypeAdapter(AnyHttpUrl)


def _check_url(value: str) -> str:
    _http_url.validate_python(value)
    return value


def _as_utc(value: datetime) -> datetime:
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError as error:
        raise ValueError("is out of range once converted to UTC") from error


Text = Annotated[str, AfterValidator(_reject_nul)]
PhoneNumber = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64), AfterValidator(_normalize_phone)
]
EmailAddress = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=3, max_length=320), AfterValidator(_normalize_email)
]
AttachmentUrl = Annotated[
    str, StringConstraints(max_length=2048), AfterValidator(_reject_nul), AfterValidator(_check_url)
]
Timestamp = Annotated[datetime, AfterValidator(_as_utc)]
ProviderMessageId = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255), AfterValidator(_reject_nul)
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

    def body_limit(self, rules: ValidationRules) -> int:
        return rules.email_body_max_chars if self.channel is Channel.EMAIL else rules.sms_body_max_chars

    @model_validator(mode="after")
    def _within_channel_limits(self, info: ValidationInfo) -> "MessageRequest":
        rules = _rules(info)
        if len(self.body) > self.body_limit(rules):
            raise ValueError(f"body is longer than the {self.channel} limit of {self.body_limit(rules)} characters")
        if len(self.attachments or ()) > rules.max_attachments:
            raise ValueError(f"at most {rules.max_attachments} attachments are allowed")
        return self

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


class EmailFields(MessageRequest):
    from_address: EmailAddress = Field(alias="from")
    to: EmailAddress
    type: Literal["email"] = "email"

    @property
    def channel(self) -> Channel:
        return Channel.EMAIL


class SendSmsRequest(SmsFields):
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
    @model_validator(mode="after")
    def _has_a_body(self) -> "SendEmailRequest":
        # The provider refuses an empty email, so accepting one would only queue a certain failure.
        if not self.body.strip():
            raise ValueError("an email needs a body")
        return self


class SmsWebhook(SmsFields):
    messaging_provider_id: ProviderMessageId

    provider: ClassVar[str] = SMS_PROVIDER

    @property
    def provider_message_id(self) -> str:
        return self.messaging_provider_id


class EmailWebhook(EmailFields):
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
