from pydantic import Field
from pydantic_settings import SettingsConfigDict

from common.mock_provider import MockBehaviourSettings, MockProviderSettings
from common.provider import ProviderRetrySettings
from common.settings import ServiceSettings, secret
from common.webhook_signing import DEVELOPMENT_SMS_WEBHOOK_AUTH_TOKEN


class SmsSettings(ServiceSettings, ProviderRetrySettings):
    sms_service_port: int = 8081
    sms_provider_url: str = Field("http://127.0.0.1:9001", description="Base URL of the Twilio-like API")
    sms_provider_account_sid: str = Field("ACmock", description="Account SID: the basic-auth user")
    sms_provider_auth_token: str = Field("mock-token", description="Auth token: the basic-auth password")
    sms_status_callback_url: str | None = Field(
        "http://127.0.0.1:8080/api/webhooks/sms/status",
        description="Where the provider posts each message's delivery receipt (Twilio's StatusCallback), "
        "with our message id added as `message_id`; empty: no receipts",
    )


class SmsMockProviderSettings(MockProviderSettings):
    sms_provider_port: int = 9001
    # Named as the gateway's setting, so one environment signs and verifies with the same token.
    sms_webhook_auth_token: str = secret(
        DEVELOPMENT_SMS_WEBHOOK_AUTH_TOKEN, "The auth token the mock signs its X-Twilio-Signature with"
    )
    sms_mock_inbound_webhook_url: str | None = Field(
        "http://127.0.0.1:8080/api/webhooks/sms",
        description="Where `POST /simulate/inbound` posts an inbound message; empty: nowhere",
    )


class SmsMockBehaviourSettings(MockBehaviourSettings):
    """The SMS mock's failures and receipt timing at start: SMS_MOCK_FAILURE_RATE and so on."""

    model_config = SettingsConfigDict(env_prefix="SMS_MOCK_")
