"""The gateway's send with an Idempotency-Key, against fakes: how it waits, takes over, replays and fails."""

from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web

from common import context
from common.accounts import DEVELOPMENT_ACCOUNT_ID
from common.broker import BrokerUnavailable
from common.contracts import SendMessage
from common.errors import Conflict, ServiceUnavailable
from common.idempotency import ClaimState, KeyClaim, KeyClaimRequest, KeyPublished, KeyReleased
from gateway.conversation_client import ClientTimeouts, ConversationServiceClient
from gateway.handlers import KeyStore, MessageIntake, request_fingerprint
from gateway.requests import SendRequest, ValidationRules, send_request_adapter
from tests.factories import send_message
from tests.fakes import AddressBook, MemoryKeyStore, RecordingPublisher

RULES = ValidationRules(
    default_phone_region="US", sms_body_max_chars=1600, email_body_max_chars=10_000, max_attachments=5
)
SMS = {"from": "+12016661234", "to": "+18045551234", "type": "sms", "body": "hi", "timestamp": "2024-11-01T14:00:00Z"}


@pytest.fixture(autouse=True)
def _acting_for_the_development_account() -> Iterator[None]:
    """The intake sends for the request's account, which the gateway's middleware puts in context."""
    token = context.account_id.set(DEVELOPMENT_ACCOUNT_ID)
    yield
    context.account_id.reset(token)


def send_request(**fields: Any) -> SendRequest:
    return send_request_adapter.validate_python({**SMS, **fields}, context=RULES)


class ScriptedKeyStore:
    """Answers each claim with the next state of `states`, for a command another request stored."""

    def __init__(self, *states: ClaimState) -> None:
        self.states = list(states)
        self.stored = send_message()
        self.claims = 0
        self.marked: list[KeyPublished | KeyReleased] = []
        self.mark_fails = False

    async def claim(self, request: KeyClaimRequest) -> KeyClaim:
        self.claims += 1
        return KeyClaim(state=self.states.pop(0), command=self.stored)

    async def mark_published(self, published: KeyPublished) -> None:
        await self._mark(published)

    async def release(self, released: KeyReleased) -> None:
        await self._mark(released)

    async def _mark(self, note: KeyPublished | KeyReleased) -> None:
        if self.mark_fails:
            raise ServiceUnavailable("the idempotency key store is unavailable; retry later")
        self.marked.append(note)


KEY = (DEVELOPMENT_ACCOUNT_ID, "order-42")


@pytest.fixture(autouse=True)
def _development_account() -> Iterator[None]:
    token = context.account_id.set(DEVELOPMENT_ACCOUNT_ID)
    yield
    context.account_id.reset(token)


def intake(publisher: RecordingPublisher, store: KeyStore, *, idempotency_wait_seconds: float) -> MessageIntake:
    return MessageIntake(publisher, store, AddressBook(), idempotency_wait_seconds=idempotency_wait_seconds)


async def send(intake: MessageIntake, request: SendRequest | None = None) -> Any:
    return await intake.send(request or send_request(), idempotency_key="order-42")


async def test_a_repeat_waits_for_the_first_request_and_answers_with_its_message() -> None:
    publisher = RecordingPublisher()
    store = ScriptedKeyStore(ClaimState.IN_PROGRESS, ClaimState.IN_PROGRESS, ClaimState.PUBLISHED)

    accepted = await send(intake(publisher, store, idempotency_wait_seconds=5))

    assert store.claims == 3
    assert (accepted.message.id, accepted.replayed) == (store.stored.message_id, True)
    assert (publisher.published, store.marked) == ([], [])


async def test_a_repeat_that_takes_over_a_lapsed_claim_publishes_the_stored_command_once() -> None:
    publisher = RecordingPublisher()
    store = ScriptedKeyStore(ClaimState.CLAIMED)

    accepted = await send(intake(publisher, store, idempotency_wait_seconds=5))

    assert publisher.published == [store.stored]
    assert [mark.message_id for mark in store.marked] == [store.stored.message_id]
    assert (accepted.message.id, accepted.replayed) == (store.stored.message_id, True)


async def test_a_first_request_still_in_progress_after_the_wait_is_a_409() -> None:
    publisher = RecordingPublisher()
    store = ScriptedKeyStore(*[ClaimState.IN_PROGRESS] * 100)

    with pytest.raises(Conflict) as raised:
        await send(intake(publisher, store, idempotency_wait_seconds=0.1))

    assert raised.value.details == [{"field": "Idempotency-Key", "reason": "is held by a request still in progress"}]
    assert 2 <= store.claims < 100
    assert publisher.published == []


async def test_a_publish_the_broker_refused_releases_the_key_so_the_retry_sends_at_once() -> None:
    publisher, store = RecordingPublisher(), MemoryKeyStore()
    sender = intake(publisher, store, idempotency_wait_seconds=5)
    publisher.fail = True

    with pytest.raises(BrokerUnavailable):
        await send(sender)

    assert (list(store.keys), store.published, store.released) == ([KEY], set(), {KEY})
    publisher.fail = False
    retried = await send(sender)
    [command] = publisher.published
    # The retry publishes the first request's command and answers with it: one message, whichever
    # of the two publishes reached the broker.
    assert command == store.keys[KEY][1]
    assert (retried.message.id, retried.replayed) == (command.message_id, True)
    assert store.published == {KEY}


async def test_a_refused_publish_is_refused_even_if_the_release_is_lost() -> None:
    publisher = RecordingPublisher()
    store = ScriptedKeyStore(ClaimState.CLAIMED)
    publisher.fail, store.mark_fails = True, True

    with pytest.raises(BrokerUnavailable):
        await send(intake(publisher, store, idempotency_wait_seconds=5))

    assert (publisher.published, store.marked) == ([], [])


async def test_a_queued_message_is_accepted_even_if_the_store_misses_that_it_was_published() -> None:
    publisher = RecordingPublisher()
    store = ScriptedKeyStore(ClaimState.CLAIMED)
    store.mark_fails = True

    accepted = await send(intake(publisher, store, idempotency_wait_seconds=5))

    assert publisher.published == [store.stored]
    assert accepted.message.id == store.stored.message_id


async def test_the_first_request_of_a_key_sends_its_own_command() -> None:
    publisher, store = RecordingPublisher(), MemoryKeyStore()

    accepted = await send(intake(publisher, store, idempotency_wait_seconds=5))

    [command] = publisher.published
    assert isinstance(command, SendMessage)
    assert (accepted.message.id, accepted.replayed) == (command.message_id, False)
    assert store.published == {KEY}


def test_the_fingerprint_is_the_normalized_request() -> None:
    fingerprint = request_fingerprint(send_request())

    assert request_fingerprint(send_request(to="(804) 555-1234", attachments=[])) == fingerprint
    assert request_fingerprint(send_request(timestamp="2024-11-01T09:00:00-05:00")) == fingerprint
    different = [
        send_request(body="hi!"),
        send_request(to="+18045551235"),
        send_request(timestamp=None),
        send_request(type="mms", attachments=["https://example.com/a.png"]),
    ]
    assert len({fingerprint, *map(request_fingerprint, different)}) == 5


@pytest.mark.parametrize("status", [500, 503, 404])
async def test_a_key_store_that_answers_an_error_is_unavailable(aiohttp_client: Any, status: int) -> None:
    async def failing(request: web.Request) -> web.Response:
        return web.json_response({"error": "service_unavailable", "message": "down"}, status=status)

    upstream = web.Application()
    upstream.router.add_post("/{tail:.*}", failing)
    client = await aiohttp_client(upstream)
    store = ConversationServiceClient(
        client.session, str(client.make_url("")), ClientTimeouts(5, 5, 5), cache_seconds=0, clock=lambda: 0.0
    )
    claim = KeyClaimRequest(key="order-42", request_fingerprint="f", command=send_message())

    with pytest.raises(ServiceUnavailable):
        await store.claim(claim)
    with pytest.raises(ServiceUnavailable):
        await store.mark_published(
            KeyPublished(account_id=claim.command.account_id, key="order-42", message_id=claim.command.message_id)
        )
