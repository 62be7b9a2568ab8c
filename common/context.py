"""What every log line of a request or a delivery needs, set once where it comes in.

The gateway's middleware sets the correlation id and the account on the way in; the consumer adapter
sets the correlation id of each delivery. Each request and each delivery runs in a task of its own,
so each sees only its own values. `ContextFilter` adds them to every log record.
"""

import logging
import uuid
from contextvars import ContextVar

correlation_id: ContextVar[uuid.UUID | None] = ContextVar("correlation_id", default=None)
account_id: ContextVar[uuid.UUID | None] = ContextVar("account_id", default=None)


class ContextFilter(logging.Filter):
    """Adds `correlation_id` and `account_id` to a record that does not name them itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, variable in (("correlation_id", correlation_id), ("account_id", account_id)):
            value = variable.get()
            if value is not None and not hasattr(record, name):
                setattr(record, name, str(value))
        return True


def current_account() -> uuid.UUID:
    """The account the request in hand acts for; set by the gateway's authentication before any view."""
    account = account_id.get()
    if account is None:
        raise RuntimeError("no account in context: the authentication middleware did not run")
    return account


def current_correlation_id() -> uuid.UUID:
    """The correlation id of the request or delivery in hand. Outside one (a replay, a test calling a
    handler directly) each call starts a trail of its own."""
    return correlation_id.get() or uuid.uuid4()
