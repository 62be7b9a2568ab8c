"""The gateway's work: turn a validated request into a bus contract and get it safely queued.

Nothing here knows of HTTP or AMQP: the publisher, the Idempotency-Key store and the address
directory are injected, and any object with `async publish(contract)`, or with the `KeyStore` or
`AddressDirectory` methods, will do. The request's account and correlation id come from
`common.context`, where the gateway's middleware put them.
"""

import asyncio
import hashlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from common import context
from common.broker import BrokerUnavailable, ContractPublisher
from common.context import current_account
from common.contracts import (
    Channel,
    DeliveryReported,
    Direction,
    MessageContent,
    MessageReceived,
    MessageStatus,
    SendMessage,
    inbound_message_id,
)
from common.errors import Conflict, Forbidden, InvalidRequest, ServiceUnavailable
from common.idempotency import ClaimState, KeyClaim, KeyClaimRequest, KeyPublished, KeyReleased
from gateway.requests import DeliveryReport, SendRequest, Webhook

log = logging.getLogger(__name__)

NoteT = TypeVar("NoteT", KeyPublished, KeyReleased)

# How often a repeat asks whether the request that holds its Idempotency-Key has published yet.
CLAIM_POLL_SECONDS = 0.05


class KeyStore(Protocol):
    """conversation_service's Idempotency-Keys, per account (the command names it)."""

    async def claim(self, request: KeyClaimRequest) -> KeyClaim: ...

    async def mark_published(self, published: KeyPublished) -> None: ...

    async def release(self, released: KeyReleased) -> None: ...


class AddressDirectory(Protocol):
    async def owner_of(self, address: str) -> uuid.UUID | None:
        """The account that owns a normalized address, None when none does. The directory decides
        whether the development account owns what no one else does."""
        ...


def request_fingerprint(request: SendRequest) -> str:
    """The channel and the validated, normalized request, hashed to a short value whatever the body.

    Missing and empty attachments are the same request. A timestamp left out is left out here: the
    stored command keeps the time the first request was accepted.
    """
    timestamp = request.timestamp.isoformat() if request.timestamp is not None else None
    canonical = [request.channel, request.from_address, request.to, request.body, request.attachments or [], timestamp]
    return hashlib.sha256(json.dumps(canonical).encode()).hexdigest()


def current_correlation_id() -> uuid.UUID:
    """The request's correlation id, set by the gateway's middleware."""
    # Outside a request (a replay, a test calling the intake directly) each call starts a trail of its own.
    return context.correlation_id.get() or uuid.uuid4()


class AcceptedMessage(BaseModel):
    """What a client sees once its message is queued: the read API's message fields known at that point."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    id: uuid.UUID
    direction: Direction
    type: Channel
    from_address: str = Field(serialization_alias="from")
    to: str
    body: str
    attachments: list[str]
    status: MessageStatus
    provider: str | None = None
    provider_message_id: str | None = None
    timestamp: datetime

    @classmethod
    def of(
        cls,
        message_id: uuid.UUID,
        direction: Direction,
        content: MessageContent,
        status: MessageStatus,
        provider: str | None = None,
        provider_message_id: str | None = None,
    ) -> "AcceptedMessage":
        return cls(
            id=message_id,
            direction=direction,
            type=content.channel,
            from_address=content.from_address,
            to=content.to_address,
            body=content.body,
            attachments=list(content.attachments),
            status=status,
            provider=provider,
            provider_message_id=provider_message_id,
            timestamp=content.timestamp,
        )


@dataclass(frozen=True)
class AcceptedSend:
    message: AcceptedMessage
    # The answer is an earlier request's: this one repeated its Idempotency-Key and sent nothing new.
    replayed: bool


class MessageIntake:
    """`idempotency_wait_seconds` bounds how long a send waits for an earlier one with its key."""

    def __init__(
        self,
        publisher: ContractPublisher,
        key_store: KeyStore,
        directory: AddressDirectory,
        *,
        idempotency_wait_seconds: float,
    ) -> None:
        self._publisher = publisher
        self._key_store = key_store
        self._directory = directory
        self._idempotency_wait_seconds = idempotency_wait_seconds

    async def send(self, request: SendRequest, *, idempotency_key: str | None) -> AcceptedSend:
        account = current_account()
        if await self._directory.owner_of(request.from_address) != account:
            raise Forbidden(
                "this account may not send from that address",
                [{"field": "from", "reason": "is not an address of this account"}],
            )
        # A fresh id even with a key: the key store keeps the first command, and every repeat answers
        # with its id, while a key used again after it expired makes a new message, not a lost one.
        command = SendMessage(
            message_id=uuid.uuid4(),
            account_id=account,
            correlation_id=current_correlation_id(),
            content=request.to_content(),
        )
        if idempotency_key is None:
            await self._publisher.publish(command)
            return AcceptedSend(_queued(command), replayed=False)
        claim = await self._claim(
            KeyClaimRequest(key=idempotency_key, request_fingerprint=request_fingerprint(request), command=command)
        )
        if claim.state is ClaimState.CLAIMED:
            note = KeyPublished(
                account_id=claim.command.account_id, key=idempotency_key, message_id=claim.command.message_id
            )
            try:
                await self._publisher.publish(claim.command)
            except BrokerUnavailable:
                # The client will retry: its retry should take the claim over at once, not wait out a
                # publish that is not coming.
                await self._tell_key_store(self._key_store.release, KeyReleased(**note.model_dump()), claim.command)
                raise
            await self._tell_key_store(self._key_store.mark_published, note, claim.command)
        return AcceptedSend(_queued(claim.command), replayed=claim.command.message_id != command.message_id)

    async def _claim(self, request: KeyClaimRequest) -> KeyClaim:
        """The key's claim, once no earlier request with the key is still publishing.

        Waiting, rather than publishing too, keeps a burst of repeats to one publish; the store hands
        the claim over once the holder has had long enough, so a gateway that died holding it does
        not block the key.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._idempotency_wait_seconds
        while (claim := await self._key_store.claim(request)).state is ClaimState.IN_PROGRESS:
            if loop.time() >= deadline:
                raise Conflict(
                    "a request with this Idempotency-Key is still in progress; retry later",
                    [{"field": "Idempotency-Key", "reason": "is held by a request still in progress"}],
                )
            await asyncio.sleep(CLAIM_POLL_SECONDS)
        if claim.state is ClaimState.MISMATCH:
            raise InvalidRequest(
                "Idempotency-Key was used with a different request",
                [
                    {
                        "field": "Idempotency-Key",
                        "reason": "was already used with a different request; use a new key for a new message",
                    }
                ],
            )
        return claim

    async def _tell_key_store(
        self, tell: Callable[[NoteT], Awaitable[None]], note: NoteT, command: SendMessage
    ) -> None:
        """Report how the publish went. The answer to the client does not depend on it: if the store
        misses a publish, a repeat finds the key unpublished and, once the claim lapses, publishes the
        same command again, which its message id makes a duplicate downstream, not a second message;
        if it misses a release, the repeat waits for the claim to lapse."""
        try:
            await tell(note)
        except ServiceUnavailable:
            log.warning(
                "could not tell the idempotency key store how a publish went",
                extra={"outcome": type(note).__name__, "message_id": str(command.message_id)},
            )

    async def receive(self, webhook: Webhook) -> AcceptedMessage:
        """Queue an inbound message under the account that owns its recipient."""
        owner = await self._directory.owner_of(webhook.to)
        if owner is None:
            raise InvalidRequest(
                "no account receives messages for that address",
                [{"field": "to", "reason": "is not an address of any account"}],
            )
        context.account_id.set(owner)
        provider, provider_message_id = webhook.provider, webhook.provider_message_id
        event = MessageReceived(
            # Derived from the provider's id, so a webhook the provider retries is the same message.
            message_id=inbound_message_id(provider, provider_message_id),
            account_id=owner,
            correlation_id=current_correlation_id(),
            provider=provider,
            provider_message_id=provider_message_id,
            content=webhook.to_content(),
        )
        await self._publisher.publish(event)
        return AcceptedMessage.of(
            event.message_id, Direction.INBOUND, event.content, MessageStatus.RECEIVED, provider, provider_message_id
        )

    async def report_deliveries(self, reports: Sequence[DeliveryReport]) -> int:
        """Publish a receipt for every report with a final outcome, all confirmed before this returns;
        how many. A provider retries the whole batch if one publish fails: receipts are idempotent."""
        correlation_id = current_correlation_id()
        receipts = [
            DeliveryReported(
                message_id=report.message_id,
                correlation_id=correlation_id,
                occurred_at=report.occurred_at,
                channel=report.channel,
                provider=report.provider,
                provider_message_id=report.provider_message_id,
                status=outcome.status,
                error=outcome.error,
            )
            for report in reports
            if (outcome := report.outcome) is not None
        ]
        await asyncio.gather(*(self._publisher.publish(receipt) for receipt in receipts))
        return len(receipts)


def _queued(command: SendMessage) -> AcceptedMessage:
    return AcceptedMessage.of(command.message_id, Direction.OUTBOUND, command.content, MessageStatus.QUEUED)
