"""Pull-through mode: fetch what the origin lacks from the upstream registry, once.

Manifests: a tag is served from the store while it is younger than
``tag_ttl`` seconds, then resolved upstream again (a move is recorded in the
tag history and announced to ``TAG_MOVED`` hooks); if upstream is down or no
longer has the tag (say it was pushed here), the stored one is served.
Manifests by digest are fetched only when missing.

Blobs: concurrent misses of one digest make one upstream GET: a
``BlobFill`` (``origin.blobfill``) downloads it into the store in a task of
its own, and every client of that repository streams from the growing file
at its own pace (a stalled client stalls nobody else), the last byte held
back until the digest is verified, so no client ever receives a complete
body that does not match its digest. A client asking for the same digest in
another repository waits for that fetch; if upstream refused it there (404,
401/403) it fetches on its own, since upstream may grant one repository and
not another. Nothing is read whole into memory.

Prefetch: when a refresh finds a tag moved, the delta engine (given this
object as its ``deltas.Prefetch``) has the new version's child manifests and
changed layers fetched before pairing them, for the platforms whose earlier
version the mirror holds, ``upstream_prefetch_concurrency`` blobs at a time.
A prefetch is an ordinary ``BlobFill``: a client asking for the same blob
meanwhile streams from it, and a client's fill already under way is joined.
A failed prefetch is logged; the blob is fetched again when a client asks.

Tags list and catalog stay local: they show what the origin holds, not
everything upstream has.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import web

from krill import oci
from krill.clock import SYSTEM_CLOCK, Clock, timeout
from krill.digests import Digest
from krill.endpoints import BLOB_SOURCE_HEADER
from krill.origin.appkeys import METRICS, REPOSITORIES, STORE
from krill.origin.blobfill import BlobFill
from krill.origin.blobresponses import blob_file_response, blob_head_response, blob_headers
from krill.origin.cacheretention import STAMP_INTERVAL
from krill.origin.config import OriginConfig
from krill.origin.errors import blob_unknown
from krill.origin.manifests import store_manifest
from krill.origin.tagging import move_tag
from krill.origin.upstream import UpstreamClient, UpstreamDenied, UpstreamNotFound, unavailable
from krill.registry_errors import RegistryError
from krill.singleflight import SingleFlight

__all__ = ["PULL_THROUGH", "PullThrough"]

log = logging.getLogger(__name__)


class PullThrough:
    def __init__(
        self, app: web.Application, config: OriginConfig, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.app = app
        self.config = config
        self.clock = clock  # the tag TTL and the wait for a tag's refresh are timed on it
        assert config.upstream is not None
        self.upstream = UpstreamClient(
            config.upstream,
            config.upstream_auth(),
            timeout=config.upstream_timeout,
            token_hosts=tuple(config.upstream_token_hosts),
        )
        self._manifest_flights: SingleFlight[Digest] = SingleFlight()
        self._fills: dict[Digest, BlobFill] = {}
        self._resolved_at: dict[tuple[str, str], float] = {}
        self._stamped: dict[tuple[str, str], float] = {}  # last access stamp written

    async def start(self) -> None:
        await self.upstream.start()

    async def close(self) -> None:
        fills = list(self._fills.values())
        for fill in fills:
            fill.cancel()
        await asyncio.gather(*(fill.task for fill in fills), return_exceptions=True)
        await self._manifest_flights.close()
        await self.upstream.close()

    def _count(self, kind: str) -> None:
        self.app[METRICS].upstream_fetches.labels(kind).inc()

    # manifests

    async def resolve_manifest(self, repo: str, reference: Digest | str) -> Digest:
        """The digest of ``reference`` in ``repo``, stored locally (fetched if needed).

        Stamps the manifest's last access (at most once per ``STAMP_INTERVAL``)
        for the cache retention (``origin.cacheretention``).
        """
        digest = await self._resolve(repo, reference)
        key = (repo, str(digest))
        stamped = self._stamped.get(key)
        if stamped is None or self.clock.monotonic() - stamped >= STAMP_INTERVAL:
            self._stamped[key] = self.clock.monotonic()
            await asyncio.to_thread(self.app[REPOSITORIES].stamp_access, repo, digest)
        return digest

    async def _resolve(self, repo: str, reference: Digest | str) -> Digest:
        repos = self.app[REPOSITORIES]
        if isinstance(reference, Digest):
            if repos.manifest_media_type(repo, reference) is not None:
                return reference
            key = (repo, str(reference))
            return await self._manifest_flights.run(key, lambda: self._fetch(repo, reference))
        local = repos.get_tag(repo, reference)
        key = (repo, reference)
        if local is None:
            return await self._manifest_flights.run(key, lambda: self._fetch(repo, reference))
        if self._fresh(repo, reference):
            return local
        try:
            async with timeout(self.clock, self.config.upstream_tag_timeout):
                return await self._manifest_flights.run(key, lambda: self._fetch(repo, reference))
        except TimeoutError:
            reason = f"no answer within {self.config.upstream_tag_timeout}s"
        except RegistryError as exc:
            if exc.code not in ("UNAVAILABLE", "MANIFEST_UNKNOWN"):
                raise
            reason = str(exc)
        # Serve the stored tag, and don't ask again (or wait again) until the TTL passes;
        # a fetch still under way finishes in the background and updates the tag.
        self._resolved_at[key] = self.clock.monotonic()
        log.warning("upstream.stale_tag repo=%s tag=%s reason=%s", repo, reference, reason)
        return local

    def _fresh(self, repo: str, tag: str) -> bool:
        resolved = self._resolved_at.get((repo, tag))
        return resolved is not None and self.clock.monotonic() - resolved < self.config.tag_ttl

    async def _fetch(self, repo: str, reference: Digest | str) -> Digest:
        self._count("manifest")
        try:
            fetched = await self.upstream.get_manifest(
                repo, str(reference), self.config.max_manifest_size
            )
        except UpstreamNotFound:
            raise RegistryError(
                "MANIFEST_UNKNOWN",
                f"manifest {reference} is not known here or upstream in {repo}",
                detail={"name": repo, "reference": str(reference)},
            ) from None
        digest = Digest.of_bytes(fetched.body)
        expected = reference if isinstance(reference, Digest) else fetched.digest
        if expected is not None and expected != digest:
            raise unavailable(f"upstream manifest {repo}:{reference} does not match {expected}")
        try:
            parsed = oci.parse_manifest(fetched.body, fetched.media_type or None)
        except oci.ManifestError as exc:
            raise unavailable(f"upstream manifest {repo}:{reference} is invalid: {exc}") from None
        await asyncio.to_thread(store_manifest, self.app, repo, digest, fetched.body, parsed)
        log.info("upstream.manifest repo=%s reference=%s digest=%s", repo, reference, digest)
        if isinstance(reference, str):
            await move_tag(self.app, repo, reference, digest)
            self._resolved_at[(repo, reference)] = self.clock.monotonic()
        return digest

    # prefetch (deltas.Prefetch), for a tag that moved upstream

    async def prefetch_manifests(self, repo: str, digests: list[Digest]) -> None:
        """Store these manifests of ``repo`` (child manifests of a moved tag's index)."""
        await self._bounded(repo, digests, "manifest", self.resolve_manifest)

    async def prefetch_blobs(self, repo: str, digests: list[Digest]) -> None:
        """Fetch these blobs of ``repo`` into the store, sharing any fill already under way."""
        await self._bounded(repo, digests, "blob", self._fetch_blob)

    async def _bounded(
        self,
        repo: str,
        digests: list[Digest],
        kind: str,
        fetch: Callable[[str, Digest], Awaitable[object]],
    ) -> None:
        """Run ``fetch`` for each digest, a few at a time; log (don't raise) failures."""
        limit = asyncio.Semaphore(self.config.upstream_prefetch_concurrency)

        async def one(digest: Digest) -> None:
            async with limit:
                await fetch(repo, digest)

        results = await asyncio.gather(*(one(d) for d in digests), return_exceptions=True)
        for digest, result in zip(digests, results, strict=True):
            if isinstance(result, asyncio.CancelledError):
                raise result
            if isinstance(result, Exception):
                log.warning(
                    "upstream.prefetch_failed repo=%s kind=%s digest=%s error=%s",
                    repo,
                    kind,
                    digest,
                    result,
                )
        log.info("upstream.prefetched repo=%s kind=%s count=%d", repo, kind, len(digests))

    async def _fetch_blob(self, repo: str, digest: Digest) -> None:
        fill = self._fills.get(digest)
        if fill is not None and fill.repo != repo:
            await self._wait_for_other_repository(fill)
            fill = self._fills.get(digest)
        if self.app[STORE].has(digest):
            return
        if fill is None or fill.repo != repo:
            fill = self._start_fill(repo, digest)
        await asyncio.shield(fill.done)

    # blobs

    async def serve_blob(
        self, request: web.Request, repo: str, digest: Digest
    ) -> web.StreamResponse:
        """Answer a blob GET/HEAD the origin cannot serve from ``repo`` yet."""
        fill = self._fills.get(digest)
        if fill is not None and fill.repo != repo:
            await self._wait_for_other_repository(fill)
            fill = self._fills.get(digest)
            if fill is not None and fill.repo != repo:
                fill = None  # a third repository's fetch; ask upstream for ours below
        if fill is not None and request.method == "GET":
            return await self._stream(request, fill)
        if fill is not None:  # HEAD while our repository's fetch runs
            return blob_head_response(digest, await asyncio.shield(fill.headers))
        if self.app[STORE].has(digest) or request.method == "HEAD":
            return await self._serve_after_upstream_head(request, repo, digest)
        return await self._stream(request, self._start_fill(repo, digest))

    async def _wait_for_other_repository(self, fill: BlobFill) -> None:
        """Wait for another repository's fetch of the blob; its refusal says nothing of ours.

        Upstream may hold the blob in our repository but not in theirs (404) or
        let us read ours but not theirs (401/403): then we try on our own.
        """
        try:
            await asyncio.shield(fill.done)
        except RegistryError as exc:
            if not _refused_for_repository(exc):
                raise
            log.info("upstream.blob_retry digest=%s other_repo=%s", fill.digest, fill.repo)

    def _start_fill(self, repo: str, digest: Digest) -> BlobFill:
        self._count("blob")
        fill = BlobFill(
            self.app[STORE],
            repo,
            digest,
            open_upstream=lambda: self._open_blob(repo, digest),
            on_committed=lambda: self._committed(repo, digest),
        )
        self._fills[digest] = fill
        fill.task.add_done_callback(lambda _t: self._fill_finished(fill))
        return fill

    def _fill_finished(self, fill: BlobFill) -> None:
        if self._fills.get(fill.digest) is fill:
            del self._fills[fill.digest]

    @contextlib.asynccontextmanager
    async def _open_blob(
        self, repo: str, digest: Digest
    ) -> AsyncIterator[tuple[int | None, aiohttp.StreamReader]]:
        try:
            async with self.upstream.get_blob(repo, digest) as upstream:
                yield upstream.content_length, upstream.content
        except UpstreamNotFound:
            raise blob_unknown(digest) from None

    async def _committed(self, repo: str, digest: Digest) -> None:
        await asyncio.to_thread(self.app[REPOSITORIES].link_blob, repo, digest)
        size = self.app[STORE].size(digest)
        log.info("upstream.blob repo=%s digest=%s bytes=%s", repo, digest, size)

    async def _stream(self, request: web.Request, fill: BlobFill) -> web.StreamResponse:
        headers = {**blob_headers(fill.digest), BLOB_SOURCE_HEADER: "upstream"}
        response = await fill.stream(request, headers)
        if response is None:  # committed before this client started: still fetched for it
            committed = blob_file_response(self.app, fill.digest)
            committed.headers[BLOB_SOURCE_HEADER] = "upstream"
            return committed
        return response

    async def _serve_after_upstream_head(
        self, request: web.Request, repo: str, digest: Digest
    ) -> web.StreamResponse:
        """HEAD, or a blob stored for another repository: ask upstream whether ``repo`` has it."""
        self._count("blob_head")
        try:
            size = await self.upstream.head_blob(repo, digest)
        except UpstreamNotFound:
            size = None
        if size is None:
            raise blob_unknown(digest)
        if self.app[STORE].has(digest):
            self.app[REPOSITORIES].link_blob(repo, digest)
            return blob_file_response(self.app, digest)
        return blob_head_response(digest, size)


# None unless the origin mirrors an upstream registry.
PULL_THROUGH: web.AppKey[PullThrough | None] = web.AppKey("krill_origin_pull_through")


def _refused_for_repository(exc: RegistryError) -> bool:
    """Upstream said 'not here' or 'not for you' about one repository."""
    return exc.code == "BLOB_UNKNOWN" or isinstance(exc, UpstreamDenied)
