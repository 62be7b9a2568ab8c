"""What every mock provider shares: an in-memory record of the sends it took, idempotent replay,
`GET /messages` and `DELETE /messages` to inspect and reset it, and the app skeleton.

A mock says only how its provider's send request is read (`parse`, which refuses what the real
API would refuse) and how its answers look; it then runs as its own small HTTP server.
"""

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Self

from aiohttp import web

from common.contracts import utcnow
from common.health import add_health_routes
from common.http import error_middleware
from common.logs import configure_logging
from common.provider import IDEMPOTENCY_KEY_HEADER
from common.settings import ProcessSettings


class MockProviderSettings(ProcessSettings):
    """Each mock adds its own port, so one environment can configure both mocks."""


class SendRejected(Exception):
    """A send request the real API would refuse; `field` names the part at fault, when there is one."""

    def __init__(self, status: int, reason: str, field: str | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.field = field


@dataclass(frozen=True)
class RequestedSend:
    to: str
    sender: str
    body: str
    attachments: tuple[str, ...] = ()


@dataclass(frozen=True)
class RecordedSend:
    id: str
    send: RequestedSend
    idempotency_key: str | None
    received_at: datetime


@dataclass(frozen=True)
class Reply:
    """An answer kept as data, so that a repeated idempotency key gets exactly the same answer."""

    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, document: Any, headers: Mapping[str, str] | None = None) -> Self:
        return cls(status, json.dumps(document).encode(), {"Content-Type": "application/json", **(headers or {})})

    def response(self) -> web.Response:
        return web.Response(status=self.status, body=self.body, headers=self.headers)


class MockProvider(ABC):
    name: str
    send_path: str
    # What the provider calls attachments ("media" for MMS), used as the key in `GET /messages`.
    attachments_field: str

    @abstractmethod
    async def parse(self, request: web.Request) -> RequestedSend:
        """Read a send request as the real API would; raise `SendRejected` where it would refuse it."""

    @abstractmethod
    def new_id(self) -> str: ...

    @abstractmethod
    def accepted(self, record: RecordedSend) -> Reply: ...

    @abstractmethod
    def rejected(self, error: SendRejected) -> Reply: ...

    def listing(self, record: RecordedSend) -> dict[str, Any]:
        return {
            "id": record.id,
            "to": record.send.to,
            "from": record.send.sender,
            "body": record.send.body,
            self.attachments_field: list(record.send.attachments),
            "idempotency_key": record.idempotency_key,
            "received_at": record.received_at.isoformat(),
        }


@dataclass
class MockState:
    records: list[RecordedSend] = field(default_factory=list)
    replies: dict[str, Reply] = field(default_factory=dict)

    def clear(self) -> None:
        # Replies go too: after a reset, a key seen before is a new send, as a test starting afresh expects.
        self.records.clear()
        self.replies.clear()


MOCK_PROVIDER: web.AppKey[MockProvider] = web.AppKey("mock_provider")
MOCK_STATE = web.AppKey("mock_state", MockState)


def create_mock_app(provider: MockProvider) -> web.Application:
    app = web.Application(middlewares=[error_middleware])
    app[MOCK_PROVIDER] = provider
    app[MOCK_STATE] = MockState()
    add_health_routes(app)
    app.router.add_post(provider.send_path, send)
    app.router.add_get("/messages", list_messages)
    app.router.add_delete("/messages", clear_messages)
    return app


def run_mock_provider(app: web.Application, settings: MockProviderSettings, port: int) -> None:
    configure_logging(app[MOCK_PROVIDER].name, settings)
    web.run_app(app, host=settings.bind_host, port=port, print=None)


async def send(request: web.Request) -> web.Response:
    provider = request.app[MOCK_PROVIDER]
    state = request.app[MOCK_STATE]
    try:
        requested = await provider.parse(request)
    except SendRejected as error:
        return provider.rejected(error).response()
    key = request.headers.get(IDEMPOTENCY_KEY_HEADER)
    # Nothing is awaited from this check to the store below, so concurrent repeats of one key
    # record a single send. Only accepted sends are kept: a refused request may be tried again.
    if key is not None and key in state.replies:
        return state.replies[key].response()
    record = RecordedSend(provider.new_id(), requested, key, utcnow())
    reply = provider.accepted(record)
    state.records.append(record)
    if key is not None:
        state.replies[key] = reply
    return reply.response()


async def list_messages(request: web.Request) -> web.Response:
    provider = request.app[MOCK_PROVIDER]
    return web.json_response({"messages": [provider.listing(r) for r in request.app[MOCK_STATE].records]})


async def clear_messages(request: web.Request) -> web.Response:
    request.app[MOCK_STATE].clear()
    return web.Response(status=204)
