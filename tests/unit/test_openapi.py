"""The OpenAPI description the gateway serves: valid, complete, and derived from the models."""

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from openapi_spec_validator import validate

from common.conversations import MAX_BIGINT as MAX_ID
from gateway.app import create_app
from gateway.auth import ROUTE_ACCESS
from gateway.openapi import DOCS_PATH, OPENAPI_PATH, SECURITY_SCHEME
from gateway.settings import GatewaySettings
from tests.factories import production_settings
from tests.fakes import MemoryKeyStore, RecordingPublisher

SETTINGS = GatewaySettings(conversation_service_url="http://127.0.0.1:1", sms_body_max_chars=160)


def gateway_app() -> web.Application:
    return create_app(SETTINGS, publisher=RecordingPublisher(), key_store=MemoryKeyStore())


@pytest.fixture
async def client(aiohttp_client: Any) -> TestClient:
    return await aiohttp_client(gateway_app())


@pytest.fixture
async def document(client: TestClient) -> dict[str, Any]:
    response = await client.get(OPENAPI_PATH)
    assert response.status == 200
    assert response.content_type == "application/json"
    return await response.json()


def schema_of(document: dict[str, Any], name: str) -> dict[str, Any]:
    return document["components"]["schemas"][name]


def response_ref(document: dict[str, Any], method: str, path: str, status: str) -> str:
    return document["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"]["$ref"]


def test_the_description_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    validate(document)

    assert document["openapi"].startswith("3.1")


def test_every_route_is_described_and_every_description_is_a_route(document: dict[str, Any]) -> None:
    # aiohttp answers HEAD wherever it answers GET: that is the framework's, not the API's.
    registered = {
        (route.method.lower(), route.resource.canonical)
        for route in gateway_app().router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    described = {(method, path) for path, operations in document["paths"].items() for method in operations}

    assert registered == described
    assert ("post", "/api/messages/sms") in described


def test_request_schemas_are_the_request_models(document: dict[str, Any]) -> None:
    sms = schema_of(document, "SendSmsRequest")
    webhook = schema_of(document, "EmailWebhook")

    assert set(sms["required"]) == {"from", "to", "body", "type"}
    assert sms["properties"]["type"]["enum"] == ["sms", "mms"]
    assert sms["properties"]["from"]["format"] == "phone"
    assert "mms" in sms["description"]
    assert "xillio_id" in webhook["required"]
    assert webhook["properties"]["to"]["format"] == "email"
    operation = document["paths"]["/api/messages/sms"]["post"]
    assert operation["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/SendSmsRequest"
    }
    assert "Idempotency-Key" in {parameter["name"] for parameter in operation["parameters"]}


def test_answers_are_described_by_the_models_that_make_them(document: dict[str, Any]) -> None:
    assert response_ref(document, "post", "/api/webhooks/sms", "202") == "#/components/schemas/AcceptedMessage"
    assert response_ref(document, "get", "/api/messages/{message_id}", "200") == "#/components/schemas/MessageDetail"
    assert response_ref(document, "get", "/api/messages/{message_id}", "404") == "#/components/schemas/ErrorBody"
    # The read models rename from_address and to_address when they answer: the description says what goes out.
    assert {"from", "to", "history"} <= set(schema_of(document, "MessageDetail")["required"])
    error = schema_of(document, "ErrorBody")
    assert error["required"] == ["error", "message"]
    assert set(error["properties"]) == {"error", "message", "details"}


def test_path_and_query_parameters_are_the_read_apis_own(document: dict[str, Any]) -> None:
    parameters = {
        parameter["name"]: parameter
        for parameter in document["paths"]["/api/conversations/{conversation_id}/messages"]["get"]["parameters"]
    }

    assert (parameters["conversation_id"]["in"], parameters["conversation_id"]["required"]) == ("path", True)
    conversation_id, limit = parameters["conversation_id"]["schema"], parameters["limit"]["schema"]
    assert (conversation_id["type"], conversation_id["minimum"], conversation_id["maximum"]) == ("integer", 1, MAX_ID)
    assert (limit["type"], limit["minimum"]) == ("integer", 1)
    assert (parameters["limit"]["required"], parameters["cursor"]["required"]) == (False, False)


def test_the_deployments_limits_are_described(document: dict[str, Any]) -> None:
    description = document["paths"]["/api/messages/sms"]["post"]["description"]

    assert "at most 160 characters" in description
    assert f"at most {SETTINGS.max_request_bytes} bytes" in description


async def test_the_docs_page_renders_the_description(client: TestClient) -> None:
    response = await client.get(DOCS_PATH)

    assert response.status == 200
    assert response.content_type == "text/html"
    page = await response.text()
    assert f'url: "{OPENAPI_PATH}"' in page
    assert "swagger-ui-bundle.js" in page


def test_each_operation_declares_the_scope_its_route_enforces(document: dict[str, Any]) -> None:
    access = gateway_app()[ROUTE_ACCESS]
    scheme = document["components"]["securitySchemes"][SECURITY_SCHEME]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")

    keyed = 0
    for path, operations in document["paths"].items():
        for operation in operations.values():
            scope = access[path].scope if path in access else None
            if scope is None:
                assert operation["security"] == [], path
                continue
            keyed += 1
            # The development profile's gateway also answers without a key: `{}`, no credentials.
            assert operation["security"] == [{SECURITY_SCHEME: [scope.value]}, {}], path
            assert f"`{scope}` scope" in operation["description"], path
            assert {"401", "403", "429"} <= set(operation["responses"]), path
            assert "Retry-After" in operation["responses"]["429"]["headers"], path
    assert keyed == 6
    assert "415" in document["paths"]["/api/messages/email"]["post"]["responses"]


async def test_in_production_every_keyed_operation_requires_its_key(aiohttp_client: Any) -> None:
    settings = production_settings(GatewaySettings, conversation_service_url="http://127.0.0.1:1")
    client = await aiohttp_client(create_app(settings, publisher=RecordingPublisher(), key_store=MemoryKeyStore()))
    document = await (await client.get(OPENAPI_PATH)).json()

    validate(document)
    assert document["paths"]["/api/messages/sms"]["post"]["security"] == [{SECURITY_SCHEME: ["send"]}]
    assert document["paths"]["/api/conversations"]["get"]["security"] == [{SECURITY_SCHEME: ["read"]}]
    assert document["paths"]["/api/webhooks/sms"]["post"]["security"] == []
