"""Accounts and API keys as both sides see them: the key format, and the internal HTTP contract
conversation_service (which keeps accounts, addresses and key hashes) serves to the gateway.

Every internal call carries the service token (`Authorization: Bearer <INTERNAL_SERVICE_TOKEN>`);
a read acts for the account named in `ACCOUNT_HEADER`, which only the gateway, having checked the
caller's key, may set.
"""

import hashlib
import secrets
import uuid
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

# The built-in account of the development profile: a request without a key acts for it, and it owns
# every address no other account owns. The migration creates it; production never falls back to it.
DEVELOPMENT_ACCOUNT_ID = uuid.UUID("00000000-0000-4000-8000-000000000001")
DEVELOPMENT_ACCOUNT_NAME = "development"

ACCOUNT_HEADER = "X-Account-ID"
VERIFY_KEY_PATH = "/internal/keys/verify"
ADDRESS_OWNER_PATH = "/internal/addresses/owner"

# `msk_<prefix>_<secret>`: the prefix names the key in lists and logs, the secret (256 bits) is what
# makes it unguessable; only the SHA-256 of the whole key is stored.
KEY_SCHEME = "msk"
PREFIX_BYTES = 4
SECRET_BYTES = 32


class Scope(StrEnum):
    SEND = "send"
    READ = "read"


def generate_api_key() -> tuple[str, str]:
    """A new key and its prefix. The key is shown once; store `hash_api_key(key)` and the prefix."""
    prefix = secrets.token_hex(PREFIX_BYTES)
    return f"{KEY_SCHEME}_{prefix}_{secrets.token_urlsafe(SECRET_BYTES)}", prefix


def hash_api_key(key: str) -> str:
    """A key has 256 random bits, so a fast hash is enough: no one can guess their way back from it."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def prefix_of(key: str) -> str | None:
    """The prefix of a well-formed key; None for anything else, which then names no key."""
    scheme, _, rest = key.partition("_")
    prefix, _, secret = rest.partition("_")
    if scheme != KEY_SCHEME or len(prefix) != 2 * PREFIX_BYTES or not secret:
        return None
    return prefix


class _Body(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KeyVerification(_Body):
    """Who holds the key with this hash? conversation_service answers 404 for a key that is unknown,
    revoked or expired, and records the key's last use."""

    key_hash: str = Field(min_length=64, max_length=64)


class KeyIdentity(_Body):
    account_id: uuid.UUID
    key_prefix: str
    scopes: tuple[Scope, ...]
    expires_at: datetime | None = None


class AddressOwnerQuery(_Body):
    """Which account owns this normalized address: the address itself, else its `@domain`, else (in
    the development profile) the development account. 404 when none does."""

    address: str = Field(min_length=1, max_length=320)


class AddressOwner(_Body):
    account_id: uuid.UUID
