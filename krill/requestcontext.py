"""The id of the request a piece of code runs for: a context variable, and nothing else.

``krill.logs`` puts the id in every log record and ``krill.originclient`` sends it on;
neither needs aiohttp's server, which ``krill.requestid`` (the middleware that sets the id)
imports. Keeping the variable here lets a command that serves nothing (``krill delta
apply``, timed by its users) log without loading aiohttp: ~0.12 s of its start.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from contextvars import ContextVar, Token
from random import Random

__all__ = [
    "HEADER",
    "bind_request_id",
    "bound_request_id",
    "current_request_id",
    "id_for_request",
    "request_id_headers",
    "unbind_request_id",
]

HEADER = "X-Request-Id"

# Ids from clients are logged and echoed: printable, no spaces or quotes, bounded.
_ACCEPTABLE = re.compile(r"^[A-Za-z0-9._:/+=@-]{1,128}$").match

_REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)


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
