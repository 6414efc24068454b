"""Who may read what through the agent: the origin decides, the agent remembers briefly.

An agent holds every blob any client on its node pulled, and with node
credentials it can fetch any blob by digest (``krill.nodeauth``). Without a
check here, a pod on the node without the pull secret would get a private
image's layers just by naming them, from the cache or through the agent's
own credentials (spegel#167). So an agent with node credentials asks the
origin, with the *client's* ``Authorization`` (or none), for each
``(repository, manifest or blob, credential)`` before serving it: a
``HEAD`` of the same path. 200 serves it; 401 is passed on with the origin's
challenge (its realm pointed at the agent's own ``/auth/token``, which
forwards to the origin's, so a client that can reach only the agent can
still follow it); 403 is ``DENIED``; 404 is the unknown blob or manifest.

Decisions are kept for ``ttl`` seconds under the SHA-256 of the credential
(never the credential itself), so a pull of ten layers costs the origin a
handful of HEADs, and a revoked password or expired token stops working
within ``ttl``. When the origin cannot be asked, the last decision for the
same key is used however old (a node keeps serving the clients it served
through an origin outage); with none, the request is refused 503: an
unreachable origin never opens a private repository.

An agent without node credentials does not check: it can fetch only what
anonymous may read (its origin requests carry no credential but a client's
for manifests), so its cache holds nothing private to protect.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import re
from collections import OrderedDict
from dataclasses import dataclass

import aiohttp

from krill.clock import SYSTEM_CLOCK, Clock
from krill.clock import timeout as clock_timeout
from krill.errortext import error_text
from krill.originclient import OriginClient

__all__ = ["Access", "AccessDecision", "RepositoryAccess", "agent_realm_challenge"]

log = logging.getLogger(__name__)

_REALM = re.compile(r'realm="[^"]*"')


class Access(enum.Enum):
    """What the origin said about one client reading one path."""

    ALLOWED = "allowed"
    UNAUTHORIZED = "unauthorized"  # 401: sign in (the challenge says where)
    DENIED = "denied"  # 403: signed in, not allowed
    NOT_FOUND = "not_found"  # 404: allowed to ask, nothing there
    UNAVAILABLE = "unavailable"  # the origin could not be asked, and nothing is remembered


@dataclass(frozen=True)
class AccessDecision:
    access: Access
    challenge: str | None = None  # the origin's WWW-Authenticate on a 401


_STATUSES = {
    200: Access.ALLOWED,
    401: Access.UNAUTHORIZED,
    403: Access.DENIED,
    404: Access.NOT_FOUND,
}


class RepositoryAccess:
    """The origin's decisions for (path, credential), kept ``ttl`` seconds on ``clock``."""

    def __init__(
        self,
        origin: OriginClient,
        *,
        ttl: float = 30.0,
        timeout: float = 5.0,
        max_entries: int = 4096,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._origin = origin
        self._ttl = ttl
        self._timeout = timeout
        self._max_entries = max_entries
        self._clock = clock
        self._decisions: OrderedDict[bytes, tuple[AccessDecision, float]] = OrderedDict()

    async def manifest(
        self, repository: str, reference: str, authorization: str | None
    ) -> AccessDecision:
        return await self._decide(self._origin.manifest_url(repository, reference), authorization)

    async def blob(self, repository: str, digest: str, authorization: str | None) -> AccessDecision:
        return await self._decide(self._origin.blob_url(repository, digest), authorization)

    async def _decide(self, url: str, authorization: str | None) -> AccessDecision:
        key = _key(url, authorization)
        remembered = self._decisions.get(key)
        now = self._clock.monotonic()
        if remembered is not None and remembered[1] > now:
            return remembered[0]
        decision = await self._ask(url, authorization)
        if decision.access is Access.UNAVAILABLE:
            return remembered[0] if remembered is not None else decision
        self._remember(key, decision, now + self._ttl)
        return decision

    async def _ask(self, url: str, authorization: str | None) -> AccessDecision:
        try:
            async with clock_timeout(self._clock, self._timeout):
                status, challenge = await self._origin.head(url, authorization=authorization)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("access.origin_unreachable url=%s error=%r", url, error_text(exc))
            return AccessDecision(Access.UNAVAILABLE)
        access = _STATUSES.get(status, Access.UNAVAILABLE)
        log.debug("access.decided url=%s status=%d access=%s", url, status, access.value)
        return AccessDecision(access, challenge if access is Access.UNAUTHORIZED else None)

    def _remember(self, key: bytes, decision: AccessDecision, until: float) -> None:
        self._decisions[key] = (decision, until)
        self._decisions.move_to_end(key)
        while len(self._decisions) > self._max_entries:
            self._decisions.popitem(last=False)


def agent_realm_challenge(challenge: str | None, token_url: str) -> str:
    """The origin's Bearer challenge with its realm pointed at the agent's token endpoint.

    Without one from the origin (an older origin, a proxy), a bare challenge
    the client can still follow to the agent.
    """
    if not challenge:
        return f'Bearer realm="{token_url}",service="krill"'
    if _REALM.search(challenge) is None:
        return challenge
    return _REALM.sub(f'realm="{token_url}"', challenge, count=1)


def _key(url: str, authorization: str | None) -> bytes:
    hasher = hashlib.sha256(url.encode())
    hasher.update(b"\0")
    hasher.update((authorization or "").encode("utf-8", "surrogateescape"))
    return hasher.digest()
