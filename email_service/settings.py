from pydantic import Field

from common.mock_provider import MockProviderSettings
from common.provider import ProviderRetrySettings
from common.settings import ServiceSettings


class EmailSettings(ServiceSettings, ProviderRetrySettings):
    email_service_port: int = 8082
    email_provider_url: str = Field("http://127.0.0.1:9002", description="Base URL of the SendGrid-like API")
    email_provider_api_key: str = Field("mock-key", description="API key, sent as a bearer token")


class EmailMockProviderSettings(MockProviderSettings):
    email_provider_port: int = 9002
