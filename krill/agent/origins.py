"""Several origin replicas, ranked per blob: the owner first, the others when it fails.

Origin replicas sharing one store agree, by rendezvous hashing of a blob's
digest over the live replicas (``krill.rendezvous``), on which of them caches
and seeds it (``origin.storage_replicas``). An agent that asks that replica
first gets the blob from its cache (the store is read once, by the owner), so
a herd's HTTP fallback costs the origins about one read of the store per
blob however many replicas there are; asking any other replica works too,
but reads the store again for every node.

The agent ranks the same way, over the replicas it was given (a list, or a
headless Service's addresses, looked up again every ``REFRESH`` seconds).
It cannot see which replicas the origins count live, so the rankings agree
while every replica is up; when one is down the agent's next choice is the
origins' next owner too, since removing a member keeps every other member's
relative order. A replica that fails to answer (refused, timed out, a 5xx)
is moved to the end of every ranking for ``RETRY_AFTER`` seconds, so the
next blobs skip it at once and it is tried again later. A transfer that
breaks midway resumes with a Range request on the next replica in the
blob's ranking (``OriginHttpTransfer`` asks ``open_response`` again).

What any replica answers as well (manifests, tags, metainfo, delta lookups)
goes to the first replica listed that has not failed lately, and on to the
next when it fails (``FailoverOriginClient``), sharing the same record of
failures.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

import aiohttp
from yarl import URL

from krill.agent.config import AgentConfig
from krill.agent.metrics import AgentMetrics
from krill.agent.sources import BlobNotFound, OriginHttpSource, RoomMaker, SourceUnavailable
from krill.blobstore import BlobStore
from krill.bodies import BodyTooLarge
from krill.clock import SYSTEM_CLOCK, Clock
from krill.digests import Digest
from krill.errortext import error_text
from krill.originclient import Answer, OriginClient
from krill.registry_errors import RegistryError
from krill.rendezvous import rank
from krill.replicas import resolve_replicas

__all__ = [
    "REFRESH",
    "RETRY_AFTER",
    "FailoverOriginClient",
    "OriginSet",
    "RankedOriginSource",
    "origin_client",
    "origin_http_source",
    "origin_set",
]

log = logging.getLogger(__name__)

# Seconds between DNS lookups of a headless Service's addresses.
REFRESH = 5.0
# Seconds a replica that failed stays at the end of every ranking.
RETRY_AFTER = 10.0


class OriginSet:
    """The origin replicas and which of them failed lately."""

    def __init__(
        self,
        members: list[str],
        dns: URL | None = None,
        *,
        retry_after: float = RETRY_AFTER,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.members = list(dict.fromkeys(m.rstrip("/") for m in members))  # as listed
        self.dns = dns
        self.retry_after = retry_after
        self._clock = clock
        self._down_until: dict[str, float] = {}
        self._resolved_at: float | None = None

    async def refresh(self) -> None:
        """Look the Service up again when ``REFRESH`` seconds have passed (no-op for a list)."""
        if self.dns is None:
            return
        now = self._clock.monotonic()
        if self._resolved_at is not None and now - self._resolved_at < REFRESH:
            return
        self._resolved_at = now
        found = await resolve_replicas(self.dns)
        if found and found != self.members:
            log.info("agent.origins dns=%s members=%s", self.dns.host, ",".join(found))
            self.members = found

    def ranking(self, digest: Digest) -> list[str]:
        """The replicas for this blob: its owner first; those that failed lately last."""
        now = self._clock.monotonic()
        ranked = rank(str(digest), self.members)
        up = [m for m in ranked if self._down_until.get(m, 0.0) <= now]
        down = sorted((m for m in ranked if m not in up), key=lambda m: self._down_until[m])
        return up + down

    def failing(self) -> set[str]:
        """The replicas that failed within the last ``retry_after`` seconds."""
        now = self._clock.monotonic()
        return {m for m, until in self._down_until.items() if until > now}

    def failed(self, member: str) -> None:
        if member not in self._down_until or self._down_until[member] <= self._clock.monotonic():
            log.warning("agent.origin_down origin=%s retry_in=%.0fs", member, self.retry_after)
        self._down_until[member] = self._clock.monotonic() + self.retry_after

    def answered(self, member: str) -> None:
        if self._down_until.pop(member, None) is not None:
            log.info("agent.origin_up origin=%s", member)


class RankedOriginSource(OriginHttpSource):
    """The HTTP fallback over several replicas: each request goes down the blob's ranking.

    One ``OriginHttpSource`` per replica does the asking; this class only
    chooses the order, so timeouts, status handling and the transfer's
    Range resume are those of a single origin.
    """

    def __init__(
        self,
        origins: OriginSet,
        session: aiohttp.ClientSession,
        store: BlobStore,
        *,
        primary: str,
        timeout: float,
        resume_attempts: int = 5,
        on_bytes: Callable[[int], None] | None = None,
        room: RoomMaker | None = None,
    ) -> None:
        super().__init__(
            OriginClient(session, primary),
            store,
            timeout=timeout,
            resume_attempts=resume_attempts,
            on_bytes=on_bytes,
            room=room,
        )
        self.origins = origins
        self._session = session
        self._sources: dict[str, OriginHttpSource] = {}

    def _source(self, base: str) -> OriginHttpSource:
        source = self._sources.get(base)
        if source is None:
            source = self._sources[base] = OriginHttpSource(
                OriginClient(self._session, base), self.store, timeout=self._timeout
            )
        return source

    async def open_response(
        self, repository: str, digest: Digest, offset: int
    ) -> aiohttp.ClientResponse:
        """The first replica in the blob's ranking that answers; SourceUnavailable if none.

        BlobNotFound only when every replica that answered said 404 (they share
        a store, so one 404 is almost surely all; the rest are asked anyway, in
        case they do not).
        """
        await self.origins.refresh()
        ranking = self.origins.ranking(digest)
        if not ranking:
            raise SourceUnavailable("no origin replica known (the Service has no addresses yet)")
        errors: list[str] = []
        not_found: BlobNotFound | None = None
        for position, base in enumerate(ranking):
            try:
                response = await self._source(base).open_response(repository, digest, offset)
            except BlobNotFound as exc:
                self.origins.answered(base)
                not_found = exc
                continue
            except SourceUnavailable as exc:
                self.origins.failed(base)
                errors.append(str(exc))
                continue
            self.origins.answered(base)
            log.info(
                "origin_fetch.replica digest=%s origin=%s rank=%d offset=%d",
                digest, base, position, offset,
            )
            return response
        if not_found is not None and not errors:
            raise not_found
        if not_found is not None:
            errors.append(str(not_found))
        raise SourceUnavailable("every origin replica failed: " + "; ".join(errors))


class FailoverOriginClient(OriginClient):
    """Requests that may go to any replica (manifests, tags, metainfo, delta lookups).

    The first replica listed that has not failed lately is asked; one that
    cannot be reached, times out or answers a 5xx is marked failed (the
    ``OriginSet`` the blob fallback shares) and the next is asked with the
    same path, so a pull goes on when the first replica listed is gone.
    """

    def __init__(self, session: aiohttp.ClientSession, origins: OriginSet) -> None:
        super().__init__(session, origins.members[0])
        self.origins = origins

    @property
    def base_url(self) -> str:
        """The replica asked first now (URLs built from it are sent on to others if need be)."""
        return self._preferred()[0]

    @base_url.setter
    def base_url(self, value: str) -> None:
        """Ignored: the replica list decides (``OriginClient.__init__`` sets it)."""

    def _preferred(self) -> list[str]:
        up = [m for m in self.origins.members if m not in self.origins.failing()]
        return up + [m for m in self.origins.members if m not in up]

    async def get_bytes(
        self,
        url: str,
        *,
        limit: int,
        what: str,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        ok: int | None = None,
        seconds: float | None = None,
    ) -> Answer:
        """As ``OriginClient.get_bytes``, from the first replica that answers.

        ``seconds`` bounds each replica's answer: a hung replica times out and
        the next is asked (a bound on the whole would spend it all on the first).
        """
        base = next((m for m in self.origins.members if url.startswith(m + "/")), None)
        if base is None:  # not one of ours (a full URL from elsewhere): as it is
            return await super().get_bytes(
                url, limit=limit, what=what, params=params, headers=headers, ok=ok,
                seconds=seconds,
            )
        path = url[len(base) :]
        candidates = self._preferred()
        for position, member in enumerate(candidates):
            last = position == len(candidates) - 1
            try:
                answer = await super().get_bytes(
                    member + path, limit=limit, what=what, params=params, headers=headers, ok=ok,
                    seconds=seconds,
                )
            except (aiohttp.ClientConnectionError, TimeoutError, OSError) as exc:
                self.origins.failed(member)
                log.warning(
                    "origin.replica_failed what=%s origin=%s error=%r next=%s",
                    what, member, error_text(exc), "none" if last else candidates[position + 1],
                )
                if last:
                    raise
                continue
            except asyncio.CancelledError:  # the caller's deadline ran out on this one
                self.origins.failed(member)
                raise
            if answer.status >= 500 and not last:
                self.origins.failed(member)
                continue
            self.origins.answered(member)
            return answer
        raise AssertionError("unreachable: the last candidate returns or raises")

    def described(self) -> str:
        return "every origin replica (" + ", ".join(self.origins.members) + ")"


def origin_set(config: AgentConfig) -> OriginSet | None:
    """The replicas to rank, or None for one origin (asked as before)."""
    if len(config.origins) <= 1 and not config.origin_dns:
        return None
    dns = URL(config.origin_dns) if config.origin_dns else None
    return OriginSet(config.origins, dns)


def origin_client(
    config: AgentConfig, session: aiohttp.ClientSession, origins: OriginSet | None
) -> OriginClient:
    """The node's client for what any replica answers: failing over along a static list.

    A Service name (``dns+``) is asked by name: it resolves to every replica,
    and the connector tries the next address when one refuses.
    """
    if origins is None or origins.dns is not None:
        return OriginClient(session, config.origin)
    return FailoverOriginClient(session, origins)


def origin_http_source(
    config: AgentConfig,
    session: aiohttp.ClientSession,
    store: BlobStore,
    metrics: AgentMetrics,
    origins: OriginSet | None,
    room: RoomMaker | None = None,
) -> OriginHttpSource:
    """The node's HTTP fallback: one origin as before, or its replicas ranked per blob.

    ``room`` (the node cache) evicts for a blob the disk has no room for."""
    on_bytes = metrics.origin_http_bytes.inc
    if origins is None:
        return OriginHttpSource(
            OriginClient(session, config.origin),
            store,
            timeout=config.origin_timeout,
            resume_attempts=config.origin_resume_attempts,
            on_bytes=on_bytes,
            room=room,
        )
    return RankedOriginSource(
        origins,
        session,
        store,
        primary=config.origin,
        timeout=config.origin_timeout,
        resume_attempts=config.origin_resume_attempts,
        on_bytes=on_bytes,
        room=room,
    )


async def ask_origin(
    origin: OriginClient,
    url: str,
    *,
    what: str,
    limit: int,
    seconds: float,
    headers: Mapping[str, str],
    params: Mapping[str, str] | None = None,
    ok: int | None = None,
    too_large: RegistryError,
) -> Answer:
    """A bounded GET the agent makes for a client (a manifest, a tag list), its failures
    as the registry errors the client gets: ``too_large`` past ``limit``, 503 when no
    origin answers, each within ``seconds`` (containerd then tries the upstream)."""
    try:
        return await origin.get_bytes(
            url, limit=limit, what=what, params=params, headers=headers, ok=ok, seconds=seconds
        )
    except BodyTooLarge:
        raise too_large from None
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        log.warning("origin.unreachable what=%s url=%s error=%r", what, url, error_text(exc))
        raise RegistryError(
            "UNAVAILABLE", f"{origin.described()} is unreachable; try the upstream"
        ) from None
