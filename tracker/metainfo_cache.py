"""The tracker's metainfo endpoint backend: fetch from an origin once, keep in memory.

Agents ask the tracker rather than the origin for metainfo so a herd of
nodes starting the same pull costs the origin one metainfo request, not one
per node. Concurrent misses for one digest share a single fetch.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

import aiohttp

from krill.digests import Digest
from krill.metainfo import MetainfoError, fetch_metainfo

log = logging.getLogger(__name__)


class MetainfoUnavailable(Exception):
    """No configured origin could provide the metainfo."""


class MetainfoCache:
    def __init__(self, origins: list[str], max_entries: int) -> None:
        self._origins = origins
        self._max_entries = max_entries
        self._entries: OrderedDict[Digest, bytes] = OrderedDict()
        self._inflight: dict[Digest, asyncio.Task[bytes]] = {}
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        timeout = aiohttp.ClientTimeout(total=120, connect=5)
        self._session = aiohttp.ClientSession(timeout=timeout)

    async def close(self) -> None:
        for task in self._inflight.values():
            task.cancel()
        if self._session is not None:
            await self._session.close()

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, digest: Digest) -> bytes:
        cached = self._entries.get(digest)
        if cached is not None:
            self._entries.move_to_end(digest)
            return cached
        task = self._inflight.get(digest)
        if task is None:
            task = asyncio.create_task(self._fetch(digest))
            self._inflight[digest] = task
            task.add_done_callback(lambda _t: self._inflight.pop(digest, None))
        # shield: one impatient client hanging up must not cancel the fetch others wait on.
        return await asyncio.shield(task)

    async def _fetch(self, digest: Digest) -> bytes:
        if not self._origins:
            raise MetainfoUnavailable(
                "this tracker has no --origin configured to fetch metainfo from"
            )
        assert self._session is not None, "MetainfoCache.start() was not called"
        problems = []
        for origin in self._origins:
            try:
                body = await fetch_metainfo(self._session, origin, digest)
            except MetainfoError as exc:
                problems.append(str(exc))
                continue
            self._remember(digest, body)
            log.info("tracker.metainfo_cached digest=%s origin=%s bytes=%d",
                     digest, origin, len(body))
            return body
        raise MetainfoUnavailable("; ".join(problems))

    def _remember(self, digest: Digest, body: bytes) -> None:
        self._entries[digest] = body
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
