"""The read API: validate the path and query, ask the repository, answer JSON. Errors are raised."""

from aiohttp import web
from pydantic import BaseModel

from common.http import request_validation
from conversation_service.models import ConversationList, ConversationPath, MessageList, MessagePath, PageQuery
from conversation_service.repository import MessageRepository
from conversation_service.settings import ConversationSettings

SETTINGS = web.AppKey("settings", ConversationSettings)
REPOSITORY = web.AppKey("repository", MessageRepository)


def _page(request: web.Request) -> tuple[int, str | None]:
    settings = request.app[SETTINGS]
    with request_validation():
        query = PageQuery.model_validate(dict(request.query), context=settings)
    return query.limit or settings.default_page_size, query.cursor


def _json(model: BaseModel) -> web.Response:
    return web.json_response(text=model.model_dump_json(by_alias=True))


async def list_conversations(request: web.Request) -> web.Response:
    limit, cursor = _page(request)
    page = await request.app[REPOSITORY].list_conversations(limit, cursor)
    return _json(ConversationList(conversations=page.items, next_cursor=page.next_cursor))


async def list_messages(request: web.Request) -> web.Response:
    with request_validation():
        path = ConversationPath.model_validate(request.match_info)
    limit, cursor = _page(request)
    page = await request.app[REPOSITORY].list_messages(path.conversation_id, limit, cursor)
    return _json(MessageList(conversation_id=path.conversation_id, messages=page.items, next_cursor=page.next_cursor))


async def get_message(request: web.Request) -> web.Response:
    with request_validation():
        path = MessagePath.model_validate(request.match_info)
    return _json(await request.app[REPOSITORY].get_message(path.message_id))


def add_read_routes(app: web.Application) -> None:
    app.router.add_get("/conversations", list_conversations)
    app.router.add_get("/conversations/{conversation_id}/messages", list_messages)
    app.router.add_get("/messages/{message_id}", get_message)
