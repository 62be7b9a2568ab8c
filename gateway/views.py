"""HTTP adapters: parse and validate, call the intake or the reader, answer JSON. Errors are raised."""

import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import quote

from aiohttp import web
from pydantic import TypeAdapter

from common.http import InvalidRequest, request_validation
from gateway.handlers import AcceptedMessage, MessageIntake
from gateway.reads import CONVERSATION_READER
from gateway.requests import (
    EmailWebhook,
    SendEmailRequest,
    SendRequest,
    SendSmsRequest,
    SmsWebhook,
    ValidationRules,
    Webhook,
    send_request_adapter,
    webhook_adapter,
)

MESSAGE_INTAKE = web.AppKey("message_intake", MessageIntake)
VALIDATION_RULES = web.AppKey("validation_rules", ValidationRules)

MAX_IDEMPOTENCY_KEY_LENGTH = 255
CORRELATION_HEADER = "X-Correlation-ID"

ModelT = TypeVar("ModelT")
View = Callable[[web.Request], Awaitable[web.Response]]


def _correlation_id(request: web.Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.headers[CORRELATION_HEADER])
    except (KeyError, ValueError):
        return uuid.uuid4()


def _idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 0 < len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH:
        raise InvalidRequest(
            "invalid Idempotency-Key header",
            [{"field": "Idempotency-Key", "reason": f"must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} characters"}],
        )
    return key


async def _validated(request: web.Request, adapter: TypeAdapter[ModelT]) -> ModelT:
    raw = await request.read()
    with request_validation():
        return adapter.validate_json(raw, context=request.app[VALIDATION_RULES])


def _accepted(message: AcceptedMessage, correlation_id: uuid.UUID) -> web.Response:
    return web.json_response(
        text=message.model_dump_json(by_alias=True),
        status=202,
        headers={CORRELATION_HEADER: str(correlation_id)},
    )


def send_view(adapter: TypeAdapter[Any]) -> View:
    async def view(request: web.Request) -> web.Response:
        send_request: SendRequest = await _validated(request, adapter)
        correlation_id = _correlation_id(request)
        accepted = await request.app[MESSAGE_INTAKE].send(
            send_request, idempotency_key=_idempotency_key(request), correlation_id=correlation_id
        )
        return _accepted(accepted, correlation_id)

    return view


def webhook_view(adapter: TypeAdapter[Any]) -> View:
    async def view(request: web.Request) -> web.Response:
        webhook: Webhook = await _validated(request, adapter)
        correlation_id = _correlation_id(request)
        accepted = await request.app[MESSAGE_INTAKE].receive(webhook, correlation_id=correlation_id)
        return _accepted(accepted, correlation_id)

    return view


def relay_read(upstream_path: str) -> View:
    """Forward to `upstream_path`, its `{name}`s filled from the route with each segment quoted whole,
    so a crafted id cannot steer the request to another upstream route."""

    async def view(request: web.Request) -> web.Response:
        segments = {name: quote(value, safe="") for name, value in request.match_info.items()}
        answer = await request.app[CONVERSATION_READER].get(upstream_path.format(**segments), request.query)
        return web.Response(body=answer.body, status=answer.status, content_type=answer.content_type)

    return view


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/messages/sms", send_view(TypeAdapter(SendSmsRequest)))
    app.router.add_post("/api/messages/email", send_view(TypeAdapter(SendEmailRequest)))
    app.router.add_post("/api/webhooks/sms", webhook_view(TypeAdapter(SmsWebhook)))
    app.router.add_post("/api/webhooks/email", webhook_view(TypeAdapter(EmailWebhook)))
    app.router.add_get("/api/conversations", relay_read("/conversations"))
    app.router.add_get(
        "/api/conversations/{conversation_id}/messages", relay_read("/conversations/{conversation_id}/messages")
    )
    app.router.add_get("/api/messages/{message_id}", relay_read("/messages/{message_id}"))
    # Aliases kept for clients of the earlier Django service: `type` picks the channel.
    app.router.add_post("/messages/outbound/", send_view(send_request_adapter))
    app.router.add_post("/messages/inbound/", webhook_view(webhook_adapter))
