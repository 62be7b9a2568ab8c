"""Several contracts in one AMQP message: a bundle, and how one is made and taken apart.

A confirmed publish costs the publisher, the broker and the consumer far more than the bytes it
carries, so a publisher under load sends the contracts that wait while its earlier publishes are
confirmed as one message (common.broker.Publisher). Its body is their bodies, as each would be
published alone, a line each: JSON never holds a raw line break, and a line is parsed exactly as a
message of its own would be. A contract that waits alone still goes as a message of its own.

A consumer takes a bundle apart (common.broker.Consumer) and handles each contract as if it had come
alone; one that fails is put back on the queue alone, so a bundle never fails or dead-letters the
contracts it happened to travel with.
"""

import uuid
from collections.abc import Sequence

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from common.contracts import Contract, utcnow

BUNDLE_TYPE = "bundle"
BUNDLE_CONTENT_TYPE = "application/x-ndjson"
# How many contracts a bundle holds, for whoever reads the queue with a management tool.
BUNDLE_SIZE_HEADER = "bundle-size"


def message_of(contract: Contract) -> aio_pika.Message:
    """A contract as a message of its own."""
    return aio_pika.Message(
        body=contract.model_dump_json().encode(),
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=str(contract.event_id),
        correlation_id=str(contract.correlation_id),
        type=contract.kind,
        timestamp=contract.occurred_at,
    )


def bundle_of(contracts: Sequence[Contract]) -> aio_pika.Message:
    """Two or more contracts of one routing key as one message."""
    return aio_pika.Message(
        body=b"\n".join(contract.model_dump_json().encode() for contract in contracts),
        content_type=BUNDLE_CONTENT_TYPE,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=str(uuid.uuid4()),
        type=BUNDLE_TYPE,
        headers={BUNDLE_SIZE_HEADER: len(contracts)},
        timestamp=utcnow(),
    )


def is_bundle(message: AbstractIncomingMessage) -> bool:
    return message.type == BUNDLE_TYPE


def bodies_in(bundle: bytes) -> list[bytes]:
    """Each bundled contract's body, as it would have been published alone."""
    return bundle.split(b"\n")


def unparsed_message(body: bytes) -> aio_pika.Message:
    """A bundled body that does not parse, as a message of its own for the dead-letter queue."""
    return aio_pika.Message(
        body=body,
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=str(uuid.uuid4()),
    )
