"""The gateway's perimeter: who a request acts for, and whether it may.

One middleware, right after the error middleware, puts the request's correlation id and account into
`common.context` and holds every route to what it declared where it was added (`add_route`): an API
key with a scope (`SEND`, `READ`), or none (`WEBHOOK`: providers sign instead; `OPEN`: documentation).
The development profile lets a request without a key act for the development account, as one client.
"""

import functools
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, Protocol

from aiohttp import web
from yarl import URL

from common import context
from common.accounts import DEVELOPMENT_ACCOUNT_ID, KeyIdentity, Scope, hash_api_key, prefix_of
from common.errors import Forbidden, RateLimited, Unauthorized, UnsupportedMediaType
from common.settings import Profile, is_loopback
from gateway.rate_limit import TokenBuckets

log = logging.getLogger(__name__)

CORRELATION_HEADER = "X-Correlation-ID"

View = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Access:
    """What a route asks of its caller: an API key holding `scope`, or no key at all (scope None)."""

    scope: Scope | None
    # A JSON body, so anything else is a 415; a browser can post text/plain across origins unasked.
    json_body: bool
    # A provider's webhook: the provider is no account holder; it signs its calls instead of a key.
    provider: bool = False


SEND = Access(Scope.SEND, json_body=True)
READ = Access(Scope.READ, json_body=False)
WEBHOOK = Access(None, json_body=True, provider=True)
# Twilio's status callback is a form; the same fields as JSON are taken too.
FORM_WEBHOOK = Access(None, json_body=False, provider=True)
OPEN = Access(None, json_body=False)

ROUTE_ACCESS = web.AppKey("route_access", dict[str, Access])


def add_route(app: web.Application, method: Literal["GET", "POST"], path: str, view: View, access: Access) -> None:
    """Add a route with what it asks of its caller; the perimeter middleware holds it to that."""
    if method == "GET":
        app.router.add_get(path, view)
    else:
        app.router.add_post(path, view)
    app[ROUTE_ACCESS][path] = access


def access_of(app: web.Application, path: str) -> Access:
    """A route added without `add_route` (health) asks for nothing."""
    return app[ROUTE_ACCESS].get(path, OPEN)


class KeyVerifier(Protocol):
    async def verify_key(self, key_hash: str) -> KeyIdentity | None: ...


@dataclass(frozen=True)
class Caller:
    account_id: uuid.UUID
    # Whose bucket its requests take from: its key's prefix (the development account: one client).
    client: str


class Authenticator:
    def __init__(self, keys: KeyVerifier, profile: Profile) -> None:
        self._keys = keys
        self._profile = profile

    async def authenticate(self, authorization: str | None, scope: Scope) -> Caller:
        if authorization is None:
            if self._profile is Profile.DEVELOPMENT:
                return Caller(DEVELOPMENT_ACCOUNT_ID, "development")
            raise Unauthorized("this route needs an API key: Authorization: Bearer <key>")
        key = _bearer_key(authorization)
        prefix = prefix_of(key) if key is not None else None
        if key is None or prefix is None:
            raise Unauthorized("the Authorization header does not hold an API key: Authorization: Bearer <key>")
        identity = await self._keys.verify_key(hash_api_key(key))
        if identity is None or identity.key_prefix != prefix:
            log.info("api key refused", extra={"key_prefix": prefix, "reason": "unknown, revoked or expired"})
            raise Unauthorized("the API key is unknown, revoked or expired")
        # Checked here too: a cached answer must not outlive the key.
        if identity.expires_at is not None and identity.expires_at <= datetime.now(UTC):
            log.info("api key refused", extra={"key_prefix": prefix, "reason": "expired"})
            raise Unauthorized("the API key is unknown, revoked or expired")
        if scope not in identity.scopes:
            raise Forbidden(
                f"the API key does not have the {scope} scope this route needs",
                [{"field": "Authorization", "reason": f"the key lacks the {scope} scope"}],
            )
        return Caller(identity.account_id, prefix)


def _bearer_key(authorization: str) -> str | None:
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return credentials.strip()


# Clients send the same few Host headers request after request; parsing one costs more than the
# rest of the check.
@functools.lru_cache(maxsize=1024)
def _loopback_host(host: str) -> bool:
    try:
        name = URL(f"http://{host}").host
    except ValueError:
        return False
    return name is not None and is_loopback(name.strip("[]"))


@dataclass(frozen=True)
class Perimeter:
    profile: Profile
    authenticator: Authenticator
    rate_limits: TokenBuckets


PERIMETER = web.AppKey("perimeter", Perimeter)


def _correlation_id(request: web.Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.headers[CORRELATION_HEADER])
    except (KeyError, ValueError):
        return uuid.uuid4()


@web.middleware
async def perimeter_middleware(request: web.Request, handler: View) -> web.StreamResponse:
    context.correlation_id.set(_correlation_id(request))
    context.account_id.set(None)
    perimeter = request.app[PERIMETER]
    # A page in a developer's browser can make its own name resolve to 127.0.0.1 (DNS rebinding) and
    # drive the keyless local API; its requests still name that page's host.
    if perimeter.profile is Profile.DEVELOPMENT and not _loopback_host(request.host):
        raise Forbidden(
            "the development profile answers only requests addressed to a loopback host",
            [{"field": "Host", "reason": "is not 127.0.0.1, localhost or [::1]"}],
        )
    resource = request.match_info.route.resource
    access = access_of(request.app, resource.canonical) if resource is not None else OPEN
    if access.scope is not None:
        caller = await perimeter.authenticator.authenticate(request.headers.get("Authorization"), access.scope)
        context.account_id.set(caller.account_id)
        if wait := perimeter.rate_limits.take(caller.client):
            raise RateLimited("too many requests for this API key; retry later", retry_after_seconds=wait)
    if access.json_body and request.method == "POST" and request.content_type != "application/json":
        raise UnsupportedMediaType(
            "this route takes a JSON body",
            [{"field": "Content-Type", "reason": "must be application/json"}],
        )
    return await handler(request)


async def echo_correlation_id(request: web.Request, response: web.StreamResponse) -> None:
    """On every answer, errors included (the error middleware builds those outside the perimeter)."""
    correlation_id = context.correlation_id.get()
    if correlation_id is not None:
        response.headers[CORRELATION_HEADER] = str(correlation_id)
