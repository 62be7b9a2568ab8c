"""A conversation is its set of participants, whoever wrote to whom."""

from datetime import UTC, datetime

from common.contracts import Channel, MessageContent
from conversation_service.schema import participant_key
from conversation_service.writes import participants_of


def _content(from_address: str, to_address: str) -> MessageContent:
    return MessageContent(
        channel=Channel.SMS,
        from_address=from_address,
        to_address=to_address,
        body="hi",
        timestamp=datetime(2024, 11, 1, 14, tzinfo=UTC),
    )


def test_both_directions_between_two_addresses_are_one_conversation() -> None:
    there = participants_of(_content("+18045551234", "+12016661234"))
    back = participants_of(_content("+12016661234", "+18045551234"))

    assert there == back == ["+12016661234", "+18045551234"]
    assert participant_key(there) == participant_key(back)


def test_a_note_to_oneself_has_a_single_participant() -> None:
    assert participants_of(_content("+12016661234", "+12016661234")) == ["+12016661234"]


def test_different_pairs_get_different_keys() -> None:
    assert participant_key(["+12016661234", "+18045551234"]) != participant_key(["+12016661234", "+18045559999"])
