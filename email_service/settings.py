from pydantic import Field
from pydantic_settings import SettingsConfigDict

from common.mock_provider import MockBehaviourSettings, MockProviderSettings
from common.provider import ProviderRetrySettings
from common.settings import ServiceSettings


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


class EmailMockBehaviourSettings(MockBehaviourSettings):
    """The email mock's failures and receipt timing at start: EMAIL_MOCK_FAILURE_RATE and so on."""

    model_config = SettingsConfigDict(env_prefix="EMAIL_MOCK_")
