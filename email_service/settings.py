import base64
import binascii

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_private_key
from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from common.mock_provider import MockBehaviourSettings, MockProviderSettings
from common.provider import ProviderRetrySettings
from common.settings import ServiceSettings, secret
from common.webhook_signing import DEVELOPMENT_EMAIL_WEBHOOK_SECRET


class EmailSettings(ServiceSettings, ProviderRetrySettings):
    email_service_port: int = 8082
    email_provider_url: str = Field("http://127.0.0.1:9002", description="Base URL of the SendGrid-like API")
    email_provider_api_key: str = Field("mock-key", description="API key, sent as a bearer token")


class EmailMockProviderSettings(MockProviderSettings):
    email_provider_port: int = 9002
    email_mock_event_webhook_url: str | None = Field(
        "http://127.0.0.1:8080/api/webhooks/email/status",
        description="Where the mock posts delivery events, account-wide like SendGrid's event webhook; "
        "empty: no events",
    )
    email_mock_inbound_webhook_url: str | None = Field(
        "http://127.0.0.1:8080/api/webhooks/email",
        description="Where `POST /simulate/inbound` posts an inbound email; empty: nowhere",
    )
    # Named as the gateway's settings, so one environment (.env) signs and verifies with one pair.
    email_events_private_key: str = secret(
        "",
        "The key the mock signs its event webhook with (base64 DER PKCS#8, ECDSA P-256); bin/setup.sh generates "
        "it into .env with the gateway's EMAIL_EVENTS_PUBLIC_KEY. Empty: events go unsigned",
    )
    email_webhook_secret: str = secret(
        DEVELOPMENT_EMAIL_WEBHOOK_SECRET, "The secret the mock signs inbound email's X-Xillio-Signature with"
    )

    @field_validator("email_events_private_key")
    @classmethod
    def _readable_private_key(cls, value: str) -> str:
        load_private_key(value)
        return value

    @property
    def events_private_key(self) -> ec.EllipticCurvePrivateKey | None:
        return load_private_key(self.email_events_private_key)


def load_private_key(encoded: str) -> ec.EllipticCurvePrivateKey | None:
    if not encoded:
        return None
    try:
        key = load_der_private_key(base64.b64decode(encoded, validate=True), password=None)
    except (binascii.Error, ValueError, TypeError) as error:
        raise ValueError("is not a base64 DER (PKCS#8) private key without a password") from error
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("is not an ECDSA P-256 private key")
    return key


class EmailMockBehaviourSettings(MockBehaviourSettings):
    """The email mock's failures and receipt timing at start: EMAIL_MOCK_FAILURE_RATE and so on."""

    model_config = SettingsConfigDict(env_prefix="EMAIL_MOCK_")
