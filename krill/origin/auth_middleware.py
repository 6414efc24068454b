"""Authentication and authorization of the origin's registry API (``krill origin --auth``).

``install_auth(app, clock)`` is the origin's one hook: with ``auth`` unset it
logs, once, that the origin is open to anyone who can reach it and changes
nothing; with an auth file it adds ``auth_middleware`` (innermost, so its
``RegistryError`` answers are rendered and counted like any other) and the
token endpoint (``origin.auth_endpoint``).

Each ``/v2/`` request is mapped to what it needs (``needed_access``): a
repository and a permission (GET/HEAD read, DELETE delete, anything else
and every upload-session request write), the catalog, or just "signed in"
for the ``/v2/`` probe. Then:

- allowed → the handler runs;
- not signed in (or a token lacking the scope) → 401 ``UNAUTHORIZED`` with
  ``WWW-Authenticate: Bearer realm=".../auth/token",service="krill",scope=...``;
- signed in and not allowed → 403 ``DENIED``.

The ``/v2/`` probe is 401 for a request without credentials even when some
repositories are anonymous-readable: that challenge is how skopeo and
containerd learn where the token endpoint is (containers/image only sends
credentials to a registry whose probe challenged it), and an anonymous
client gets an anonymous token there. Direct anonymous requests to
anonymous-readable repositories are served without one.

The catalog is answered here, filtered to what the caller may read (paged
with the catalog's own ``n``/``last``); a tag list needs read on its
repository like any other read. A blob mount (``POST ...?mount=&from=``)
from a repository the caller may not read becomes a plain upload, as the
spec lets a registry do with any mount it declines: no one learns another
repository's blobs by mounting them.

``/krill/v1/*`` (metainfo, deltas, piece claims and blobs) is for Krill's
own nodes: it serves any blob by digest, whatever repository it is in, so it
needs a user the auth file lists under ``nodes`` (401 with a Basic challenge
without credentials, 403 for a user who is not a node). A node may also read
any ``/v2/<name>/blobs/<digest>`` for the same reason (its HTTP fallback asks
there); manifests, tags and the catalog it gets only as the rules say, so a
node cannot list or resolve a private repository without a client's
credentials. ``/health``, ``/ready`` and ``/metrics`` stay open.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import hdrs, web

from krill.clock import SYSTEM_CLOCK, Clock
from krill.origin import auth_endpoint
from krill.origin.appkeys import CALLER_USER, CONFIG, REPOSITORIES
from krill.origin.auth_callers import AUTH, Caller, CallerOutcome, OriginAuth, Via, identify
from krill.origin.auth_config import load_auth_settings
from krill.origin.auth_passwords import PasswordChecker
from krill.origin.auth_rules import Decision, Permission
from krill.origin.auth_throttle import LoginThrottle
from krill.origin.auth_tokens import (
    CATALOG_SCOPE,
    SERVICE,
    TOKEN_PATH,
    TokenIssuer,
    actions_of,
)
from krill.origin.listing_routes import paginate
from krill.registry_errors import RegistryError
from krill.registry_params import parse_name

__all__ = ["auth_middleware", "install_auth"]

log = logging.getLogger(__name__)

_UPLOADS = "/blobs/uploads/"
_BLOBS = "/blobs/"
_NODE_PREFIX = "/krill/v1/"
# Nodes send Basic credentials up front (krill.nodeauth); the realm names what is asked for.
_NODE_CHALLENGE = 'Basic realm="krill nodes", charset="UTF-8"'
_METHOD_PERMISSIONS = {
    hdrs.METH_GET: Permission.READ,
    hdrs.METH_HEAD: Permission.READ,
    hdrs.METH_DELETE: Permission.DELETE,
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def install_auth(app: web.Application, clock: Clock = SYSTEM_CLOCK) -> None:
    """Protect ``app`` as its config's ``auth`` file says; warn once if there is none."""
    path = app[CONFIG].auth
    if path is None:
        log.warning(
            "origin.auth_disabled anyone who can reach this origin can push, overwrite tags "
            "and delete; run it with --auth FILE (docs/security.md) or only on a trusted network"
        )
        return
    settings = load_auth_settings(path)
    passwords = PasswordChecker(
        settings.htpasswd, cache_seconds=settings.credential_cache, clock=clock
    )
    tokens = TokenIssuer(
        settings.token_ttl, clock, settings.token_keys, leeway=settings.token_leeway
    )
    app[AUTH] = OriginAuth(settings, passwords, tokens, LoginThrottle(clock))
    app.middlewares.append(auth_middleware)
    app.router.add_routes(auth_endpoint.routes())
    log.info(
        "origin.auth_enabled rules=%d users=%d htpasswd=%s token_keys=%s",
        len(settings.policy.rules),
        len(passwords.users),
        settings.htpasswd,
        "this process" if settings.token_keys is None else len(settings.token_keys.keys),
    )


class NeedKind(enum.Enum):
    OPEN = "open"  # not the registry API: /health, /metrics, /auth/token
    NODE = "node"  # /krill/v1/*: blobs by digest, for the auth file's nodes only
    SIGNED_IN = "signed_in"  # the /v2/ probe (and /v2/ paths no route knows)
    CATALOG = "catalog"
    REPOSITORY = "repository"


@dataclass(frozen=True)
class Need:
    kind: NeedKind
    repository: str = ""
    permission: Permission = Permission.READ
    blob: bool = False  # GET/HEAD /v2/<name>/blobs/<digest>, which nodes may read anywhere


def needed_access(request: web.Request) -> Need:
    """What ``request`` needs, from its path and method."""
    path = request.path
    if path.startswith(_NODE_PREFIX):
        return Need(NeedKind.NODE)
    if not path.startswith("/v2/"):
        return Need(NeedKind.OPEN)
    if path == "/v2/_catalog":
        return Need(NeedKind.CATALOG)
    name = request.match_info.get("name")
    if not name:
        return Need(NeedKind.SIGNED_IN)
    parse_name(name)  # NAME_INVALID before a hostile name reaches a header, a log or a cache
    rest = path[len("/v2/") + len(name) :]
    if rest.startswith(_UPLOADS):
        return Need(NeedKind.REPOSITORY, name, Permission.WRITE)
    permission = _METHOD_PERMISSIONS.get(request.method, Permission.WRITE)
    blob = permission is Permission.READ and rest.startswith(_BLOBS)
    return Need(NeedKind.REPOSITORY, name, permission, blob)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Let a request through only if its caller may do what it asks (see module doc)."""
    need = needed_access(request)
    if need.kind is NeedKind.OPEN:
        return await handler(request)
    auth = request.app[AUTH]
    caller = await identify(auth, request)
    if isinstance(caller, CallerOutcome):
        if need.kind is NeedKind.NODE:  # nodes sign in with Basic, never with a token
            raise node_unauthorized("invalid node credentials (--origin-credentials)")
        raise unauthorized(request, need, caller)
    if need.kind is NeedKind.NODE or (need.blob and is_node(auth, caller)):
        check_node(auth, caller, request.path)
        return await handler(request)
    if need.kind is NeedKind.SIGNED_IN:
        if caller.via is Via.NOTHING:
            raise unauthorized(request, need)
        return await handler(request)
    if need.kind is NeedKind.CATALOG:
        return await catalog(request, auth, caller, need)
    decision = decide(auth, caller, need.repository, need.permission)
    if decision is Decision.DENIED:
        raise denied(need, caller)
    if decision is Decision.UNAUTHENTICATED:
        raise unauthorized(request, need, insufficient_scope=token_lacks_scope(auth, caller, need))
    checked = without_unreadable_mount(request, auth, caller)
    if caller.user is not None:
        checked[CALLER_USER] = caller.user
    return await handler(checked)


def is_node(auth: OriginAuth, caller: Caller) -> bool:
    return caller.user is not None and caller.user in auth.settings.nodes


def check_node(auth: OriginAuth, caller: Caller, path: str) -> None:
    """Raise 401 for a caller without credentials, 403 for one who is not a node."""
    if caller.via is Via.NOTHING:
        raise node_unauthorized(
            "Krill's node endpoints need a node's credentials (--origin-credentials)"
        )
    if not is_node(auth, caller):
        log.info("auth.node_refused user=%s path=%r", caller.user, path[:128])
        raise RegistryError(
            "DENIED", f"{caller.user} is not a node (the auth file's nodes = [...] lists them)"
        )


def node_unauthorized(message: str) -> RegistryError:
    """401 with the Basic challenge of the node endpoints (docs/security.md)."""
    return RegistryError("UNAUTHORIZED", message, headers={hdrs.WWW_AUTHENTICATE: _NODE_CHALLENGE})


def decide(auth: OriginAuth, caller: Caller, repository: str, needed: Permission) -> Decision:
    """The policy's decision, except that a token must also carry the access.

    A token without the scope gets 401 (ask for a token with it) when the
    policy would allow its subject, so the client's next token works.
    """
    decision = auth.policy.decide(repository, caller.user, needed)
    if caller.grant is not None and decision is Decision.ALLOWED:
        if not caller.grant.allows(repository, needed):
            return Decision.UNAUTHENTICATED
    return decision


def token_lacks_scope(auth: OriginAuth, caller: Caller, need: Need) -> bool:
    """A token whose subject may do this but which was not granted it (a new one would be)."""
    allowed = auth.policy.decide(need.repository, caller.user, need.permission)
    return caller.grant is not None and allowed is Decision.ALLOWED


def without_unreadable_mount(request: web.Request, auth: OriginAuth, caller: Caller) -> web.Request:
    """A mount from a repository the caller may not read, turned into a plain upload."""
    source = request.query.get("from")
    if request.method != hdrs.METH_POST or source is None or "mount" not in request.query:
        return request
    if decide(auth, caller, source, Permission.READ) is Decision.ALLOWED:
        return request
    log.info("auth.mount_declined user=%s from=%r", caller.user, source[:256])
    query = {k: v for k, v in request.query.items() if k not in ("mount", "from")}
    return request.clone(rel_url=request.rel_url.with_query(query))


async def catalog(
    request: web.Request, auth: OriginAuth, caller: Caller, need: Need
) -> web.Response:
    """``/v2/_catalog`` with only the repositories the caller may read."""
    if caller.grant is not None and not caller.grant.catalog:
        raise unauthorized(request, need, insufficient_scope=True)
    names = auth.policy.readable(request.app[REPOSITORIES].names(), caller.user)
    page, headers = paginate(request, names, "/v2/_catalog")
    return web.json_response({"repositories": page}, headers=headers)


def unauthorized(
    request: web.Request,
    need: Need,
    outcome: CallerOutcome | None = None,
    *,
    insufficient_scope: bool = False,
) -> RegistryError:
    """401 UNAUTHORIZED with the Bearer challenge that leads the client to a token."""
    params = {"realm": realm(request), "service": SERVICE}
    scope = challenge_scope(need)
    if scope:
        params["scope"] = scope
    if outcome is CallerOutcome.BAD_TOKEN:
        params["error"] = "invalid_token"
    elif insufficient_scope:
        params["error"] = "insufficient_scope"
    challenge = "Bearer " + ",".join(f'{key}="{value}"' for key, value in params.items())
    message = "authentication required" if outcome is None else "invalid credentials"
    return RegistryError(
        "UNAUTHORIZED",
        message,
        detail=access_detail(need),
        headers={hdrs.WWW_AUTHENTICATE: challenge},
    )


def denied(need: Need, caller: Caller) -> RegistryError:
    log.info(
        "auth.denied user=%s repository=%s permission=%s",
        caller.user,
        need.repository,
        need.permission.value,
    )
    return RegistryError(
        "DENIED",
        f"{caller.user} may not {need.permission.value} {need.repository}",
        detail=access_detail(need),
    )


def challenge_scope(need: Need) -> str | None:
    """The token scope to ask for: push asks pull too, as docker and skopeo do."""
    if need.kind is NeedKind.CATALOG:
        return CATALOG_SCOPE
    if need.kind is not NeedKind.REPOSITORY:
        return None
    actions = {Permission.READ, need.permission}
    return f"repository:{need.repository}:{','.join(actions_of(actions))}"


def access_detail(need: Need) -> list[dict[str, str]] | None:
    """The error's ``detail``, in the shape distribution uses for auth errors."""
    if need.kind is NeedKind.REPOSITORY:
        actions = actions_of({need.permission})
        return [{"Type": "repository", "Name": need.repository, "Action": actions[0]}]
    if need.kind is NeedKind.CATALOG:
        return [{"Type": "registry", "Name": "catalog", "Action": "*"}]
    return None


def realm(request: web.Request) -> str:
    """The token endpoint's URL as this client reached the origin (or the configured one)."""
    configured = request.app[AUTH].settings.realm
    if configured:
        return configured
    host = request.host.replace('"', "").replace("\\", "")
    return f"{request.scheme}://{host}{TOKEN_PATH}"
