"""The public API's OpenAPI 3.1 description, and a docs page that renders it.

Every schema is derived from the model that validates a request or shapes an answer: the gateway's
request models and AcceptedMessage, the read API's contract in common.conversations (whose bodies the
gateway relays verbatim), its path and query models, and the error body of common.http. Each operation's
security is what its route declared to the perimeter (gateway.auth), so the description cannot promise
another scope than the one enforced. What is written here by hand is only what no model says: routes,
status codes and prose. A unit test holds the described routes to the ones the app registers.
"""

import json
from collections.abc import Iterable
from typing import Any

from aiohttp import web
from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import JsonSchemaMode

from common.accounts import Scope
from common.conversations import (
    ConversationList,
    ConversationPath,
    MessageDetail,
    MessageList,
    MessagePath,
    PageQuery,
)
from common.http import ErrorBody
from common.idempotency import MAX_IDEMPOTENCY_KEY_LENGTH
from common.settings import Profile
from gateway.auth import CORRELATION_HEADER, OPEN, ROUTE_ACCESS, Access, add_route
from gateway.handlers import AcceptedMessage
from gateway.requests import (
    EmailStatusEvent,
    EmailWebhook,
    SendEmailRequest,
    SendSmsRequest,
    SmsStatusCallback,
    SmsWebhook,
    send_request_adapter,
    webhook_adapter,
)
from gateway.settings import GatewaySettings
from gateway.views import REPLAYED_HEADER

OPENAPI_PATH = "/api/openapi.json"
DOCS_PATH = "/api/docs"
SECURITY_SCHEME = "apiKey"

JsonObject = dict[str, Any]

_SCHEMA_SOURCES: dict[str, tuple[Any, JsonSchemaMode]] = {
    "SendSmsRequest": (SendSmsRequest, "validation"),
    "SendEmailRequest": (SendEmailRequest, "validation"),
    "SmsWebhook": (SmsWebhook, "validation"),
    "EmailWebhook": (EmailWebhook, "validation"),
    "SmsStatusCallback": (SmsStatusCallback, "validation"),
    "EmailStatusEvent": (EmailStatusEvent, "validation"),
    "AcceptedMessage": (AcceptedMessage, "serialization"),
    "ConversationList": (ConversationList, "serialization"),
    "MessageList": (MessageList, "serialization"),
    "MessageDetail": (MessageDetail, "serialization"),
    "ErrorBody": (ErrorBody, "serialization"),
}
# The compatibility routes take either channel, picked by `type`; their schemas are the discriminated unions.
_UNION_SOURCES: dict[str, TypeAdapter[Any]] = {
    "SendRequest": send_request_adapter,
    "Webhook": webhook_adapter,
}


def _components() -> JsonObject:
    inputs = [(name, mode, TypeAdapter(source)) for name, (source, mode) in _SCHEMA_SOURCES.items()]
    inputs += [(name, "validation", adapter) for name, adapter in _UNION_SOURCES.items()]
    top_level, definitions = TypeAdapter.json_schemas(inputs, ref_template="#/components/schemas/{model}")
    schemas = dict(definitions.get("$defs", {}))
    # A union has no class of its own to be named after, so it comes back inline rather than as a $ref.
    for (name, _mode), schema in top_level.items():
        if "$ref" not in schema:
            schemas[name] = schema
    # The status callback's message_id comes in the query string, the rest of it in the form.
    callback = schemas["SmsStatusCallback"]
    callback["properties"] = {name: field for name, field in callback["properties"].items() if name != "message_id"}
    callback["required"] = [name for name in callback["required"] if name != "message_id"]
    return {"schemas": schemas}


def _ref(name: str) -> JsonObject:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: JsonObject) -> JsonObject:
    return {"application/json": {"schema": schema}}


def _error(description: str) -> JsonObject:
    return {"description": description, "content": _json(_ref("ErrorBody"))}


def _non_null(schema: JsonObject) -> JsonObject:
    """An optional field's schema without its `null`: a parameter is absent, never null."""
    [member] = [member for member in schema.get("anyOf", [schema]) if member.get("type") != "null"]
    return member


def _parameters(model: type[BaseModel], location: str, descriptions: dict[str, str] | None = None) -> list[JsonObject]:
    schema = model.model_json_schema()
    return [
        {
            "name": name,
            "in": location,
            "required": name in schema.get("required", ()),
            "schema": _non_null(field),
            **({"description": descriptions[name]} if descriptions and name in descriptions else {}),
        }
        for name, field in schema["properties"].items()
    ]


_CORRELATION_PARAMETER: JsonObject = {
    "name": CORRELATION_HEADER,
    "in": "header",
    "required": False,
    "description": "Follows the request through every service's logs; a new one is made when absent or not a UUID",
    "schema": {"type": "string"},
}
_IDEMPOTENCY_PARAMETER: JsonObject = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "The same key with the same body is the same message, sent once",
    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY_LENGTH},
}


def _intake(summary: str, description: str, request: str, *, deprecated: bool = False) -> JsonObject:
    operation: JsonObject = {
        "summary": summary,
        "description": description,
        "tags": ["messages"],
        "parameters": [_CORRELATION_PARAMETER],
        "requestBody": {"required": True, "content": _json(_ref(request))},
        "responses": {
            "202": {
                "description": "Safely queued: the broker confirmed it",
                "headers": {CORRELATION_HEADER: {"schema": {"type": "string", "format": "uuid"}}},
                "content": _json(_ref("AcceptedMessage")),
            },
            "400": _error("The body is not JSON"),
            "413": _error("The body is larger than the gateway accepts"),
            "422": _error("A field is invalid: one detail per field at fault, with the reason"),
            "503": _error(
                "The broker did not confirm the message (unreachable, or a queue is full); it may not be queued: "
                "retry after Retry-After seconds"
            ),
        },
    }
    if deprecated:
        operation["deprecated"] = True
    return operation


def _send(summary: str, description: str, request: str, *, deprecated: bool = False) -> JsonObject:
    operation = _intake(summary, description, request, deprecated=deprecated)
    operation["parameters"] = [*operation["parameters"], _IDEMPOTENCY_PARAMETER]
    responses = operation["responses"]
    responses["202"]["headers"][REPLAYED_HEADER] = {
        "description": "Present when the answer is an earlier request's with the same Idempotency-Key",
        "schema": {"const": "true"},
    }
    responses["409"] = _error("A request with the same Idempotency-Key is still in progress; retry later")
    responses["422"] = _error(
        "A field is invalid, or the Idempotency-Key was used with a different request: one detail per field at fault"
    )
    responses["503"] = _error(
        "The broker (unreachable, or a queue full) or the Idempotency-Key store is unavailable; "
        "retry later, after Retry-After seconds where given"
    )
    return operation


def _delivery_report(summary: str, description: str, content: JsonObject, parameters: list[JsonObject]) -> JsonObject:
    return {
        "summary": summary,
        "description": description,
        "tags": ["messages"],
        "parameters": [_CORRELATION_PARAMETER, *parameters],
        "requestBody": {"required": True, "content": content},
        "responses": {
            "200": {
                "description": "The final outcomes among the reports are queued; how many",
                "content": _json(
                    {
                        "type": "object",
                        "required": ["published"],
                        "properties": {"published": {"type": "integer", "minimum": 0}},
                    }
                ),
            },
            "400": _error("The body is not JSON"),
            "413": _error("The body is larger than the gateway accepts"),
            "422": _error("A field is invalid: one detail per field at fault, with the reason"),
            "503": _error("The broker did not confirm a receipt; the provider should retry the whole request"),
        },
    }


def _read(summary: str, description: str, answer: str, parameters: Iterable[JsonObject], *, one: bool) -> JsonObject:
    responses: JsonObject = {"200": {"description": summary, "content": _json(_ref(answer))}}
    if one:
        responses["404"] = _error("No such resource")
    responses["422"] = _error("A path or query parameter is invalid")
    responses["503"] = _error("The conversation service or its database is unavailable; retry later")
    return {
        "summary": summary,
        "description": description,
        "tags": ["conversations"],
        "parameters": list(parameters),
        "responses": responses,
    }


_SCOPE_USE = {Scope.SEND: "the send routes", Scope.READ: "the read routes"}


def _secure(operation: JsonObject, access: Access, profile: Profile) -> None:
    """The operation's security as its route declared it, in the description too (not every viewer
    shows the requirement's scopes). In the development profile a request without a key is answered
    too, and the description says so: `{}` is OpenAPI's "no credentials" alternative."""
    if access.scope is None:
        operation["security"] = []
        if access.provider:
            operation["description"] = (
                f"{operation.get('description', '')} Takes no API key: providers call it, not account holders."
            ).strip()
        return
    scope = access.scope
    operation["security"] = [{SECURITY_SCHEME: [scope.value]}]
    if profile is Profile.DEVELOPMENT:
        operation["security"].append({})
    operation["description"] = (
        f"{operation.get('description', '')} Needs an API key with the `{scope}` scope (`Authorization: Bearer <key>`)."
    ).strip()
    responses = operation["responses"]
    responses["401"] = _error("No API key, or one that is unknown, revoked or expired")
    reasons = f"The API key lacks the `{scope}` scope"
    if scope is Scope.SEND:
        reasons += ", or the account does not own the `from` address"
    responses["403"] = _error(reasons)
    responses["429"] = {
        **_error("The API key made too many requests; retry after the `Retry-After` seconds"),
        "headers": {"Retry-After": {"schema": {"type": "integer", "minimum": 1}}},
    }
    if access.json_body:
        responses["415"] = _error("The body is not `application/json`")


def _health(summary: str, answers: JsonObject) -> JsonObject:
    return {"get": {"summary": summary, "tags": ["health"], "responses": answers}}


def openapi_document(settings: GatewaySettings, route_access: dict[str, Access]) -> JsonObject:
    rules = settings.validation_rules
    page_parameters = _parameters(
        PageQuery,
        "query",
        {
            "limit": f"Page size: {settings.default_page_size} when absent, at most {settings.max_page_size}",
            "cursor": "The previous page's `next_cursor`",
        },
    )
    limits = f"A request body holds at most {settings.max_request_bytes} bytes and {rules.max_attachments} attachments."
    phone_limits = f"{limits} An SMS or MMS body holds at most {rules.sms_body_max_chars} characters."
    email_limits = f"{limits} An email body holds at most {rules.email_body_max_chars} characters."
    status_schema = {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}}
    readiness_schema = {
        "type": "object",
        "required": ["status", "checks"],
        "properties": {
            "status": {"enum": ["ready", "not ready"]},
            "checks": {"type": "object", "additionalProperties": {"type": "boolean"}},
        },
    }
    paths: JsonObject = {
        "/api/messages/sms": {
            "post": _send("Send an SMS or MMS", f"Answers once the send is queued. {phone_limits}", "SendSmsRequest")
        },
        "/api/messages/email": {
            "post": _send("Send an email", f"Answers once the send is queued. {email_limits}", "SendEmailRequest")
        },
        "/api/webhooks/sms": {
            "post": _intake("Receive an SMS or MMS (provider webhook)", phone_limits, "SmsWebhook"),
        },
        "/api/webhooks/email": {
            "post": _intake("Receive an email (provider webhook)", email_limits, "EmailWebhook"),
        },
        "/api/webhooks/sms/status": {
            "post": _delivery_report(
                "A sent SMS or MMS was delivered or failed (provider status callback)",
                "Twilio's status callback. Statuses other than delivered, undelivered and failed are acknowledged "
                "and dropped. The same fields as a JSON object are accepted too.",
                {"application/x-www-form-urlencoded": {"schema": _ref("SmsStatusCallback")}},
                [
                    {
                        "name": "message_id",
                        "in": "query",
                        "required": True,
                        "description": "Our message id, put in the callback URL by the channel service",
                        "schema": SmsStatusCallback.model_json_schema()["properties"]["message_id"],
                    }
                ],
            )
        },
        "/api/webhooks/email/status": {
            "post": _delivery_report(
                "Sent emails were delivered or failed (provider event webhook)",
                "SendGrid's event webhook: events other than delivered, bounce and dropped are acknowledged and "
                "dropped, and so are the events of mail that other systems sent (those without a message_id).",
                _json(
                    {
                        "type": "array",
                        "items": {
                            "anyOf": [
                                _ref("EmailStatusEvent"),
                                {
                                    "description": "An event of mail another system sent: ignored",
                                    "type": "object",
                                    "properties": {"message_id": {"type": "null"}},
                                },
                                {"type": "null"},
                            ]
                        },
                    }
                ),
                [],
            )
        },
        "/api/conversations": {
            "get": _read(
                "Conversations",
                "Most recent activity first.",
                "ConversationList",
                page_parameters,
                one=False,
            )
        },
        "/api/conversations/{conversation_id}/messages": {
            "get": _read(
                "A conversation's messages",
                "Oldest first, both directions and every channel.",
                "MessageList",
                [*_parameters(ConversationPath, "path"), *page_parameters],
                one=True,
            )
        },
        "/api/messages/{message_id}": {
            "get": _read(
                "One message",
                "Its status, attempts, provider id and last error, and every status it reached.",
                "MessageDetail",
                _parameters(MessagePath, "path"),
                one=True,
            )
        },
        "/messages/outbound/": {
            "post": _send(
                "Send (compatibility route)",
                f"The earlier service's generic send: `type` picks the channel. {limits}",
                "SendRequest",
                deprecated=True,
            )
        },
        "/messages/inbound/": {
            "post": _intake(
                "Receive (compatibility route)",
                "The earlier service's generic webhook: `type` picks the channel; the provider id may come "
                f"as `messaging_provider_id` for email too. {limits}",
                "Webhook",
                deprecated=True,
            )
        },
        "/healthz": _health("The process answers", {"200": {"description": "Alive", "content": _json(status_schema)}}),
        "/readyz": _health(
            "The broker connection is up",
            {
                "200": {"description": "Ready", "content": _json(readiness_schema)},
                "503": {"description": "Not ready: the failing checks are false", "content": _json(readiness_schema)},
            },
        ),
        "/metrics": _health(
            "Prometheus metrics; in the production profile only with the internal service token",
            {
                "200": {"description": "Prometheus text exposition", "content": {"text/plain": {"schema": {}}}},
                "401": _error("Production profile, and no or a wrong bearer token"),
            },
        ),
        OPENAPI_PATH: {
            "get": {
                "summary": "This description",
                "tags": ["documentation"],
                "responses": {"200": {"description": "OpenAPI 3.1", "content": _json({"type": "object"})}},
            }
        },
        DOCS_PATH: {
            "get": {
                "summary": "This description, rendered",
                "tags": ["documentation"],
                "responses": {"200": {"description": "An HTML page", "content": {"text/html": {"schema": {}}}}},
            }
        },
    }
    for path, operations in paths.items():
        for operation in operations.values():
            _secure(operation, route_access.get(path, OPEN), settings.messaging_profile)
    components = _components()
    components["securitySchemes"] = {
        SECURITY_SCHEME: {
            "type": "http",
            "scheme": "bearer",
            "description": f"An API key (`msk_…`) from `bin/admin keys create`; scopes: {_scopes_text()}. "
            "In the development profile a request without one acts for the development account.",
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Messaging service",
            "version": "1",
            "description": "Send and receive SMS, MMS and email, and read them back grouped into conversations. "
            "Timestamps are ISO 8601 in UTC.",
        },
        "paths": paths,
        "components": components,
    }


def _scopes_text() -> str:
    return ", ".join(f"`{scope}` ({use})" for scope, use in _SCOPE_USE.items())


_DOCS_PAGE = f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Messaging service API</title>
  <link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"></script>
  <script>SwaggerUIBundle({{url: "{OPENAPI_PATH}", dom_id: "#swagger-ui"}});</script>
</body>
</html>
"""


def add_openapi_routes(app: web.Application, settings: GatewaySettings) -> None:
    # Built once: it depends only on the code and the settings, neither of which changes while serving.
    document = json.dumps(openapi_document(settings, app[ROUTE_ACCESS])).encode()
    docs_page = _DOCS_PAGE.encode()

    async def openapi(request: web.Request) -> web.Response:
        return web.Response(body=document, content_type="application/json")

    async def docs(request: web.Request) -> web.Response:
        return web.Response(body=docs_page, content_type="text/html")

    add_route(app, "GET", OPENAPI_PATH, openapi, OPEN)
    add_route(app, "GET", DOCS_PATH, docs, OPEN)
