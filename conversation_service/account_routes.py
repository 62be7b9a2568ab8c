"""The internal routes the gateway asks about callers: who holds an API key, who owns an address.

Only the gateway calls these (the service token guards every route of conversation_service); they
answer with `common.accounts`' contract, and 404 when the answer is nobody.
"""

from aiohttp import web
from pydantic import BaseModel

from common.accounts import (
    ADDRESS_OWNER_PATH,
    VERIFY_KEY_PATH,
    AddressOwner,
    AddressOwnerQuery,
    KeyVerification,
)
from common.errors import NotFound
from common.http import request_validation
from conversation_service.accounts import AccountStore

ACCOUNT_STORE = web.AppKey("account_store", AccountStore)


async def verify_key(request: web.Request) -> web.Response:
    with request_validation():
        verification = KeyVerification.model_validate_json(await request.read())
    # One answer for unknown, revoked and expired: the caller learns nothing about other keys.
    return _found(await request.app[ACCOUNT_STORE].verify_key(verification.key_hash), "no usable key has this hash")


async def address_owner(request: web.Request) -> web.Response:
    with request_validation():
        query = AddressOwnerQuery.model_validate_json(await request.read())
    owner = await request.app[ACCOUNT_STORE].address_owner(query.address)
    return _found(None if owner is None else AddressOwner(account_id=owner), "no account owns this address")


def _found(answer: BaseModel | None, missing: str) -> web.Response:
    if answer is None:
        raise NotFound(missing)
    return web.json_response(text=answer.model_dump_json())


def add_account_routes(app: web.Application) -> None:
    app.router.add_post(VERIFY_KEY_PATH, verify_key)
    app.router.add_post(ADDRESS_OWNER_PATH, address_owner)
