"""Who a request acts for. Until API keys are checked, every request acts for the development account."""

from collections.abc import Awaitable, Callable

from aiohttp import web

from common import context
from common.accounts import DEVELOPMENT_ACCOUNT_ID


@web.middleware
async def development_account_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    context.account_id.set(DEVELOPMENT_ACCOUNT_ID)
    return await handler(request)
