"""HTTP adapters: parse and validate, call the intake or the reader, answer JSON. Errors are raised."""

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import quote

from aiohttp import web
from pydantic import TypeAdapter

from common.context import current_correlation_id
from common.contracts import utcnow
from common.errors import InvalidRequest
from common.http import request_validation
from common.idempotency import MAX_IDEMPOTENCY_KEY_LENGTH
from gateway.auth import FORM_WEBHOOK, READ, SEND, WEBHOOK, add_route
from gateway.conversation_client import CONVERSATION_SERVICE
from gateway.handlers import AcceptedMessage, MessageIntake
from gateway.quarantine import QUARANTINE, QuarantinedWebhook
from gateway.requests import (
    SendEmailRequest,
    SendRequest,
    SendSmsRequest,
    ValidationRules,
    send_request_adapter,
)
from gateway.settings import GatewaySettings
from gateway.signatures import SignatureRefused
from gateway.webhooks import SMS_STATUS, WEBHOOK_PATHS, WebhookRequest, Webhooks

log = logging.getLogger(__name__)

MESSAGE_INTAKE = web.AppKey("message_intake", MessageIntake)
WEBHOOKS = web.AppKey("webhooks", Webhooks)
VALIDATION_RULES = web.AppKey("validation_rules", ValidationRules)

REPLAYED_HEADER = "Idempotent-Replayed"

ModelT = TypeVar("ModelT")
View = Callable[[web.Request], Awaitable[web.Response]]


def _idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    # Printable ASCII only: other bytes reach us as lone surrogates, which no store or JSON can carry.
    if key is not None and not (0 < len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH and all(" " <= c <= "~" for c in key)):
        raise InvalidRequest(
            "invalid Idempotency-Key header",
            [
                {
                    "field": "Idempotency-Key",
                    "reason": f"must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} printable ASCII characters",
                }
            ],
        )
    return key


async def _validated(request: web.Request, adapter: TypeAdapter[ModelT]) -> ModelT:
    raw = await request.read()
    with request_validation():
        return adapter.validate_json(raw, context=request.app[VALIDATION_RULES])


def _accepted(message: AcceptedMessage) -> web.Response:
    return web.json_response(text=message.model_dump_json(by_alias=True), status=202)


def send_view(adapter: TypeAdapter[Any]) -> View:
    async def view(request: web.Request) -> web.Response:
        send_request: SendRequest = await _validated(request, adapter)
        accepted = await request.app[MESSAGE_INTAKE].send(send_request, idempotency_key=_idempotency_key(request))
        response = _accepted(accepted.message)
        if accepted.replayed:
            response.headers[REPLAYED_HEADER] = "true"
        return response

    return view


def webhook_view(webhook: str) -> View:
    """A provider webhook: its raw request through `Webhooks`; one refused for its signature is kept in
    the quarantine (or, if it cannot be kept, a 503 the provider retries) before it is answered 403."""

    async def view(request: web.Request) -> web.Response:
        received = await _webhook_request(request, webhook)
        correlation_id = current_correlation_id()
        try:
            answer = await request.app[WEBHOOKS].handle(received, correlation_id)
        except SignatureRefused as refusal:
            entry = QuarantinedWebhook.of(received, refusal.reason, correlation_id)
            await request.app[QUARANTINE].keep(entry)
            log.warning(
                "webhook refused and quarantined",
                extra={"webhook": webhook, "reason": refusal.reason, "quarantine_id": str(entry.event_id)},
            )
            raise
        return web.Response(text=answer.body, status=answer.status, content_type="application/json")

    return view


def _kept(value: str) -> str:
    # A header byte that is not UTF-8 reaches us as a lone surrogate, which JSON cannot carry; it could
    # be part of no valid signature, so a replacement character loses nothing.
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


async def _webhook_request(request: web.Request, webhook: str) -> WebhookRequest:
    return WebhookRequest(
        webhook=webhook,
        method=request.method,
        origin=request.app[WEBHOOKS].origin_for(f"{request.scheme}://{_kept(request.host)}"),
        path_qs=_kept(request.raw_path),
        headers=tuple((_kept(name), _kept(value)) for name, value in request.headers.items()),
        body=await request.read(),
        received_at=utcnow(),
    )


def webhooks_ctx(settings: GatewaySettings) -> Callable[[web.Application], AsyncIterator[None]]:
    """The webhook path, on the intake set up before it."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        app[WEBHOOKS] = Webhooks.from_settings(app[MESSAGE_INTAKE], settings)
        yield

    return ctx


def relay_read(upstream_path: str) -> View:
    """Forward to `upstream_path` for the request's account, its `{name}`s filled from the route with
    each segment quoted whole, so a crafted id cannot steer the request to another upstream route."""

    async def view(request: web.Request) -> web.Response:
        segments = {name: quote(value, safe="") for name, value in request.match_info.items()}
        answer = await request.app[CONVERSATION_SERVICE].read(upstream_path.format(**segments), request.query)
        return web.Response(body=answer.body, status=answer.status, content_type=answer.content_type)

    return view


def add_routes(app: web.Application) -> None:
    add_route(app, "POST", "/api/messages/sms", send_view(TypeAdapter(SendSmsRequest)), SEND)
    add_route(app, "POST", "/api/messages/email", send_view(TypeAdapter(SendEmailRequest)), SEND)
    for webhook in WEBHOOK_PATHS:
        # Twilio's status callback is a form (or the same fields as JSON); the other webhooks are JSON.
        add_route(app, "POST", webhook, webhook_view(webhook), FORM_WEBHOOK if webhook == SMS_STATUS else WEBHOOK)
    add_route(app, "GET", "/api/conversations", relay_read("/conversations"), READ)
    add_route(
        app,
        "GET",
        "/api/conversations/{conversation_id}/messages",
        relay_read("/conversations/{conversation_id}/messages"),
        READ,
    )
    add_route(app, "GET", "/api/messages/{message_id}", relay_read("/messages/{message_id}"), READ)
    # Alias kept for clients of the earlier Django service: `type` picks the channel (the inbound
    # one is among the webhooks).
    add_route(app, "POST", "/messages/outbound/", send_view(send_request_adapter), SEND)
