"""What every process counts; common/health.py serves it as Prometheus text at `GET /metrics`.

Nothing here knows of HTTP or AMQP. Each app has a registry of its own (`app[METRICS]`), so two
apps in one test process, or one app started twice, never share a count. The shared adapters count
for everyone: the HTTP middleware, the publisher (after the broker confirmed), the consumer, the
provider client and the broker connection; a handler counts only what only it knows (a write's
outcome).
"""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector, ProcessCollector

from common.contracts import (
    Contract,
    DeliveryReported,
    MessageReceived,
    MessageStatus,
    MessageStatusChanged,
    SendMessage,
)


class Metrics:
    """Every metric of one app, on its own registry; a metric a process never touches is not exported."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # process_start_time_seconds is what tells an operator that a supervisor restarted the process.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        registry = self.registry
        self.http_requests = Counter(
            "http_requests",
            "HTTP requests answered, by route pattern",
            ["method", "route", "status"],
            registry=registry,
        )
        self.http_request_duration = Histogram(
            "http_request_duration_seconds", "Time to answer an HTTP request", ["method", "route"], registry=registry
        )
        self.messages_accepted = Counter(
            "messaging_messages_accepted",
            "Messages the broker confirmed for a client's send (outbound) or a provider's webhook (inbound)",
            ["channel", "direction"],
            registry=registry,
        )
        self.messages_sent = Counter(
            "messaging_messages_sent",
            "Sends a provider accepted, published as status events",
            ["channel"],
            registry=registry,
        )
        self.messages_delivered = Counter(
            "messaging_messages_delivered", "Delivery receipts reporting a delivery", ["channel"], registry=registry
        )
        self.messages_failed = Counter(
            "messaging_messages_failed",
            "Messages that failed: the provider refused the send (stage=send) or reported it undelivered "
            "(stage=delivery)",
            ["channel", "stage"],
            registry=registry,
        )
        self.events_stored = Counter(
            "messaging_events_stored",
            "Message events written to PostgreSQL, by event (outbound, inbound, status, receipt) and outcome",
            ["event", "channel", "outcome"],
            registry=registry,
        )
        self.provider_attempts = Counter(
            "messaging_provider_attempts", "HTTP attempts at the provider, by outcome", ["outcome"], registry=registry
        )
        self.consumer_deliveries = Counter(
            "messaging_consumer_deliveries",
            "Deliveries a consumer finished, by what became of them (acked, requeued, dead_lettered)",
            ["queue", "outcome"],
            registry=registry,
        )
        self.consumer_redeliveries = Counter(
            "messaging_consumer_redeliveries",
            "Deliveries of a message the broker had handed out before",
            ["queue"],
            registry=registry,
        )
        self.consumer_in_flight = Gauge(
            "messaging_consumer_in_flight", "Deliveries being worked on now", ["queue"], registry=registry
        )
        self.dead_letters = Counter(
            "messaging_dead_letters",
            "Messages a consumer sent to the dead-letter queue, by why (contract: it does not parse; "
            "handler: its handler failed on the last delivery allowed)",
            ["queue", "reason"],
            registry=registry,
        )
        self.broker_reconnects = Counter(
            "messaging_broker_reconnects", "Times the broker connection was lost and made again", registry=registry
        )
        self.publish_bundle_size = Histogram(
            "messaging_publish_bundle_size",
            "Contracts published in one message (a bundle, or 1 for a message of its own); its count is the publishes",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=registry,
        )
        self.write_batch_size = Histogram(
            "messaging_write_batch_size",
            "Message events conversation_service wrote in one transaction; its count is the transactions",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=registry,
        )
        self.database_retries = Counter(
            "messaging_database_retries",
            "Database operations tried again after the connection was lost (the pool reconnects for them)",
            ["operation"],
            registry=registry,
        )

    def count_published(self, contract: Contract) -> None:
        """A contract the broker confirmed: what it means for the message it is about."""
        channel = channel_of(contract)
        match contract:
            case SendMessage():
                self.messages_accepted.labels(channel=channel, direction="outbound").inc()
            case MessageReceived():
                self.messages_accepted.labels(channel=channel, direction="inbound").inc()
            case MessageStatusChanged(status=MessageStatus.SENT):
                self.messages_sent.labels(channel=channel).inc()
            case MessageStatusChanged(status=MessageStatus.FAILED):
                self.messages_failed.labels(channel=channel, stage="send").inc()
            case DeliveryReported(status=MessageStatus.DELIVERED):
                self.messages_delivered.labels(channel=channel).inc()
            case DeliveryReported(status=MessageStatus.FAILED):
                self.messages_failed.labels(channel=channel, stage="delivery").inc()

    def count_stored(self, contract: Contract, outcome: str) -> None:
        event = contract.routing_key.split(".", 1)[0]
        self.events_stored.labels(event=event, channel=channel_of(contract), outcome=outcome).inc()


def channel_of(contract: Contract) -> str:
    """Every routing key ends in the channel: `outbound.sms`, `receipt.email`."""
    return contract.routing_key.rsplit(".", 1)[-1]
