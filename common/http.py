"""The one error middleware every HTTP app uses: views raise, this turns it into JSON."""

import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from common.broker import BrokerUnavailable

log = logging.getLogger(__name__)


class ServiceError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str, details: list[dict[str, Any]] | None = None) -> None:
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


def validation_details(error: ValidationError) -> list[dict[str, Any]]:
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


def error_body(code: str, message: str, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"error": code, "message": message}
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
        return web.json_response(
            error_body(code, error.text or error.reason),
            status=error.status,
            headers={k: v for k, v in error.headers.items() if k.lower() == "allow"},
        )
    except Exception:
        log.exception("unhandled error", extra={"path": request.path, "method": request.method})
        return web.json_response(error_body("internal_error", "internal server error"), status=500)
