"""The HTTP contract of the Idempotency-Key store: conversation_service serves it, the gateway calls it.

The gateway owns nothing durable, so a client's key lives in conversation_service's database, where
every gateway replica, and a restarted one, finds it.
"""

import uuid
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from common.contracts import SendMessage

MAX_IDEMPOTENCY_KEY_LENGTH = 255
CLAIM_PATH = "/idempotency-keys/claim"
PUBLISHED_PATH = "/idempotency-keys/published"
RELEASED_PATH = "/idempotency-keys/released"


class ClaimState(StrEnum):
    # The caller holds the key: publish the answer's command, then report it published (or, if the
    # broker refused it, released).
    CLAIMED = "claimed"
    # Another request holds the key and has not published yet: ask again shortly.
    IN_PROGRESS = "in_progress"
    # The command was published: answer from it, publish nothing.
    PUBLISHED = "published"
    # The key was first used with a different request.
    MISMATCH = "mismatch"


class _Body(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KeyClaimRequest(_Body):
    """Claim `key` for the request `request_fingerprint` stands for, with the command it makes."""

    key: str = Field(min_length=1, max_length=MAX_IDEMPOTENCY_KEY_LENGTH)
    request_fingerprint: str = Field(min_length=1, max_length=128)
    command: SendMessage


class KeyClaim(_Body):
    """The key's state for the caller, and the command stored with it: the caller's own only if
    the key was new (or had expired)."""

    state: ClaimState
    command: SendMessage


class KeyPublished(_Body):
    # Keys are per account: the same key of two accounts is two keys.
    account_id: uuid.UUID
    key: str = Field(min_length=1, max_length=MAX_IDEMPOTENCY_KEY_LENGTH)
    message_id: uuid.UUID


class KeyReleased(KeyPublished):
    """The holder could not publish: the next repeat takes the claim over at once rather than
    waiting for it to lapse."""
