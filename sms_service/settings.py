from pydantic import Field

from common.mock_provider import MockProviderSettings
from common.provider import ProviderRetrySettings
from common.settings import ServiceSettings


class SmsSettings(ServiceSettings, ProviderRetrySettings):
    sms_service_port: int = 8081
    sms_provider_url: str = Field("http://127.0.0.1:9001", description="Base URL of the Twilio-like API")
    sms_provider_account_sid: str = Field("ACmock", description="Account SID: the basic-auth user")
    sms_provider_auth_token: str = Field("mock-token", description="Auth token: the basic-auth password")


class SmsMockProviderSettings(MockProviderSettings):
    sms_provider_port: int = 9001
