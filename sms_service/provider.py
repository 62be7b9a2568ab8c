"""The Twilio-like Messages API: a form post per message, basic auth, the id is the answer's `sid`.

Each message names its own `StatusCallback`, carrying our message id, so that its delivery receipt
can be matched to it whatever the provider's id.
"""

import base64
from collections.abc import Mapping

from yarl import URL

from common.contracts import SendMessage
from common.provider import ProviderClient, ProviderRequest, json_text_field
from sms_service.settings import SmsSettings


class SmsProviderClient(ProviderClient[SmsSettings]):
    def build_request(self, command: SendMessage) -> ProviderRequest:
        content = command.content
        form = [("To", content.to_address), ("From", content.from_address), ("Body", content.body)]
        form += [("MediaUrl", url) for url in content.attachments]
        if self.settings.sms_status_callback_url:
            callback = URL(self.settings.sms_status_callback_url).update_query(message_id=str(command.message_id))
            form.append(("StatusCallback", str(callback)))
        base_url = self.settings.sms_provider_url.rstrip("/")
        account_sid = self.settings.sms_provider_account_sid
        credentials = f"{account_sid}:{self.settings.sms_provider_auth_token}".encode()
        return ProviderRequest(
            url=f"{base_url}/2010-04-01/Accounts/{account_sid}/Messages.json",
            headers={"Authorization": f"Basic {base64.b64encode(credentials).decode()}"},
            form=form,
        )

    def message_id(self, headers: Mapping[str, str], body: bytes) -> str | None:
        return json_text_field(body, "sid")

    def error_reason(self, body: bytes) -> str | None:
        return json_text_field(body, "message")
