"""Cursors: what a page hands out leads back to the same place; anything else is a 422 on `cursor`."""

import base64
from datetime import UTC, datetime

import pytest

from common.errors import InvalidRequest
from conversation_service.pagination import (
    ConversationPosition,
    MessagePosition,
    decode_cursor,
    encode_cursor,
)

AT = datetime(2024, 11, 1, 14, 0, 0, 123456, tzinfo=UTC)


def test_a_cursor_decodes_to_the_position_it_was_made_from() -> None:
    position = MessagePosition(timestamp=AT, seq=42)

    cursor = encode_cursor(position)

    assert decode_cursor(cursor, MessagePosition) == position
    assert cursor.isascii() and "=" not in cursor and "/" not in cursor and "+" not in cursor


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode()


@pytest.mark.parametrize(
    "cursor",
    [
        "not a cursor!",
        "é",
        _b64(b"not json"),
        _b64(b'{"timestamp": "2024-11-01T14:00:00Z"}'),
        _b64(b'{"timestamp": "2024-11-01T14:00:00", "seq": 1}'),
        _b64(b'{"timestamp": "2024-11-01T14:00:00Z", "seq": 99999999999999999999}'),
        encode_cursor(ConversationPosition(last_message_at=AT, id=1)),
    ],
    ids=["garbage", "non-ascii", "not-json", "missing-seq", "naive-time", "seq-too-big", "other-list"],
)
def test_a_cursor_this_list_did_not_hand_out_is_rejected_naming_the_field(cursor: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        decode_cursor(cursor, MessagePosition)

    assert raised.value.details == [{"field": "cursor", "reason": "not a cursor this list returned"}]
