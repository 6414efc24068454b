"""The tracker's metainfo endpoint backend: fetch from an origin once, keep in memory.

Agents ask the tracker rather than the origin for metainfo so a herd of
nodes starting the same pull costs the origin one metainfo request, not one
per node. Concurrent misses for one digest share a single fetch
(``krill.singleflight``: a client hanging up does not cancel the fetch the
others wait on).

Origins are asked one at a time, each for at most ``origin_timeout``
seconds (agents give up on the swarm after a few seconds, so an origin that
accepts connections but never answers must not hold them for minutes), and
the origin that answered last is asked first: once one origin is known to
hang, later misses do not wait for it again. Any failure of one origin --
an error status, a hang, a malformed or hostile body -- is logged and the
next origin is asked; only when all have failed is the request refused.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import OrderedDict

import aiohttp

from krill.digests import Digest
from krill.errortext import error_text
from krill.metainfo import MetainfoError
from krill.originclient import MetainfoNotFound, OriginClient
from krill.singleflight import SingleFlight

__all__ = ["MetainfoCache", "MetainfoUnavailable"]

log = logging.getLogger(__name__)


class MetainfoUnavailable(Exception):
    """No configured origin could provide the metainfo.

    ``blob_unknown``: every origin asked said it has no such blob (404
    ``BLOB_UNKNOWN``), rather than failing to answer.
    """

    def __init__(self, message: str, blob_unknown: bool = False) -> None:
        super().__init__(message)
        self.blob_unknown = blob_unknown


class MetainfoCache:
    def __init__(
        self,
        origins: list[str],
        max_entries: int,
        origin_timeout: float = 5.0,
        *,
        ssl: ssl.SSLContext | bool = True,
        middlewares: tuple[aiohttp.ClientMiddlewareType, ...] = (),
    ) -> None:
        """``ssl`` and ``middlewares`` are the session's: the origin's CA, node credentials."""
        if max_entries <= 0:
            raise ValueError(f"max_entries must be positive, got {max_entries}")
        self._origins = origins
        self._max_entries = max_entries
        self._origin_timeout = origin_timeout
        self._last_good: str | None = None
        self._entries: OrderedDict[Digest, bytes] = OrderedDict()
        self._fetches: SingleFlight[bytes] = SingleFlight()
        self._session: aiohttp.ClientSession | None = None
        self._ssl = ssl
        self._middlewares = middlewares

    async def start(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self._origin_timeout)
        self._session = aiohttp.ClientSession(
            timeout=timeout,
            connector=aiohttp.TCPConnector(ssl=self._ssl),
            middlewares=self._middlewares,
        )

    async def close(self) -> None:
        await self._fetches.close()
        if self._session is not None:
            await self._session.close()

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, digest: Digest) -> bytes:
        cached = self._entries.get(digest)
        if cached is not None:
            self._entries.move_to_end(digest)
            return cached
        return await self._fetches.run(digest, lambda: self._fetch(digest))

    async def _fetch(self, digest: Digest) -> bytes:
        if not self._origins:
            raise MetainfoUnavailable(
                "this tracker has no --origin configured to fetch metainfo from"
            )
        problems = []
        unknown_everywhere = True
        for origin in self._origins_to_try():
            try:
                body = await self._fetch_from(origin, digest)
            except MetainfoError as exc:
                log.info("tracker.metainfo_origin_failed digest=%s origin=%s reason=%r",
                         digest, origin, str(exc))
                problems.append(str(exc))
                unknown_everywhere = unknown_everywhere and isinstance(exc, MetainfoNotFound)
                continue
            except Exception as exc:  # a bug or hostile answer at one origin must not stop us
                log.warning("tracker.metainfo_origin_error digest=%s origin=%s error=%r",
                            digest, origin, error_text(exc), exc_info=True)
                problems.append(f"{origin}: {error_text(exc)}")
                unknown_everywhere = False
                continue
            self._last_good = origin
            self._remember(digest, body)
            log.info("tracker.metainfo_cached digest=%s origin=%s bytes=%d",
                     digest, origin, len(body))
            return body
        raise MetainfoUnavailable("; ".join(problems), blob_unknown=unknown_everywhere)

    def _origins_to_try(self) -> list[str]:
        """Configured order, except that the origin which answered last goes first."""
        if self._last_good not in self._origins:
            return list(self._origins)
        return [self._last_good] + [o for o in self._origins if o != self._last_good]

    async def _fetch_from(self, origin: str, digest: Digest) -> bytes:
        assert self._session is not None, "MetainfoCache.start() was not called"
        try:
            # The session's total timeout covers the request; this also bounds the check.
            async with asyncio.timeout(self._origin_timeout):
                return await OriginClient(self._session, origin).metainfo(digest)
        except TimeoutError:
            raise MetainfoError(
                f"{origin} did not answer within {self._origin_timeout:g}s"
            ) from None

    def _remember(self, digest: Digest, body: bytes) -> None:
        self._entries[digest] = body
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
