"""HTTP adapters: parse and validate, call the intake or the reader, answer JSON. Errors are raised."""

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import quote

from aiohttp import web
from pydantic import TypeAdapter

from common.errors import InvalidRequest
from common.http import request_validation
from common.idempotency import MAX_IDEMPOTENCY_KEY_LENGTH
from gateway.auth import FORM_WEBHOOK, READ, SEND, WEBHOOK, add_route
from gateway.conversation_client import CONVERSATION_SERVICE
from gateway.handlers import AcceptedMessage, MessageIntake
from gateway.requests import (
    DeliveryReport,
    EmailWebhook,
    SendEmailRequest,
    SendRequest,
    SendSmsRequest,
    SmsStatusCallback,
    SmsWebhook,
    ValidationRules,
    Webhook,
    email_status_events_adapter,
    send_request_adapter,
    webhook_adapter,
)

MESSAGE_INTAKE = web.AppKey("message_intake", MessageIntake)
VALIDATION_RULES = web.AppKey("validation_rules", ValidationRules)

REPLAYED_HEADER = "Idempotent-Replayed"

ModelT = TypeVar("ModelT")
View = Callable[[web.Request], Awaitable[web.Response]]


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


def webhook_view(adapter: TypeAdapter[Any]) -> View:
    async def view(request: web.Request) -> web.Response:
        webhook: Webhook = await _validated(request, adapter)
        return _accepted(await request.app[MESSAGE_INTAKE].receive(webhook))

    return view


_json_object: TypeAdapter[dict[str, Any]] = TypeAdapter(dict[str, Any])


async def _form_or_json(request: web.Request) -> dict[str, Any]:
    """Twilio posts a form; the same fields as a JSON object are taken too."""
    if request.content_type == "application/json":
        return await _validated(request, _json_object)
    return dict(await request.post())


async def sms_status_webhook(request: web.Request) -> web.Response:
    # Our message id is in the query string of the callback URL the channel service gave the provider.
    fields = {**await _form_or_json(request), **request.query}
    with request_validation():
        report = SmsStatusCallback.model_validate(fields)
    return await _report_deliveries(request, [report])


async def email_status_webhook(request: web.Request) -> web.Response:
    events = await _validated(request, email_status_events_adapter)
    return await _report_deliveries(request, [event for event in events if event is not None])


async def _report_deliveries(request: web.Request, reports: list[DeliveryReport]) -> web.Response:
    published = await request.app[MESSAGE_INTAKE].report_deliveries(reports)
    return web.json_response({"published": published})


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
    add_route(app, "POST", "/api/webhooks/sms", webhook_view(TypeAdapter(SmsWebhook)), WEBHOOK)
    add_route(app, "POST", "/api/webhooks/email", webhook_view(TypeAdapter(EmailWebhook)), WEBHOOK)
    add_route(app, "POST", "/api/webhooks/sms/status", sms_status_webhook, FORM_WEBHOOK)
    add_route(app, "POST", "/api/webhooks/email/status", email_status_webhook, WEBHOOK)
    add_route(app, "GET", "/api/conversations", relay_read("/conversations"), READ)
    add_route(
        app,
        "GET",
        "/api/conversations/{conversation_id}/messages",
        relay_read("/conversations/{conversation_id}/messages"),
        READ,
    )
    add_route(app, "GET", "/api/messages/{message_id}", relay_read("/messages/{message_id}"), READ)
    # Aliases kept for clients of the earlier Django service: `type` picks the channel.
    add_route(app, "POST", "/messages/outbound/", send_view(send_request_adapter), SEND)
    add_route(app, "POST", "/messages/inbound/", webhook_view(webhook_adapter), WEBHOOK)
