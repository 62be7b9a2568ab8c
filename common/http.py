"""The one error middleware every HTTP app uses: views raise domain errors, this turns them into JSON."""

import logging
import math
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import NotRequired

from aiohttp import web
from pydantic import ValidationError
from typing_extensions import TypedDict

from common.broker import BrokerUnavailable, QueueFull
from common.errors import (
    Conflict,
    DomainError,
    ErrorDetail,
    Forbidden,
    InvalidRequest,
    MalformedRequest,
    NotFound,
    RateLimited,
    ServiceUnavailable,
    Unauthorized,
    UnsupportedMediaType,
)

log = logging.getLogger(__name__)


class ErrorBody(TypedDict):
    error: str
    message: str
    details: NotRequired[list[ErrorDetail]]


# What each domain error means on the wire; a subclass takes its nearest listed ancestor's status.
_STATUS: dict[type[DomainError], int] = {
    MalformedRequest: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    UnsupportedMediaType: 415,
    InvalidRequest: 422,
    RateLimited: 429,
    ServiceUnavailable: 503,
}


def status_of(error: DomainError) -> int:
    return next((_STATUS[kind] for kind in type(error).__mro__ if kind in _STATUS), 500)


def _error_headers(error: DomainError) -> dict[str, str]:
    if isinstance(error, Unauthorized):
        return {"WWW-Authenticate": "Bearer"}
    if isinstance(error, RateLimited):
        # Whole seconds, rounded up: a client that waits exactly that long finds a token.
        return {"Retry-After": str(max(1, math.ceil(error.retry_after_seconds)))}
    return {}


def validation_details(error: ValidationError) -> list[ErrorDetail]:
    """One entry per field at fault, with the field's dotted path and the reason in words."""
    return [
        {
            "field": ".".join(str(part) for part in item["loc"]) or "request",
            "reason": item["msg"].removeprefix("Value error, "),
        }
        for item in error.errors(include_url=False, include_context=False)
    ]


@contextmanager
def request_validation() -> Iterator[None]:
    """Turn a validation failure of the client's input into its 4xx; use it around input parsing only,
    so that a model the service builds itself and gets wrong is a 500, not the client's fault."""
    try:
        yield
    except ValidationError as error:
        if all(item["type"] == "json_invalid" for item in error.errors()):
            raise MalformedRequest("request body is not valid JSON", validation_details(error)) from error
        raise InvalidRequest("request is invalid", validation_details(error)) from error


def error_body(code: str, message: str, details: list[ErrorDetail] | None = None) -> ErrorBody:
    body: ErrorBody = {"error": code, "message": message}
    if details:
        body["details"] = details
    return body


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except DomainError as error:
        return web.json_response(
            error_body(error.code, error.message, error.details), status=status_of(error), headers=_error_headers(error)
        )
    except BrokerUnavailable as error:
        log.warning("broker unavailable", extra={"path": request.path, "reason": str(error)})
        return web.json_response(
            error_body(
                "service_unavailable",
                "the message queue is full; retry later"
                if isinstance(error, QueueFull)
                else "the message broker did not accept the message; retry later",
            ),
            status=503,
            headers={"Retry-After": str(max(1, math.ceil(error.retry_after_seconds)))},
        )
    except web.HTTPException as error:
        if error.empty_body or error.status < 400:
            raise
        code = error.reason.lower().replace(" ", "_")
        # A body over the size cap is the client's input at fault, so it is named like any other.
        too_large = error.status == web.HTTPRequestEntityTooLarge.status_code
        details: list[ErrorDetail] | None = [{"field": "request", "reason": error.text}] if too_large else None
        return web.json_response(
            error_body(code, error.text or error.reason, details),
            status=error.status,
            headers={k: v for k, v in error.headers.items() if k.lower() == "allow"},
        )
    except Exception:
        log.exception("unhandled error", extra={"path": request.path, "method": request.method})
        return web.json_response(error_body("internal_error", "internal server error"), status=500)
