"""Domain errors: what went wrong, in words a client can act on, with no HTTP or AMQP in sight.

Handlers, repositories and clients raise these; the one error middleware (`common.http`) decides
what each means on the wire.
"""

from typing_extensions import TypedDict


# TypedDicts rather than models: the bodies stay plain dicts, and the gateway's OpenAPI description
# derives the error schema from these (pydantic reads TypedDicts from typing_extensions only, on 3.11).
class ErrorDetail(TypedDict):
    field: str
    reason: str


class DomainError(Exception):
    code = "internal_error"

    def __init__(self, message: str, details: list[ErrorDetail] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class MalformedRequest(DomainError):
    code = "malformed_request"


class InvalidRequest(DomainError):
    code = "invalid_request"


class Unauthorized(DomainError):
    """No credentials, or credentials that identify nobody (unknown, revoked, expired)."""

    code = "unauthorized"


class Forbidden(DomainError):
    """The caller is known but may not do this: a scope it lacks, an address it does not own."""

    code = "forbidden"


class NotFound(DomainError):
    code = "not_found"


class Conflict(DomainError):
    code = "conflict"


class UnsupportedMediaType(DomainError):
    code = "unsupported_media_type"


class RateLimited(DomainError):
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_seconds: float) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class ServiceUnavailable(DomainError):
    """A dependency (the database, the broker, another service) cannot be reached now; retry later."""

    code = "service_unavailable"
