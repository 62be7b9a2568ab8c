"""The read API with a fake repository: validation, error answers and the exact JSON clients get."""

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from common.errors import NotFound
from conversation_service.app import create_app
from conversation_service.models import ConversationView, MessageDetail, MessageView, Page, StatusChange
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


class FakeRepository:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    async def list_conversations(self, limit: int, cursor: str | None = None) -> Page[ConversationView]:
        self.calls.append(("list_conversations", limit, cursor))
        return Page([CONVERSATION], "next-page")

    async def list_messages(self, conversation_id: int, limit: int, cursor: str | None = None) -> Page[MessageView]:
        self.calls.append(("list_messages", conversation_id, limit, cursor))
        if conversation_id != 1:
            raise NotFound(f"conversation {conversation_id} not found")
        return Page([MESSAGE], None)

    async def get_message(self, message_id: uuid.UUID) -> MessageDetail:
        self.calls.append(("get_message", message_id))
        if message_id != MESSAGE.id:
            raise NotFound(f"message {message_id} not found")
        return DETAIL


@pytest.fixture
def repository() -> FakeRepository:
    return FakeRepository()


@pytest.fixture
async def client(aiohttp_client: Any, repository: FakeRepository) -> TestClient:
    settings = ConversationSettings(default_page_size=20, max_page_size=50)
    return await aiohttp_client(create_app(settings, repository=repository))  # type: ignore[arg-type]


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
    assert repository.calls == [("list_conversations", 20, None)]


async def test_a_conversations_messages_in_the_documented_shape(client: TestClient, repository: FakeRepository) -> None:
    response = await client.get("/conversations/1/messages", params={"limit": "50", "cursor": "abc"})

    assert response.status == 200
    assert await response.json() == {"conversation_id": 1, "messages": [MESSAGE_JSON], "next_cursor": None}
    assert repository.calls == [("list_messages", 1, 50, "abc")]


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
    assert repository.calls == [("get_message", MESSAGE.id)]


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
