"""``/auth/token``: the realm of the origin's Bearer challenge (distribution token spec).

``GET /auth/token?service=krill&scope=...`` is the token spec's form: Basic
credentials sign the caller in, none gets an anonymous token. ``POST
/auth/token`` is its OAuth2 form (``grant_type=password`` with ``username``
and ``password`` in the body), which containerd tries first when it has a
password; serving it saves containerd a failed request per token.

Either way the token holds the subset of the asked-for access the caller
may have (possibly none: the client learns that from the 401/403 on use),
and wrong credentials are a 401, never a downgrade to an anonymous token.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from aiohttp import hdrs, web

from krill.origin.auth_callers import AUTH, Caller, Via, check_password, identify
from krill.origin.auth_tokens import (
    CATALOG_SCOPE,
    SERVICE,
    TOKEN_PATH,
    Grant,
    RequestedScopes,
    actions_of,
    parse_scopes,
)
from krill.registry_errors import RegistryError

__all__ = ["routes"]

log = logging.getLogger(__name__)

_NO_STORE = {hdrs.CACHE_CONTROL: "no-store"}


def routes() -> list[web.RouteDef]:
    return [
        web.get(TOKEN_PATH, token_by_get, name="auth_token"),
        web.post(TOKEN_PATH, token_by_oauth_post, name="auth_token_oauth"),
    ]


async def token_by_get(request: web.Request) -> web.Response:
    """The token spec's ``GET``: ``scope`` parameters, optional ``Authorization: Basic``."""
    check_service(request.query.get("service"))
    caller = await identify(request.app[AUTH], request)
    if not isinstance(caller, Caller) or caller.via is Via.TOKEN:
        raise bad_credentials()
    grant = grant_for(request, caller, parse_scopes(request.query.getall("scope", [])))
    issued = request.app[AUTH].tokens.issue(grant)
    body = {
        "token": issued.token,
        "access_token": issued.token,
        "expires_in": issued.expires_in,
        "issued_at": issued_at(),
    }
    return web.json_response(body, headers=_NO_STORE)


async def token_by_oauth_post(request: web.Request) -> web.Response:
    """OAuth2's password grant: ``grant_type``, ``username``, ``password``, ``scope`` in a form."""
    form = await request.post()
    check_service(_text(form.get("service")))
    if form.get("grant_type") != "password":
        raise RegistryError(
            "UNSUPPORTED",
            "only grant_type=password is served here (or GET with Basic credentials)",
            status=400,
        )
    auth = request.app[AUTH]
    user, password = _text(form.get("username")), _text(form.get("password"))
    if not user or password is None:
        raise bad_credentials()
    if not await check_password(auth, user, password, request.remote or ""):
        raise bad_credentials()
    grant = grant_for(
        request, Caller(user, Via.PASSWORD), parse_scopes([_text(form.get("scope")) or ""])
    )
    issued = auth.tokens.issue(grant)
    body = {
        "access_token": issued.token,
        "expires_in": issued.expires_in,
        "issued_at": issued_at(),
        "scope": granted_scope(grant),
    }
    return web.json_response(body, headers=_NO_STORE)


def check_service(service: str | None) -> None:
    if service is not None and service != SERVICE:
        raise RegistryError(
            "UNSUPPORTED",
            f"this origin's token service is {SERVICE!r}, not {service[:64]!r}",
            status=400,
        )


def grant_for(request: web.Request, caller: Caller, asked: RequestedScopes) -> Grant:
    grant = Grant.for_request(request.app[AUTH].policy, caller.user, asked)
    log.info("auth.token_issued user=%s access=%s", caller.user, grant.as_claims())
    return grant


def bad_credentials() -> RegistryError:
    return RegistryError(
        "UNAUTHORIZED",
        "invalid username or password (or none, for an anonymous token)",
        headers={hdrs.WWW_AUTHENTICATE: f'Basic realm="{SERVICE}"'},
    )


def granted_scope(grant: Grant) -> str:
    """The OAuth2 ``scope`` answer: what was granted, in the request's own syntax."""
    scopes = [f"repository:{repo}:{','.join(actions_of(p))}" for repo, p in grant.access.items()]
    return " ".join([*scopes, *([CATALOG_SCOPE] if grant.catalog else [])])


def issued_at() -> str:
    """RFC 3339 UTC; informational (expiry is checked on the origin's monotonic clock)."""
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _text(value: object) -> str | None:
    """A form field as text (a file upload or absence is None)."""
    return value if isinstance(value, str) else None
