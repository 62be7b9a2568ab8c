"""Fuzz the public API against its own OpenAPI description: the real gateway publishing to RabbitMQ,
the real conversation_service reading PostgreSQL, and schemathesis generating requests from the
description the gateway serves. No answer may be a 5xx, and every answer must be one the description
promises: its status code, content type, headers and body schema.

Deterministic for CI: hypothesis is derandomized (the same examples every run) and bounded per
operation and generation mode.
"""

import asyncio

import phonenumbers
import pytest
import requests
import schemathesis
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from gateway.openapi import OPENAPI_PATH
from tests.factories import eventually

pytestmark = pytest.mark.integration

EXAMPLES_PER_OPERATION_AND_MODE = 20

# Valid-looking data that the service still refuses is not a failure here: a phone number's validity
# or an email's deliverable syntax is more than JSON Schema can say.
EXCLUDED_CHECKS = [positive_data_acceptance]
# The compatibility routes take a oneOf of both channels' bodies. schemathesis 4.32 breaks one branch
# of it and may send a body that the other branch accepts (seen: a valid SMS webhook reported as
# "violates enum at /oneOf/0/..."), then calls the 202 a failure: their answers are still held to
# the description, but not to rejecting data it only believes invalid.
UNION_BODIED = {"POST /messages/outbound/", "POST /messages/inbound/"}

# The description marks phone numbers with format "phone"; JSON Schema cannot say which are valid, so
# positive cases draw them from numbers that are, and get past validation to the broker and back.
VALID_PHONES = st.sampled_from(
    [
        phonenumbers.format_number(phonenumbers.example_number(region), phonenumbers.PhoneNumberFormat.E164)
        for region in ("US", "GB", "DE", "IN", "JP")
    ]
)

SEED_SMS = {"from": "+12016661234", "to": "+18045551234", "type": "sms", "body": "seed"}


def fuzz(base_url: str, seeded_message_id: str) -> list[str]:
    """Every operation in both generation modes, plus the seeded reads; what failed, in words."""
    schemathesis.openapi.format("phone", VALID_PHONES)
    schema = schemathesis.openapi.from_url(f"{base_url}{OPENAPI_PATH}")
    session = requests.Session()
    failures: list[str] = []

    def validate(case: Case) -> None:
        excluded = (
            [*EXCLUDED_CHECKS, negative_data_rejection] if case.operation.label in UNION_BODIED else EXCLUDED_CHECKS
        )
        case.call_and_validate(base_url=base_url, session=session, excluded_checks=excluded)

    for result in schema.get_all_operations():
        operation = result.ok()
        # An operation that takes no input has nothing to get wrong.
        negatable = bool(operation.body) or any(operation.iter_parameters())
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if negatable else (GenerationMode.POSITIVE,):

            @settings(
                max_examples=EXAMPLES_PER_OPERATION_AND_MODE,
                derandomize=True,
                database=None,
                deadline=None,
                phases=[Phase.generate, Phase.shrink],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def check(case: Case) -> None:
                validate(case)

            try:
                check()
            except Exception as error:
                failures.append(f"{operation.label} ({mode.value}): {error}")

    # Generated ids hardly ever name a stored row: answers with real data are held to the schema too.
    reads = [
        ("/api/conversations", {}),
        ("/api/conversations/{conversation_id}/messages", {"conversation_id": 1}),
        ("/api/messages/{message_id}", {"message_id": seeded_message_id}),
    ]
    for path, path_parameters in reads:
        case = schema[path]["GET"].Case(path_parameters=path_parameters)
        try:
            response = case.call_and_validate(base_url=base_url, session=session)
            assert response.status_code == 200, response.text
        except Exception as error:
            failures.append(f"GET {path} with stored data: {error}")
    return failures


async def test_the_api_answers_fuzzed_requests_as_described_and_never_with_a_5xx(gateway: TestClient) -> None:
    seeded = await (await gateway.post("/api/messages/sms", json=SEED_SMS)).json()

    async def stored() -> bool:
        return (await gateway.get(f"/api/messages/{seeded['id']}")).status == 200

    await eventually(stored, "the seed message to be stored")

    # schemathesis calls are blocking: off the loop, which has both servers to run meanwhile.
    failures = await asyncio.to_thread(fuzz, str(gateway.make_url("")).rstrip("/"), seeded["id"])

    assert not failures, "\n\n".join(failures)
