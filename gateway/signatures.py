"""Provider webhook signatures, verified on the raw bytes before anything parses them.

One class per scheme (`common.webhook_signing` says what each signs); `WebhookVerifier` applies the
profile: production refuses a webhook without its signature, development takes an unsigned one (the
Hatch tour sends none), and in both a signature that is present must verify. Every comparison of a
secret-derived value is `hmac.compare_digest`, so how long it takes tells a forger nothing.
"""

import base64
import binascii
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key
from yarl import URL

from common.errors import DomainError, ErrorDetail, Forbidden
from common.forms import FORM_CONTENT_TYPE, parse_form
from common.settings import Profile
from common.webhook_signing import (
    BODY_SHA256_PARAM,
    SENDGRID_SIGNATURE_HEADER,
    SENDGRID_TIMESTAMP_HEADER,
    TWILIO_SIGNATURE_HEADER,
    XILLIO_SIGNATURE_HEADER,
    body_sha256,
    sendgrid_payload,
    twilio_signature,
    xillio_signature,
)

# A unix time in seconds has 10 digits until 2286; anything much longer is not one.
_MAX_TIMESTAMP_DIGITS = 12
_MAX_SIGNATURES = 8


@dataclass(frozen=True)
class SignedRequest:
    """What a signature covers: the URL the provider called (PUBLIC_BASE_URL + path + query), the
    headers, the body's bytes, and when it arrived (the "now" of a timestamp window)."""

    url: str
    headers: Mapping[str, str]
    body: bytes
    content_type: str
    received_at: datetime


class SignatureRefused(Forbidden):
    """The webhook is not provably from its provider: `header` names where the signature should be."""

    code = "invalid_signature"

    def __init__(self, reason: str, header: str) -> None:
        details: list[ErrorDetail] = [{"field": header, "reason": reason}]
        super().__init__(f"webhook signature refused: {reason}", details)
        self.reason = reason
        self.header = header


class SignatureScheme(Protocol):
    header: str

    def verify(self, request: SignedRequest) -> None:
        """Return if the request's signature is the provider's; raise `SignatureRefused` if not."""


def _within_window(timestamp: str, request: SignedRequest, tolerance_seconds: float, header: str) -> None:
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= _MAX_TIMESTAMP_DIGITS):
        raise SignatureRefused("the timestamp is not a unix time in seconds", header)
    if abs(request.received_at.timestamp() - int(timestamp)) > tolerance_seconds:
        raise SignatureRefused(
            f"the timestamp is more than {tolerance_seconds:g} seconds from the time received", header
        )


class TwilioSignature:
    """X-Twilio-Signature over the URL and the sorted form parameters; for a JSON body the URL carries
    `bodySHA256`, which must be the body's hash, and the signature covers the URL alone."""

    header = TWILIO_SIGNATURE_HEADER

    def __init__(self, auth_token: str) -> None:
        self._auth_token = auth_token

    def verify(self, request: SignedRequest) -> None:
        given = request.headers.get(self.header, "")
        hashes_in_url = URL(request.url, encoded=True).query.getall(BODY_SHA256_PARAM, [])
        if hashes_in_url:
            if len(hashes_in_url) > 1 or not hmac.compare_digest(
                hashes_in_url[0].encode(), body_sha256(request.body).encode()
            ):
                raise SignatureRefused(f"the body does not match the URL's {BODY_SHA256_PARAM}", self.header)
            params = None
        elif request.content_type == FORM_CONTENT_TYPE:
            try:
                params = parse_form(request.body)
            except DomainError as error:
                raise SignatureRefused(f"the signed form cannot be read ({error.message})", self.header) from error
        else:
            raise SignatureRefused(f"a body that is not a form must be signed through {BODY_SHA256_PARAM}", self.header)
        expected = twilio_signature(self._auth_token, request.url, params)
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise SignatureRefused("the signature does not match the URL and body", self.header)


class SendGridSignature:
    """SendGrid's Signed Event Webhook: an ECDSA P-256 / SHA-256 signature (base64 DER) over the
    timestamp header and the body, the timestamp within the tolerance."""

    header = SENDGRID_SIGNATURE_HEADER

    def __init__(self, public_key: ec.EllipticCurvePublicKey | None, tolerance_seconds: float) -> None:
        self._public_key = public_key
        self._tolerance_seconds = tolerance_seconds

    def verify(self, request: SignedRequest) -> None:
        if self._public_key is None:
            raise SignatureRefused("EMAIL_EVENTS_PUBLIC_KEY is not set, so no signature can be checked", self.header)
        timestamp = request.headers.get(SENDGRID_TIMESTAMP_HEADER)
        if timestamp is None:
            raise SignatureRefused("the signature comes without its timestamp", SENDGRID_TIMESTAMP_HEADER)
        _within_window(timestamp, request, self._tolerance_seconds, SENDGRID_TIMESTAMP_HEADER)
        try:
            signature = base64.b64decode(request.headers.get(self.header, ""), validate=True)
            self._public_key.verify(signature, sendgrid_payload(timestamp, request.body), ec.ECDSA(hashes.SHA256()))
        # ValueError: base64 of characters that are not ASCII (binascii.Error is one too).
        except (ValueError, InvalidSignature) as error:
            raise SignatureRefused("the signature does not match the timestamp and body", self.header) from error


class XillioSignature:
    """X-Xillio-Signature: `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>." + body>`, `t` within the
    tolerance. Several `v1` are allowed, as a provider rotating its secret sends one per secret."""

    header = XILLIO_SIGNATURE_HEADER

    def __init__(self, secret: str, tolerance_seconds: float) -> None:
        self._secret = secret
        self._tolerance_seconds = tolerance_seconds

    def verify(self, request: SignedRequest) -> None:
        timestamp, signatures = self._parts(request.headers.get(self.header, ""))
        _within_window(timestamp, request, self._tolerance_seconds, self.header)
        expected = xillio_signature(self._secret, timestamp, request.body).encode()
        # Every candidate is compared, so which one matched (or that none did) takes the same time.
        matches = [hmac.compare_digest(signature.encode(), expected) for signature in signatures]
        if not any(matches):
            raise SignatureRefused("no v1 signature matches the timestamp and body", self.header)

    def _parts(self, value: str) -> tuple[str, list[str]]:
        timestamps, signatures = [], []
        for part in value.split(",", _MAX_SIGNATURES + 1)[: _MAX_SIGNATURES + 1]:
            name, _, item = part.strip().partition("=")
            if name == "t":
                timestamps.append(item)
            elif name == "v1":
                signatures.append(item)
        if len(timestamps) != 1 or not signatures:
            raise SignatureRefused("must be t=<unix seconds>,v1=<hex signature>", self.header)
        return timestamps[0], signatures


class WebhookVerifier:
    """Applies the profile to a scheme's verdict."""

    def __init__(self, profile: Profile) -> None:
        self._profile = profile

    def check(self, scheme: SignatureScheme, request: SignedRequest) -> None:
        if scheme.header not in request.headers:
            if self._profile is Profile.PRODUCTION:
                raise SignatureRefused("the webhook is not signed", scheme.header)
            return
        scheme.verify(request)


def load_public_key(encoded: str) -> ec.EllipticCurvePublicKey | None:
    """An EMAIL_EVENTS_PUBLIC_KEY (base64 DER, as SendGrid shows it); None when not set."""
    if not encoded:
        return None
    try:
        key = load_der_public_key(base64.b64decode(encoded, validate=True))
    except (binascii.Error, ValueError) as error:
        raise ValueError("is not a base64 DER public key") from error
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("is not an ECDSA P-256 public key")
    return key
