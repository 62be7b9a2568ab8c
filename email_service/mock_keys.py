"""The email mock's event-signing key pair, as the `.env` lines the mock and the gateway read:

    python -m email_service.mock_keys >> .env

SendGrid holds the private key of its Signed Event Webhook and shows the account the public one; the
mock plays SendGrid, so `bin/setup.sh` makes a pair once for a fresh clone. Both base64 DER, P-256.
"""

import base64

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


def generate_event_keys() -> dict[str, str]:
    """EMAIL_EVENTS_PRIVATE_KEY (PKCS#8) and EMAIL_EVENTS_PUBLIC_KEY (SubjectPublicKeyInfo) of a new pair."""
    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return {
        "EMAIL_EVENTS_PRIVATE_KEY": base64.b64encode(private).decode(),
        "EMAIL_EVENTS_PUBLIC_KEY": base64.b64encode(public).decode(),
    }


def main() -> None:
    print("\n".join(f"{name}={value}" for name, value in generate_event_keys().items()))


if __name__ == "__main__":
    main()
