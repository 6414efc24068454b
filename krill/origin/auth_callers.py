"""Who is asking: a request's ``Authorization`` header turned into a ``Caller``.

Three ways in, all accepted on every ``/v2/`` request:

- nothing: an anonymous caller, who gets what the rules give ``anonymous``;
- ``Basic``: a user and password from the htpasswd file. Clients that know
  only Basic (or are told credentials up front, like ``curl -u``) work
  without the token flow; bcrypt is not paid per request because
  ``PasswordChecker`` remembers outcomes;
- ``Bearer``: a token from ``/auth/token`` (``auth_tokens``), which carries
  its subject and the access it was granted.

A header that is present but wrong (bad password, forged or expired token,
another scheme) is never treated as anonymous: the caller meant to be
someone, and silently serving them as nobody would hide the mistake. It is
a ``CallerOutcome`` that ends in a 401.

Every password check (Basic here, the OAuth2 form in ``auth_endpoint``) goes
through ``check_password``, which the ``LoginThrottle`` can answer with 429
before bcrypt runs when the same user has failed too often from the same
client address.
"""

from __future__ import annotations

import base64
import binascii
import enum
from dataclasses import dataclass

from aiohttp import hdrs, web

from krill.origin.auth_config import AuthSettings
from krill.origin.auth_passwords import PasswordChecker
from krill.origin.auth_rules import AccessPolicy
from krill.origin.auth_throttle import LoginThrottle, too_many_attempts
from krill.origin.auth_tokens import Grant, TokenIssuer

__all__ = ["AUTH", "Caller", "CallerOutcome", "OriginAuth", "Via", "check_password", "identify"]


class Via(enum.Enum):
    """How the caller identified themselves."""

    NOTHING = "nothing"
    PASSWORD = "password"
    TOKEN = "token"


class CallerOutcome(enum.Enum):
    """Why an ``Authorization`` header identified nobody (each is a 401)."""

    BAD_PASSWORD = "bad_password"  # unknown user or wrong password
    BAD_TOKEN = "bad_token"  # forged, malformed or expired: the client should get a new one
    UNREADABLE = "unreadable"  # a scheme we don't speak, or Basic that is not base64 user:pass


@dataclass(frozen=True)
class Caller:
    """An identified caller: a user (None: anonymous) and, via a token, its grant."""

    user: str | None
    via: Via
    grant: Grant | None = None


@dataclass(frozen=True)
class OriginAuth:
    """Everything the middleware and the token endpoint consult, made once at start."""

    settings: AuthSettings
    passwords: PasswordChecker
    tokens: TokenIssuer
    throttle: LoginThrottle

    @property
    def policy(self) -> AccessPolicy:
        return self.settings.policy


AUTH = web.AppKey("krill_origin_auth", OriginAuth)


async def identify(auth: OriginAuth, request: web.Request) -> Caller | CallerOutcome:
    """The caller ``request`` speaks for, or why its ``Authorization`` header is no good."""
    header = request.headers.get(hdrs.AUTHORIZATION)
    if header is None:
        return Caller(None, Via.NOTHING)
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() == "bearer":
        grant = auth.tokens.verify(credentials.strip())
        return CallerOutcome.BAD_TOKEN if grant is None else Caller(grant.subject, Via.TOKEN, grant)
    if scheme.lower() == "basic":
        return await check_basic(auth, credentials.strip(), request.remote or "")
    return CallerOutcome.UNREADABLE


async def check_basic(auth: OriginAuth, credentials: str, address: str) -> Caller | CallerOutcome:
    """A ``Basic`` header's user, if the htpasswd file accepts the password."""
    pair = decode_basic(credentials)
    if pair is None:
        return CallerOutcome.UNREADABLE
    user, password = pair
    if not await check_password(auth, user, password, address):
        return CallerOutcome.BAD_PASSWORD
    return Caller(user, Via.PASSWORD)


async def check_password(auth: OriginAuth, user: str, password: str, address: str) -> bool:
    """Whether ``password`` is ``user``'s; 429 (``RegistryError``) while throttled."""
    wait = auth.throttle.retry_after(user, address)
    if wait is not None:
        raise too_many_attempts(wait)
    valid = await auth.passwords.check(user, password)
    if valid:
        auth.throttle.succeeded(user, address)
    else:
        auth.throttle.failed(user, address)
    return valid


def decode_basic(credentials: str) -> tuple[str, str] | None:
    """``base64(user:password)`` as (user, password); None if it is not that.

    The password's bytes are kept exactly (``surrogateescape``): htpasswd
    hashed the bytes the user typed, whatever their encoding.
    """
    try:
        raw = base64.b64decode(credentials, validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = raw.partition(b":")
    if not sep or not user:
        return None
    try:
        return user.decode(), password.decode(errors="surrogateescape")
    except UnicodeDecodeError:
        return None
