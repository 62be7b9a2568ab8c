"""The providers' delivery-receipt webhooks with a fake publisher: what they publish, ignore and refuse."""

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from common.contracts import EMAIL_PROVIDER, SMS_PROVIDER, Channel, DeliveryReported, MessageStatus
from gateway.app import create_app
from gateway.settings import GatewaySettings
from tests.fakes import MemoryKeyStore, RecordingPublisher

OURS = uuid.UUID("6f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9")
SMS_STATUS = "/api/webhooks/sms/status"
EMAIL_STATUS = "/api/webhooks/email/status"
TWILIO_DELIVERED = {
    "MessageSid": "SM0123456789abcdef",
    "MessageStatus": "delivered",
    "To": "+18045551234",
    "From": "+12016661234",
    "AccountSid": "ACmock",
    "ApiVersion": "2010-04-01",
}
SENDGRID_DELIVERED = {
    "email": "contact@gmail.com",
    "timestamp": 1730469600,
    "event": "delivered",
    "sg_event_id": "c2VuZGdyaWQ",
    "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
    "message_id": str(OURS),
}


@pytest.fixture
def publisher() -> RecordingPublisher:
    return RecordingPublisher()


@pytest.fixture
async def client(aiohttp_client: Any, publisher: RecordingPublisher) -> TestClient:
    settings = GatewaySettings(conversation_service_url="http://127.0.0.1:1")
    return await aiohttp_client(create_app(settings, publisher=publisher, key_store=MemoryKeyStore()))


def receipts(publisher: RecordingPublisher) -> list[DeliveryReported]:
    assert all(isinstance(contract, DeliveryReported) for contract in publisher.published)
    return publisher.published  # type: ignore[return-value]


def fields_at_fault(body: dict[str, Any]) -> list[str]:
    return [detail["field"] for detail in body["details"]]


# Twilio's status callback.


async def test_a_delivered_sms_callback_publishes_a_delivered_receipt(
    client: TestClient, publisher: RecordingPublisher
) -> None:
    response = await client.post(SMS_STATUS, params={"message_id": str(OURS)}, data=TWILIO_DELIVERED)

    assert response.status == 200
    assert await response.json() == {"published": 1}
    (receipt,) = receipts(publisher)
    assert (receipt.message_id, receipt.channel, receipt.provider, receipt.provider_message_id) == (
        OURS,
        Channel.SMS,
        SMS_PROVIDER,
        "SM0123456789abcdef",
    )
    assert (receipt.status, receipt.error) == (MessageStatus.DELIVERED, None)
    assert receipt.routing_key == "receipt.sms"
    assert str(receipt.correlation_id) == response.headers["X-Correlation-ID"]


@pytest.mark.parametrize(
    ("status", "error_code", "error"),
    [("undelivered", "30003", "error 30003"), ("failed", "30008", "error 30008"), ("undelivered", None, "undelivered")],
)
async def test_an_undelivered_or_failed_sms_callback_publishes_a_failed_receipt_with_its_error_code(
    client: TestClient, publisher: RecordingPublisher, status: str, error_code: str | None, error: str
) -> None:
    form = {**TWILIO_DELIVERED, "MessageStatus": status} | ({"ErrorCode": error_code} if error_code else {})

    response = await client.post(SMS_STATUS, params={"message_id": str(OURS)}, data=form)

    assert response.status == 200
    (receipt,) = receipts(publisher)
    assert (receipt.status, receipt.error) == (MessageStatus.FAILED, error)


async def test_an_sms_callback_is_also_taken_as_json(client: TestClient, publisher: RecordingPublisher) -> None:
    body = {**TWILIO_DELIVERED, "MessageStatus": "undelivered", "ErrorCode": 30003}

    response = await client.post(SMS_STATUS, params={"message_id": str(OURS)}, json=body)

    assert response.status == 200
    (receipt,) = receipts(publisher)
    assert (receipt.message_id, receipt.status, receipt.error) == (OURS, MessageStatus.FAILED, "error 30003")


@pytest.mark.parametrize("status", ["accepted", "queued", "sending", "sent", "scheduled", "read", "something-new"])
async def test_an_intermediate_sms_status_is_acknowledged_and_publishes_nothing(
    client: TestClient, publisher: RecordingPublisher, status: str
) -> None:
    form = {**TWILIO_DELIVERED, "MessageStatus": status}

    response = await client.post(SMS_STATUS, params={"message_id": str(OURS)}, data=form)

    assert response.status == 200
    assert await response.json() == {"published": 0}
    assert publisher.published == []


@pytest.mark.parametrize(
    ("query", "form", "fields"),
    [
        ({}, TWILIO_DELIVERED, ["message_id"]),
        ({"message_id": "not-a-uuid"}, TWILIO_DELIVERED, ["message_id"]),
        ({"message_id": str(OURS)}, {"MessageStatus": "delivered"}, ["MessageSid"]),
        ({"message_id": str(OURS)}, {"MessageSid": "SM1"}, ["MessageStatus"]),
        ({"message_id": str(OURS)}, {"MessageSid": "SM1", "MessageStatus": ""}, ["MessageStatus"]),
        ({"message_id": str(OURS)}, {"MessageSid": "SM\x001", "MessageStatus": "delivered"}, ["MessageSid"]),
    ],
)
async def test_an_sms_callback_missing_or_mangling_a_field_is_a_422_naming_it(
    client: TestClient,
    publisher: RecordingPublisher,
    query: dict[str, str],
    form: dict[str, str],
    fields: list[str],
) -> None:
    response = await client.post(SMS_STATUS, params=query, data=form)

    assert response.status == 422
    body = await response.json()
    assert body["error"] == "invalid_request"
    assert fields_at_fault(body) == fields
    assert publisher.published == []


async def test_an_sms_callback_of_malformed_json_is_a_400(client: TestClient, publisher: RecordingPublisher) -> None:
    response = await client.post(
        SMS_STATUS, params={"message_id": str(OURS)}, data=b"{nope", headers={"Content-Type": "application/json"}
    )

    assert response.status == 400
    assert (await response.json())["error"] == "malformed_request"
    assert publisher.published == []


# SendGrid's event webhook.


async def test_email_events_publish_a_receipt_for_each_final_one_of_ours(
    client: TestClient, publisher: RecordingPublisher
) -> None:
    bounced = uuid.uuid4()
    events = [
        {**SENDGRID_DELIVERED, "event": "processed"},
        SENDGRID_DELIVERED,
        {**SENDGRID_DELIVERED, "event": "open", "useragent": "Mozilla/5.0"},
        {**SENDGRID_DELIVERED, "event": "bounce", "message_id": str(bounced), "reason": "550 5.1.1 no such user"},
        {**SENDGRID_DELIVERED, "event": "dropped", "reason": "Bounced Address"},
        {**SENDGRID_DELIVERED, "event": "deferred", "reason": "421 try later"},
        # Mail some other system sent from the account: not ours, whatever else it holds.
        {"event": "delivered", "sg_message_id": "other", "timestamp": "whenever"},
    ]

    response = await client.post(EMAIL_STATUS, json=events)

    assert response.status == 200
    assert await response.json() == {"published": 3}
    assert [(r.message_id, r.status, r.error) for r in receipts(publisher)] == [
        (OURS, MessageStatus.DELIVERED, None),
        (bounced, MessageStatus.FAILED, "550 5.1.1 no such user"),
        (OURS, MessageStatus.FAILED, "Bounced Address"),
    ]
    first = receipts(publisher)[0]
    assert (first.channel, first.provider, first.provider_message_id) == (
        Channel.EMAIL,
        EMAIL_PROVIDER,
        SENDGRID_DELIVERED["sg_message_id"],
    )
    # When the provider says it happened, not when the webhook arrived.
    assert first.occurred_at == datetime(2024, 11, 1, 14, 0, tzinfo=UTC)
    assert first.routing_key == "receipt.email"


async def test_email_events_none_of_them_final_are_acknowledged_and_publish_nothing(
    client: TestClient, publisher: RecordingPublisher
) -> None:
    response = await client.post(EMAIL_STATUS, json=[{**SENDGRID_DELIVERED, "event": "click"}])

    assert response.status == 200
    assert await response.json() == {"published": 0}
    assert publisher.published == []


@pytest.mark.parametrize(
    ("events", "fields"),
    [
        ([SENDGRID_DELIVERED, {**SENDGRID_DELIVERED, "message_id": "not-a-uuid"}], ["1.message_id"]),
        ([{key: value for key, value in SENDGRID_DELIVERED.items() if key != "event"}], ["0.event"]),
        ([{**SENDGRID_DELIVERED, "sg_message_id": ""}], ["0.sg_message_id"]),
        (
            [{**SENDGRID_DELIVERED, "timestamp": "yesterday"}, {**SENDGRID_DELIVERED, "timestamp": -1}],
            ["0.timestamp", "1.timestamp"],
        ),
        ([{**SENDGRID_DELIVERED, "reason": "nul\x00"}], ["0.reason"]),
        ([SENDGRID_DELIVERED, "delivered"], ["1"]),
        (SENDGRID_DELIVERED, ["request"]),
    ],
)
async def test_an_invalid_email_event_of_ours_is_a_422_naming_its_index_and_field(
    client: TestClient, publisher: RecordingPublisher, events: Any, fields: list[str]
) -> None:
    response = await client.post(EMAIL_STATUS, json=events)

    assert response.status == 422
    assert fields_at_fault(await response.json()) == fields
    # Nothing of a batch is published unless all of it is valid: the provider retries it whole.
    assert publisher.published == []


async def test_a_receipt_the_broker_did_not_confirm_is_a_503_for_the_provider_to_retry(
    client: TestClient, publisher: RecordingPublisher
) -> None:
    publisher.fail = True

    sms = await client.post(SMS_STATUS, params={"message_id": str(OURS)}, data=TWILIO_DELIVERED)
    email = await client.post(EMAIL_STATUS, json=[SENDGRID_DELIVERED])

    assert (sms.status, email.status) == (503, 503)
    assert (await sms.json())["error"] == "service_unavailable"
