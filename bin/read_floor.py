"""The read path's floor, for `make bench`: the same pages through the same hops, on the same
libraries and statements, and nothing else.

A relay (aiohttp's server and client, on uvloop, as the gateway) passes each request on to a reader
(aiohttp's server and aiopg, on asyncio's loop, as conversation_service), which decodes the cursor,
runs conversation_service.reads' prepared statement and writes the page's envelope around the JSON
PostgreSQL wrote. No keys, validation, metrics, logs or retries: what the stack spends beyond this,
on the same machine in the same run, is its own code's.

    read_floor.py reader --port 8092 --database-url postgresql://...
    read_floor.py relay --port 8091 --upstream http://127.0.0.1:8092
"""

import argparse
import asyncio
import base64
import json
import weakref
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import aiopg
import uvloop
from aiohttp import web

from common.accounts import ACCOUNT_HEADER, DEVELOPMENT_ACCOUNT_ID
from conversation_service import reads
from conversation_service.database import Prepared

POOL = web.AppKey("pool", aiopg.Pool)
SESSION = web.AppKey("session", aiohttp.ClientSession)


def _after(cursor: str | None) -> dict[str, Any]:
    if cursor is None:
        return {}
    position = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    return {f"after_{name}": value for name, value in position.items()}


def _cursor(more: bool, names: tuple[str, ...], values: list[Any]) -> str:
    if not more:
        return "null"
    position = dict(zip(names, values, strict=True))
    position = {name: value.isoformat() if hasattr(value, "isoformat") else value for name, value in position.items()}
    return json.dumps(base64.urlsafe_b64encode(json.dumps(position).encode()).decode().rstrip("="))


class Reader:
    def __init__(self, pool_size: int) -> None:
        self._pool_size = pool_size
        self._prepared: dict[str, weakref.WeakSet[Any]] = {}

    async def _row(self, pool: aiopg.Pool, statement: Prepared, parameters: dict[str, Any]) -> tuple[Any, ...]:
        prepared_on = self._prepared.setdefault(statement.sql, weakref.WeakSet())
        values = {**statement.constants, **parameters}
        async with pool.acquire() as connection, connection.cursor() as cursor:
            if connection not in prepared_on:
                await cursor.execute(statement.prepare, values)
                prepared_on.add(connection)
            await cursor.execute(statement.sql, values)
            return (await cursor.fetchall())[0]

    def _page(self, request: web.Request) -> dict[str, Any]:
        limit = int(request.query.get("limit", "50"))
        return {"account": request.headers[ACCOUNT_HEADER], "limit": limit, "fetch": limit + 1}

    async def conversations(self, request: web.Request) -> web.Response:
        after = _after(request.query.get("cursor"))
        statement = reads._NEXT_CONVERSATIONS if after else reads._FIRST_CONVERSATIONS
        items, more, *last = await self._row(request.app[POOL], statement, {**self._page(request), **after})
        body = f'{{"conversations":{items},"next_cursor":{_cursor(more, ("last_message_at", "id"), last)}}}'
        return web.Response(body=body.encode(), content_type="application/json")

    async def messages(self, request: web.Request) -> web.Response:
        conversation_id = int(request.match_info["conversation_id"])
        after = _after(request.query.get("cursor"))
        statement = reads._NEXT_MESSAGES if after else reads._FIRST_MESSAGES
        parameters = {"conversation_id": conversation_id, **self._page(request), **after}
        _, items, more, *last = await self._row(request.app[POOL], statement, parameters)
        next_cursor = _cursor(more, ("timestamp", "seq"), last)
        body = f'{{"conversation_id":{conversation_id},"messages":{items},"next_cursor":{next_cursor}}}'
        return web.Response(body=body.encode(), content_type="application/json")

    def app(self, database_url: str) -> web.Application:
        async def pool(app: web.Application) -> AsyncIterator[None]:
            options = "-c plan_cache_mode=force_generic_plan"
            async with aiopg.create_pool(database_url, maxsize=self._pool_size, options=options) as created:
                app[POOL] = created
                yield

        app = web.Application()
        app.cleanup_ctx.append(pool)
        app.router.add_get("/conversations", self.conversations)
        app.router.add_get("/conversations/{conversation_id}/messages", self.messages)
        return app


def relay_app(upstream: str) -> web.Application:
    async def session(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession() as created:
            app[SESSION] = created
            yield

    async def relay(request: web.Request) -> web.Response:
        url = upstream + request.path.removeprefix("/api")
        headers = {ACCOUNT_HEADER: str(DEVELOPMENT_ACCOUNT_ID)}
        async with request.app[SESSION].get(url, params=request.query, headers=headers) as response:
            return web.Response(body=await response.read(), status=response.status, content_type=response.content_type)

    app = web.Application()
    app.cleanup_ctx.append(session)
    app.router.add_get("/api/conversations", relay)
    app.router.add_get("/api/conversations/{conversation_id}/messages", relay)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("role", choices=["reader", "relay"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--database-url", help="the reader's database")
    parser.add_argument("--pool-size", type=int, default=10, help="the reader's connections")
    parser.add_argument("--upstream", help="the relay's reader, http://host:port")
    arguments = parser.parse_args()
    if arguments.role == "reader":
        app, loop = Reader(arguments.pool_size).app(arguments.database_url), asyncio.new_event_loop()
    else:
        app, loop = relay_app(arguments.upstream.rstrip("/")), uvloop.new_event_loop()
    web.run_app(app, host="127.0.0.1", port=arguments.port, print=None, access_log=None, loop=loop)


if __name__ == "__main__":
    main()
