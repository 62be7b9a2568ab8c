"""The one error middleware every HTTP app uses: views raise, this turns it into JSON."""

import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import NotRequired

from aiohttp import web
from pydantic import ValidationError
from typing_extensions import TypedDict

from common.broker import BrokerUnavailable

log = logging.getLogger(__name__)


# TypedDicts rather than models: the bodies stay plain dicts, and the gateway's OpenAPI description
# derives the error schema from these (pydantic reads TypedDicts from typing_extensions only, on 3.11).
class ErrorDetail(TypedDict):
    field: str
    reason: str


class ErrorBody(TypedDict):
    error: str
    message: str
    details: NotRequired[list[ErrorDetail]]


class ServiceError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str, details: list[ErrorDetail] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidRequest(ServiceError):
    status = 422
    code = "invalid_request"


class MalformedRequest(ServiceError):
    status = 400
    code = "malformed_request"


class NotFound(ServiceError):
    status = 404
    code = "not_found"


class ServiceUnavailable(ServiceError):
    status = 503
    code = "service_unavailable"


class Conflict(ServiceError):
    status = 409
    code = "conflict"


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
    except ServiceError as error:
        return web.json_response(error_body(error.code, error.message, error.details), status=error.status)
    except BrokerUnavailable as error:
        log.warning("broker unavailable", extra={"path": request.path, "reason": str(error)})
        return web.json_response(
            error_body("service_unavailable", "the message broker did not accept the message; retry later"),
            status=503,
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
