"""The read API with a fake repository: validation, error answers, the exact JSON clients get, the
account each read is for, and the service token that guards every route but the health checks."""

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from common.accounts import ACCOUNT_HEADER
from common.conversations import (
    ConversationList,
    ConversationView,
    MessageDetail,
    MessageList,
    MessageView,
    StatusChange,
)
from common.errors import NotFound
from conversation_service.app import create_app
from conversation_service.settings import ConversationSettings

# The database may answer in any session time zone; clients must still see UTC with a Z.
PLUS_TWO = timezone(timedelta(hours=2))
MESSAGE = MessageView(
    id=uuid.UUID("6f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"),
    conversation_id=1,
    direction="outbound",
    type="sms",
    from_address="+12016661234",
    to_address="+18045551234",
    body="text message",
    attachments=["https://example.com/a.png"],
    status="sent",
    provider="sms-provider",
    provider_message_id="SM123",
    attempts=1,
    last_error=None,
    timestamp=datetime(2024, 11, 1, 16, 0, tzinfo=PLUS_TWO),
    created_at=datetime(2024, 11, 1, 14, 0, 1, 250000, tzinfo=UTC),
    updated_at=datetime(2024, 11, 1, 14, 0, 2, tzinfo=UTC),
    status_changed_at=datetime(2024, 11, 1, 14, 0, 2, tzinfo=UTC),
)
DETAIL = MessageDetail(
    **MESSAGE.model_dump(),
    history=[
        StatusChange(
            status="queued",
            at=datetime(2024, 11, 1, 16, 0, 0, 500000, tzinfo=PLUS_TWO),
            attempts=None,
            provider_message_id=None,
            error=None,
        ),
        StatusChange(status="sent", at=MESSAGE.status_changed_at, attempts=1, provider_message_id="SM123", error=None),
    ],
)
CONVERSATION = ConversationView(
    id=1,
    participants=["+18045551234", "+12016661234"],
    channels=["sms", "mms"],
    message_count=4,
    last_message=MESSAGE,
    last_message_at=MESSAGE.timestamp,
    created_at=datetime(2024, 11, 1, 14, 0, 1, tzinfo=UTC),
)
MESSAGE_JSON = {
    "id": "6f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9",
    "conversation_id": 1,
    "direction": "outbound",
    "type": "sms",
    "from": "+12016661234",
    "to": "+18045551234",
    "body": "text message",
    "attachments": ["https://example.com/a.png"],
    "status": "sent",
    "provider": "sms-provider",
    "provider_message_id": "SM123",
    "attempts": 1,
    "last_error": None,
    "timestamp": "2024-11-01T14:00:00Z",
    "created_at": "2024-11-01T14:00:01.250000Z",
    "updated_at": "2024-11-01T14:00:02Z",
    "status_changed_at": "2024-11-01T14:00:02Z",
}


def _body(model: ConversationList | MessageList | MessageDetail) -> bytes:
    # The repository answers the body itself (written by PostgreSQL, in the contract's shapes; the
    # integration tests hold the two to each other): here, the contract writes it.
    return model.model_dump_json(by_alias=True).encode()


class FakeRepository:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    async def list_conversations(self, account_id: uuid.UUID, limit: int, cursor: str | None = None) -> bytes:
        self.calls.append(("list_conversations", account_id, limit, cursor))
        return _body(ConversationList(conversations=[CONVERSATION], next_cursor="next-page"))

    async def list_messages(
        self, account_id: uuid.UUID, conversation_id: int, limit: int, cursor: str | None = None
    ) -> bytes:
        self.calls.append(("list_messages", account_id, conversation_id, limit, cursor))
        if conversation_id != 1:
            raise NotFound(f"conversation {conversation_id} not found")
        return _body(MessageList(conversation_id=conversation_id, messages=[MESSAGE], next_cursor=None))

    async def get_message(self, account_id: uuid.UUID, message_id: uuid.UUID) -> bytes:
        self.calls.append(("get_message", account_id, message_id))
        if message_id != MESSAGE.id:
            raise NotFound(f"message {message_id} not found")
        return _body(DETAIL)


@pytest.fixture
def repository() -> FakeRepository:
    return FakeRepository()


ACCOUNT = uuid.UUID("3b241101-e2bb-4255-8caf-4136c566a962")
TOKEN = "a-token-of-this-test-only"
# What the gateway sends with every read.
GATEWAY_HEADERS = {"Authorization": f"Bearer {TOKEN}", ACCOUNT_HEADER: str(ACCOUNT)}


@pytest.fixture
def app(repository: FakeRepository) -> Any:
    settings = ConversationSettings(default_page_size=20, max_page_size=50, internal_service_token=TOKEN)
    return create_app(settings, repository=repository)  # type: ignore[arg-type]


@pytest.fixture
async def client(aiohttp_client: Any, app: Any) -> TestClient:
    return await aiohttp_client(app, headers=GATEWAY_HEADERS)


@pytest.fixture
async def stranger(aiohttp_client: Any, app: Any) -> TestClient:
    """A caller with no headers of its own."""
    return await aiohttp_client(app)


async def test_conversations_list_in_the_documented_shape(client: TestClient, repository: FakeRepository) -> None:
    response = await client.get("/conversations")

    assert response.status == 200
    assert await response.json() == {
        "conversations": [
            {
                "id": 1,
                "participants": ["+12016661234", "+18045551234"],
                "channels": ["mms", "sms"],
                "message_count": 4,
                "last_message": MESSAGE_JSON,
                "last_message_at": "2024-11-01T14:00:00Z",
                "created_at": "2024-11-01T14:00:01Z",
            }
        ],
        "next_cursor": "next-page",
    }
    assert repository.calls == [("list_conversations", ACCOUNT, 20, None)]


async def test_a_conversations_messages_in_the_documented_shape(client: TestClient, repository: FakeRepository) -> None:
    response = await client.get("/conversations/1/messages", params={"limit": "50", "cursor": "abc"})

    assert response.status == 200
    assert await response.json() == {"conversation_id": 1, "messages": [MESSAGE_JSON], "next_cursor": None}
    assert repository.calls == [("list_messages", ACCOUNT, 1, 50, "abc")]


async def test_one_message_with_its_history_oldest_first(client: TestClient, repository: FakeRepository) -> None:
    response = await client.get(f"/messages/{MESSAGE.id}")

    assert response.status == 200
    assert await response.json() == {
        **MESSAGE_JSON,
        "history": [
            {
                "status": "queued",
                "at": "2024-11-01T14:00:00.500000Z",
                "attempts": None,
                "provider_message_id": None,
                "error": None,
            },
            {
                "status": "sent",
                "at": "2024-11-01T14:00:02Z",
                "attempts": 1,
                "provider_message_id": "SM123",
                "error": None,
            },
        ],
    }
    assert repository.calls == [("get_message", ACCOUNT, MESSAGE.id)]


@pytest.mark.parametrize("conversation_id", ["abc", "0", "-1", "1.5", "99999999999999999999", "9223372036854775808"])
async def test_a_conversation_id_that_is_not_a_positive_bigint_is_a_422_naming_it(
    client: TestClient, repository: FakeRepository, conversation_id: str
) -> None:
    response = await client.get(f"/conversations/{conversation_id}/messages")

    assert response.status == 422
    body = await response.json()
    assert body["error"] == "invalid_request"
    assert [detail["field"] for detail in body["details"]] == ["conversation_id"]
    assert repository.calls == []


async def test_the_largest_bigint_is_a_valid_conversation_id(client: TestClient) -> None:
    response = await client.get("/conversations/9223372036854775807/messages")

    assert response.status == 404


@pytest.mark.parametrize("limit", ["0", "51", "abc", ""])
async def test_a_limit_outside_one_to_the_maximum_is_a_422_naming_it(
    client: TestClient, repository: FakeRepository, limit: str
) -> None:
    response = await client.get("/conversations", params={"limit": limit})

    assert response.status == 422
    body = await response.json()
    assert [detail["field"] for detail in body["details"]] == ["limit"]
    assert repository.calls == []


async def test_a_message_id_that_is_not_a_uuid_is_a_422_naming_it(client: TestClient) -> None:
    response = await client.get("/messages/not-a-uuid")

    assert response.status == 422
    body = await response.json()
    assert [detail["field"] for detail in body["details"]] == ["message_id"]


async def test_unknown_conversation_and_message_are_404s(client: TestClient) -> None:
    conversation = await client.get("/conversations/2/messages")
    message = await client.get(f"/messages/{uuid.uuid4()}")

    assert conversation.status == 404
    assert (await conversation.json())["error"] == "not_found"
    assert message.status == 404
    assert (await message.json())["error"] == "not_found"


READS = ["/conversations", "/conversations/1/messages", f"/messages/{MESSAGE.id}"]


@pytest.mark.parametrize("path", READS)
@pytest.mark.parametrize(
    "authorization",
    [None, "", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", TOKEN, f"Basic {TOKEN}", "Bearer \u00e9t\u00e9"],
)
async def test_a_call_without_the_service_token_is_a_401_and_reads_nothing(
    stranger: TestClient, repository: FakeRepository, path: str, authorization: str | None
) -> None:
    headers = {ACCOUNT_HEADER: str(ACCOUNT)}
    if authorization is not None:
        headers["Authorization"] = authorization

    response = await stranger.get(path, headers=headers)

    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert (await response.json())["error"] == "unauthorized"
    assert repository.calls == []


async def test_an_unknown_route_without_the_token_is_a_401_too(stranger: TestClient) -> None:
    response = await stranger.post("/internal/keys/verify", json={"key_hash": "0" * 64})

    assert response.status == 401


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
async def test_health_checks_need_no_token(stranger: TestClient, path: str) -> None:
    response = await stranger.get(path)

    assert response.status == 200


@pytest.mark.parametrize("path", READS)
@pytest.mark.parametrize(
    ("account", "reason"), [(None, "missing"), ("", "not an account id"), ("42", "not an account id")]
)
async def test_a_read_that_names_no_account_is_a_422_naming_the_header(
    stranger: TestClient, repository: FakeRepository, path: str, account: str | None, reason: str
) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    if account is not None:
        headers[ACCOUNT_HEADER] = account

    response = await stranger.get(path, headers=headers)

    assert response.status == 422
    assert (await response.json())["details"] == [{"field": ACCOUNT_HEADER, "reason": reason}]
    assert repository.calls == []
