from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import Field, field_validator

from common.settings import PageSettings, ServiceSettings, ServiceTokenSettings, secret
from common.webhook_signing import DEVELOPMENT_EMAIL_WEBHOOK_SECRET, DEVELOPMENT_SMS_WEBHOOK_AUTH_TOKEN
from gateway.requests import ValidationRules
from gateway.signatures import load_public_key


class GatewaySettings(ServiceSettings, ServiceTokenSettings, PageSettings):
    gateway_port: int = 8080
    conversation_service_url: str = Field(
        "http://127.0.0.1:8083", description="Where the read API is served; the gateway proxies reads to it"
    )
    read_timeout_seconds: float = Field(10.0, gt=0)
    key_store_timeout_seconds: float = Field(
        5.0, gt=0, description="Longest wait for conversation_service to claim an Idempotency-Key; then 503"
    )
    idempotency_wait_seconds: float = Field(
        15.0,
        gt=0,
        description="How long a send waits for an earlier one with its Idempotency-Key to finish before "
        "answering 409; above conversation_service's IDEMPOTENCY_CLAIM_SECONDS, so that a request whose "
        "gateway died is taken over instead",
    )
    max_request_bytes: int = Field(1_048_576, ge=1024, description="Larger request bodies get 413")
    default_phone_region: str = Field(
        "US", description="Region assumed for phone numbers written without a + country code"
    )
    sms_body_max_chars: int = Field(1600, ge=1, description="Longest SMS/MMS body accepted (Twilio's limit)")
    email_body_max_chars: int = Field(1_000_000, ge=1)
    max_attachments: int = Field(10, ge=0)

    # Provider webhook signatures (API.md "Webhook signatures"); the mocks sign with the same values.
    # Required in production like a secret (named with the others when missing), though it is none.
    public_base_url: str = secret(
        "",
        "The gateway's public origin as providers call it, behind any proxy (https://api.example.com): "
        "signatures cover this plus the path and query. Empty, in development only: the origin each request "
        "came to",
    )
    sms_webhook_auth_token: str = secret(
        DEVELOPMENT_SMS_WEBHOOK_AUTH_TOKEN, "The SMS provider's auth token, which signs X-Twilio-Signature"
    )
    email_webhook_secret: str = secret(
        DEVELOPMENT_EMAIL_WEBHOOK_SECRET, "The secret of X-Xillio-Signature on inbound email"
    )
    email_events_public_key: str = secret(
        "",
        "The email provider's event webhook verification key (base64 DER, ECDSA P-256); bin/setup.sh puts the "
        "mock's into .env",
    )
    webhook_signature_tolerance_seconds: float = Field(
        300.0, gt=0, description="How far a signed webhook's timestamp may be from the time it arrived"
    )
    email_status_max_events: int = Field(
        5000, ge=1, description="Most events one email status webhook may carry; more is 422"
    )

    @field_validator("email_events_public_key")
    @classmethod
    def _readable_public_key(cls, value: str) -> str:
        load_public_key(value)
        return value

    @property
    def events_public_key(self) -> ec.EllipticCurvePublicKey | None:
        return load_public_key(self.email_events_public_key)

    # Authentication and rate limits (API keys are kept by conversation_service).
    auth_timeout_seconds: float = Field(
        5.0,
        gt=0,
        description="Longest wait for conversation_service to verify a key or name an address owner; then 503",
    )
    auth_cache_seconds: float = Field(
        5.0,
        ge=0,
        description="How long the gateway trusts conversation_service's word on a key or an address's owner; "
        "a revoked key still works this long on a gateway that verified it just before",
    )
    rate_limit_per_second: float = Field(
        200.0, gt=0, description="Requests per second one key may make, on average, to one gateway replica"
    )
    rate_limit_burst: int = Field(
        1000, ge=1, description="Requests one key may make at once before RATE_LIMIT_PER_SECOND holds it back"
    )

    @property
    def validation_rules(self) -> ValidationRules:
        return ValidationRules(
            default_phone_region=self.default_phone_region,
            sms_body_max_chars=self.sms_body_max_chars,
            email_body_max_chars=self.email_body_max_chars,
            max_attachments=self.max_attachments,
        )
