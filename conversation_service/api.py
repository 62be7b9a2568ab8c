"""The read API: validate the path and query, ask the repository, answer the JSON it wrote. Errors are raised.

Every read acts for the account the gateway names in `X-Account-ID`, having checked the caller's
key: the repository shows it only that account's conversations and messages.
"""

import uuid

from aiohttp import web

from common import context
from common.accounts import ACCOUNT_HEADER
from common.conversations import ConversationPath, MessagePath, PageQuery
from common.errors import InvalidRequest
from common.http import request_validation
from conversation_service.repository import MessageRepository
from conversation_service.settings import ConversationSettings

SETTINGS = web.AppKey("settings", ConversationSettings)
REPOSITORY = web.AppKey("repository", MessageRepository)


def _account(request: web.Request) -> uuid.UUID:
    raw = request.headers.get(ACCOUNT_HEADER)
    try:
        account = uuid.UUID(raw or "")
    except ValueError:
        reason = "missing" if raw is None else "not an account id"
        raise InvalidRequest(
            f"{ACCOUNT_HEADER} must name the account the read is for", [{"field": ACCOUNT_HEADER, "reason": reason}]
        ) from None
    context.account_id.set(account)
    return account


def _page(request: web.Request) -> tuple[int, str | None]:
    settings = request.app[SETTINGS]
    with request_validation():
        query = PageQuery.model_validate(dict(request.query), context=settings)
    return query.limit or settings.default_page_size, query.cursor


def _json(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/json")


async def list_conversations(request: web.Request) -> web.Response:
    account = _account(request)
    limit, cursor = _page(request)
    return _json(await request.app[REPOSITORY].list_conversations(account, limit, cursor))


async def list_messages(request: web.Request) -> web.Response:
    account = _account(request)
    with request_validation():
        path = ConversationPath.model_validate(request.match_info)
    limit, cursor = _page(request)
    return _json(await request.app[REPOSITORY].list_messages(account, path.conversation_id, limit, cursor))


async def get_message(request: web.Request) -> web.Response:
    account = _account(request)
    with request_validation():
        path = MessagePath.model_validate(request.match_info)
    return _json(await request.app[REPOSITORY].get_message(account, path.message_id))


def add_read_routes(app: web.Application) -> None:
    app.router.add_get("/conversations", list_conversations)
    app.router.add_get("/conversations/{conversation_id}/messages", list_messages)
    app.router.add_get("/messages/{message_id}", get_message)
