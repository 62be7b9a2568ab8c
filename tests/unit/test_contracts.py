"""The bus contracts: what crosses between services, and how it is keyed and routed."""

import uuid

import pytest
from pydantic import ValidationError

from common.contracts import (
    Channel,
    MessageReceived,
    MessageStatus,
    MessageStatusChanged,
    SendMessage,
    inbound_message_id,
    message_event_adapter,
)
from tests.factories import message_received, send_message, status_changed


@pytest.mark.parametrize("channel", list(Channel))
def test_each_contract_routes_by_its_channel(channel: Channel) -> None:
    command = send_message(channel)

    assert command.routing_key == f"outbound.{channel}"
    assert message_received(channel).routing_key == f"inbound.{channel}"
    assert status_changed(command).routing_key == f"status.{channel}"


def test_every_contract_survives_the_wire_and_comes_back_as_its_own_kind() -> None:
    command = send_message(Channel.MMS, attachments=("https://example.com/a.png",))
    for contract in (command, message_received(Channel.EMAIL), status_changed(command, MessageStatus.FAILED)):
        parsed = message_event_adapter.validate_json(contract.model_dump_json())

        assert type(parsed) is type(contract)
        assert parsed == contract
        assert parsed.schema_version == 1


def test_contracts_are_frozen_and_refuse_unknown_fields() -> None:
    command = send_message()
    document = command.model_dump(mode="json")

    with pytest.raises(ValidationError):
        command.message_id = uuid.uuid4()  # type: ignore[misc]
    with pytest.raises(ValidationError, match="extra"):
        SendMessage.model_validate({**document, "priority": "high"})
    with pytest.raises(ValidationError):
        message_event_adapter.validate_python({**document, "kind": "something_else"})


def test_a_status_event_only_reports_outcomes() -> None:
    command = send_message()
    document = status_changed(command).model_dump(mode="json")

    with pytest.raises(ValidationError):
        MessageStatusChanged.model_validate({**document, "status": "queued"})
    with pytest.raises(ValidationError):
        MessageStatusChanged.model_validate({**document, "attempts": -1})


def test_message_ids_are_stable_where_a_repeat_must_be_the_same_message() -> None:
    assert inbound_message_id("sms-provider", "message-1") == inbound_message_id("sms-provider", "message-1")
    assert inbound_message_id("sms-provider", "message-1") != inbound_message_id("email-provider", "message-1")


def test_a_received_message_derives_its_id_from_the_provider_id() -> None:
    event = message_received(provider_message_id="abc")

    assert isinstance(event, MessageReceived)
    assert event.message_id == inbound_message_id(event.provider, "abc")
