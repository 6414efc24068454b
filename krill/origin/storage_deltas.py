"""Deltas and their index in the bucket, so every origin on it serves the deltas any computed.

An origin computes a delta when a tag moves (``origin.deltas``) and records
the outcome in its ``DeltaIndex``. On a bucket, each "ok" outcome is then
shared (in the background: deltas are derived data, a lost one is computed
again when asked): the delta blob is written through by its digest, the
repositories holding the target get the delta's layer link in the bucket,
and the target's index object, ``deltas/index/<target hex>.json`` (the
local file's format: base digest -> outcome), gets the entry. Two origins
adding entries for one target at once may lose one (the last PUT wins); it
is computed again on request.

Before a delta lookup (``GET /krill/v1/deltas/<target>?have=...``), an
origin with no usable local entry for the bases offered reads the target's
index object, copies in the delta blobs of the entries for those bases
(verified, ``origin.storage_fill``), records them locally, and reads the
target's link in the named repository, so the unchanged lookup finds them
and links the delta there. The bucket's collection keeps a delta whose
target and base it keeps (``live_deltas``), as the local one does.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Protocol

from aiohttp import web

from krill.digests import Digest
from krill.origin.appkeys import REPOSITORIES, STORE
from krill.origin.deltaindex import DeltaIndex
from krill.origin.storage_deltaindex import delta_of, index_key, parse_index
from krill.origin.storage_metadata import METADATA
from krill.s3backend import S3Backend

__all__ = ["BUCKET_DELTAS", "BucketDeltas"]

log = logging.getLogger(__name__)


class BlobCopier(Protocol):
    """What of ``origin.storage.ObjectStore`` this module uses (passed in, not imported:
    ``origin.storage`` builds this module's object, so importing it back would be a cycle)."""

    async def write_through(self, app: web.Application, digest: Digest) -> None: ...

    async def fill(self, app: web.Application, digest: Digest) -> bool: ...


class BucketDeltas:
    """Shares an origin's delta outcomes through its bucket, and adopts the others'."""

    def __init__(
        self, app: web.Application, backend: S3Backend, objects: BlobCopier, index: DeltaIndex
    ) -> None:
        self.app = app
        self.backend = backend
        self.objects = objects
        self.index = index
        self._loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task[None]] = set()
        index.on_record = self._recorded

    def _recorded(self, target: Digest, base: Digest, entry: dict[str, Any]) -> None:
        """``DeltaIndex.record``'s hook (in a worker thread): share an ok outcome."""
        if delta_of(entry) is not None:
            self._loop.call_soon_threadsafe(self._start, target, base, entry)

    def _start(self, target: Digest, base: Digest, entry: dict[str, Any]) -> None:
        task = self._loop.create_task(self._share(target, base, entry))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _share(self, target: Digest, base: Digest, entry: dict[str, Any]) -> None:
        delta = delta_of(entry)
        assert delta is not None
        try:
            await self.objects.write_through(self.app, delta)
            metadata = self.app.get(METADATA)
            if metadata is not None:
                repos = self.app[REPOSITORIES]
                names = await asyncio.to_thread(lambda: list(repos.names()))
                for name in names:
                    if repos.has_blob(name, delta):
                        await metadata.put_layer_link(name, delta)
            doc = parse_index(await self.backend.get_object(index_key(target)))
            doc[str(base)] = entry
            body = json.dumps(doc, sort_keys=True).encode()
            await self.backend.put_object(index_key(target), body)
        except Exception as exc:  # derived data: another origin computes it again if need be
            log.warning("origin.delta_share_failed target=%s base=%s error=%s", target, base, exc)
            return
        log.info("origin.delta_shared target=%s base=%s delta=%s", target, base, delta)

    async def adopt(self, target: Digest, have: list[Digest], repo: str | None) -> None:
        """Bring in the bucket's deltas to ``target`` from bases in ``have`` (before a lookup)."""
        store = self.app[STORE]
        local = await asyncio.to_thread(self.index.entries, target)
        wanted = {str(h) for h in have}
        if any(
            base in wanted and (d := delta_of(e)) is not None and store.has(d)
            for base, e in local.items()
        ):
            return
        metadata = self.app.get(METADATA)
        if repo is not None and metadata is not None:
            await metadata.read_layer_link(repo, target)
        doc = parse_index(await self.backend.get_object(index_key(target)))
        for base, entry in doc.items():
            delta = delta_of(entry)
            if base not in wanted or delta is None:
                continue
            if await self.objects.fill(self.app, delta):
                await asyncio.to_thread(self.index.record, target, Digest.parse(base), entry, False)
                log.info("origin.delta_adopted target=%s base=%s delta=%s", target, base, delta)

    async def settle(self) -> None:
        """Wait until every outcome recorded so far is shared (or failed to be)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        await self.settle()


BUCKET_DELTAS = web.AppKey("krill_origin_bucket_deltas", BucketDeltas)
