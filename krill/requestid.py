"""``X-Request-Id``: one id per request, in every log line it causes, on every service.

A pull that is slow or fails crosses three processes (containerd -> agent ->
origin); without a shared id the agent's and the origin's log lines for it can
only be matched by time and digest. ``install_request_ids(app)`` gives each
request an id: the client's ``X-Request-Id`` when it sent a sane one (so a
caller's own id carries through), else a new random one. The id is

* put in the ``request_id`` context variable for the handler and every task it
  starts (asyncio copies the context), so ``krill.logs`` adds it to each log
  record;
* echoed in the response's ``X-Request-Id`` header (streamed answers too: it is
  set as the response is prepared);
* sent on by ``krill.originclient.OriginClient`` with every request the agent
  makes to the origin on the request's behalf, so the origin logs the same id.

A blob fetch shared by several requests (single-flight) runs in the task of the
request that started it and logs that request's id.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from contextvars import ContextVar, Token
from random import Random

from aiohttp import web
from aiohttp.typedefs import Handler

__all__ = [
    "HEADER",
    "bind_request_id",
    "bound_request_id",
    "current_request_id",
    "id_for_request",
    "install_request_ids",
    "request_id_headers",
    "request_id_middleware",
    "unbind_request_id",
]

HEADER = "X-Request-Id"

# Ids from clients are logged and echoed: printable, no spaces or quotes, bounded.
_ACCEPTABLE = re.compile(r"^[A-Za-z0-9._:/+=@-]{1,128}$").match

_REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
_REQUEST_KEY = web.RequestKey("request_id", str)


def current_request_id() -> str | None:
    """The id of the request this code runs for, or None outside any request."""
    return _REQUEST_ID.get()


@contextlib.contextmanager
def bound_request_id(request_id: str) -> Iterator[None]:
    """Code in this block (and tasks it starts) runs for request ``request_id``."""
    token = _REQUEST_ID.set(request_id)
    try:
        yield
    finally:
        _REQUEST_ID.reset(token)


def id_for_request(offered: str | None) -> str:
    """The id a request gets: ``offered`` (its ``X-Request-Id``) when sane, else a new one.

    With ``bind_request_id``, for a hot route that does the middleware's work inline
    (the tracker's announce) instead of paying for an app-wide middleware.
    """
    return offered if offered and _ACCEPTABLE(offered) else _new_id()


def bind_request_id(request_id: str) -> Token[str | None]:
    """Code from here on runs for ``request_id``; ``unbind_request_id(token)`` ends it."""
    return _REQUEST_ID.set(request_id)


def unbind_request_id(token: Token[str | None]) -> None:
    _REQUEST_ID.reset(token)


def request_id_headers() -> dict[str, str]:
    """``{"X-Request-Id": id}`` to send on, or nothing outside a request."""
    request_id = _REQUEST_ID.get()
    return {HEADER: request_id} if request_id is not None else {}


# Its own generator: a random.seed() elsewhere must not make ids repeat.
_ID_BITS = Random().getrandbits


def _new_id() -> str:
    # 32 hex digits, as ``secrets.token_hex(16)`` makes them, from the process' Mersenne
    # Twister (seeded from os.urandom at start): an id must be unique, not secret, and
    # ``os.urandom`` is a getrandom() system call per request, which one profile of the
    # tracker under load caught at a tenth of its CPU (docs/benchmarks.md).
    return f"{_ID_BITS(128):032x}"


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    offered = request.headers.get(HEADER)
    request_id = offered if offered and _ACCEPTABLE(offered) else _new_id()
    request[_REQUEST_KEY] = request_id
    # A token reset, not ``bound_request_id``: no generator object per request.
    token = _REQUEST_ID.set(request_id)
    try:
        response = await handler(request)
    except web.HTTPException as error:  # raised answers (404, 401...) carry it too
        error.headers[HEADER] = request_id
        raise
    finally:
        _REQUEST_ID.reset(token)
    if not response.prepared:
        response.headers[HEADER] = request_id
    return response


async def _echo(request: web.BaseRequest, response: web.StreamResponse) -> None:
    # Streamed answers (prepared inside their handler) and aiohttp's own 500
    # for an exception: the answers the middleware cannot reach.
    if HEADER not in response.headers:
        request_id = request.get(_REQUEST_KEY)
        if request_id is not None:
            response.headers[HEADER] = request_id


def install_request_ids(app: web.Application) -> None:
    """Give ``app``'s requests ids: outermost middleware, echoed in every response.

    Call before the app starts (its middleware list is frozen then).
    """
    app.middlewares.insert(0, request_id_middleware)
    app.on_response_prepare.append(_echo)
