"""The providers' webhook signature schemes, as both ends see them: what is signed and where it goes.

The gateway verifies these (`gateway.signatures`) and the mock providers sign with them, so the
bytes each side puts under a signature are defined once, here. The HMAC and ECDSA work itself is
done by the providers' library (twilio's `RequestValidator`) and `cryptography`, not by hand.
"""

import hashlib
import hmac
from collections.abc import Mapping, Sequence

from multidict import MultiDict
from twilio.request_validator import RequestValidator
from yarl import URL

TWILIO_SIGNATURE_HEADER = "X-Twilio-Signature"
# Twilio signs a JSON body through this query parameter: the hex SHA-256 of the body, in the signed URL.
BODY_SHA256_PARAM = "bodySHA256"
SENDGRID_SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
SENDGRID_TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
XILLIO_SIGNATURE_HEADER = "X-Xillio-Signature"

# The development profile's secrets, shared by the gateway and the mocks so that `make run` verifies
# what the mocks sign; production refuses to start with either. The email events' key pair has no
# default: bin/setup.sh generates one into .env.
DEVELOPMENT_SMS_WEBHOOK_AUTH_TOKEN = "development-sms-webhook-auth-token"
DEVELOPMENT_EMAIL_WEBHOOK_SECRET = "development-email-webhook-secret"


def twilio_signature(auth_token: str, url: str, params: Mapping[str, str] | MultiDict[str] | None) -> str:
    """Twilio's X-Twilio-Signature: base64 HMAC-SHA1 of the full URL followed by the form parameters
    sorted by name (none for a JSON body, whose hash is in the URL instead)."""
    return str(RequestValidator(auth_token).compute_signature(url, params or {}))


def body_sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def with_body_hash(url: str, body: bytes) -> str:
    """The URL a provider posts a JSON body to, carrying the body's hash so that signing the URL signs it."""
    return str(URL(url, encoded=True).extend_query({BODY_SHA256_PARAM: body_sha256(body)}))


def sendgrid_payload(timestamp: str, body: bytes) -> bytes:
    """What SendGrid's Signed Event Webhook signs with ECDSA P-256 / SHA-256: the timestamp header, then the body."""
    return timestamp.encode("ascii") + body


def xillio_signature(secret: str, timestamp: str, body: bytes) -> str:
    """The hex HMAC-SHA256 of `"<t>." + body`, the `v1` of an X-Xillio-Signature."""
    return hmac.new(secret.encode(), timestamp.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()


def xillio_header(timestamp: str, signatures: Sequence[str]) -> str:
    return ",".join([f"t={timestamp}", *(f"v1={signature}" for signature in signatures)])
