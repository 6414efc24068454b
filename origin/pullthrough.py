"""Pull-through mode: fetch what the origin lacks from the upstream registry, once.

Manifests: a tag is served from the store while it is younger than
``tag_ttl`` seconds, then resolved upstream again (a move is recorded in the
tag history and announced to ``TAG_MOVED`` hooks); if upstream is down or no
longer has the tag (say it was pushed here), the stored one is served.
Manifests by digest are fetched only when missing.

Blobs: concurrent misses of one digest make one upstream GET (single-flight).
The leader streams the upstream body into the store (hashed as it arrives)
and to its own client at the same time, holding back the last chunk until
the digest is verified, so no client ever receives a complete body that does
not match its digest. Followers wait for the commit and are served the file
with sendfile. Nothing is read whole into memory.

Tags list and catalog stay local: they show what the origin holds, not
everything upstream has.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
from aiohttp import web

from krill import oci
from krill.blobstore import BlobWriter, DigestMismatchError, SizeMismatchError
from krill.digests import Digest
from krill.registry_errors import RegistryError
from origin.appkeys import METRICS, REPOSITORIES, STORE
from origin.blob_routes import blob_file_response, blob_unknown
from origin.config import OriginConfig
from origin.params import API_HEADERS
from origin.singleflight import SingleFlight
from origin.tagging import move_tag
from origin.upstream import UpstreamClient, UpstreamNotFound, unavailable

log = logging.getLogger(__name__)

STREAM_CHUNK = 1 << 20


class UpstreamBlobCorrupt(Exception):
    """The upstream sent bytes that do not match the blob's digest; the transfer was cut."""


class PullThrough:
    def __init__(self, app: web.Application, config: OriginConfig) -> None:
        self.app = app
        self.config = config
        assert config.upstream is not None
        self.upstream = UpstreamClient(
            config.upstream, config.upstream_auth(), timeout=config.upstream_timeout
        )
        self._manifest_flights: SingleFlight[Digest] = SingleFlight()
        self._blob_flights: SingleFlight[None] = SingleFlight()
        self._resolved_at: dict[tuple[str, str], float] = {}

    async def start(self) -> None:
        await self.upstream.start()

    async def close(self) -> None:
        await self.upstream.close()

    def _count(self, kind: str) -> None:
        self.app[METRICS].upstream_fetches.labels(kind).inc()

    # manifests

    async def resolve_manifest(self, repo: str, reference: Digest | str) -> Digest:
        """The digest of ``reference`` in ``repo``, stored locally (fetched if needed)."""
        repos = self.app[REPOSITORIES]
        if isinstance(reference, Digest):
            if repos.manifest_media_type(repo, reference) is not None:
                return reference
            key = (repo, str(reference))
            return await self._manifest_flights.run(key, lambda: self._fetch(repo, reference))
        local = repos.get_tag(repo, reference)
        if local is not None and self._fresh(repo, reference):
            return local
        key = (repo, reference)
        try:
            return await self._manifest_flights.run(key, lambda: self._fetch(repo, reference))
        except RegistryError as exc:
            if local is None or exc.code not in ("UNAVAILABLE", "MANIFEST_UNKNOWN"):
                raise
            log.warning("upstream.stale_tag repo=%s tag=%s reason=%s", repo, reference, exc)
            return local

    def _fresh(self, repo: str, tag: str) -> bool:
        resolved = self._resolved_at.get((repo, tag))
        return resolved is not None and time.monotonic() - resolved < self.config.tag_ttl

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
        await asyncio.to_thread(self.app[STORE].put_bytes, fetched.body, digest)
        self.app[REPOSITORIES].link_manifest(repo, digest, parsed.media_type)
        log.info("upstream.manifest repo=%s reference=%s digest=%s", repo, reference, digest)
        if isinstance(reference, str):
            await move_tag(self.app, repo, reference, digest)
            self._resolved_at[(repo, reference)] = time.monotonic()
        return digest

    # blobs

    async def serve_blob(
        self, request: web.Request, repo: str, digest: Digest
    ) -> web.StreamResponse:
        """Answer a blob GET/HEAD the origin cannot serve from ``repo`` yet."""
        flight = self._blob_flights.in_flight(digest)
        if flight is not None:
            await asyncio.shield(flight)
            if self.app[REPOSITORIES].has_blob(repo, digest):  # the leader fetched it for us
                return blob_file_response(self.app, digest)
        if self.app[STORE].has(digest) or request.method == "HEAD":
            return await self._serve_after_upstream_head(request, repo, digest)
        future = self._blob_flights.lead(digest)
        try:
            response = await self._stream_from_upstream(request, repo, digest)
        except BaseException as exc:
            self._blob_flights.fail(digest, future, _for_followers(exc))
            raise
        self._blob_flights.succeed(digest, future, None)
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
        headers = {
            **API_HEADERS,
            "Docker-Content-Digest": str(digest),
            "Content-Type": "application/octet-stream",
            "Content-Length": str(size),
        }
        return web.Response(headers=headers)

    async def _stream_from_upstream(
        self, request: web.Request, repo: str, digest: Digest
    ) -> web.StreamResponse:
        self._count("blob")
        try:
            async with self.upstream.get_blob(repo, digest) as upstream:
                size = upstream.content_length
                response = web.StreamResponse(
                    headers={
                        **API_HEADERS,
                        "Docker-Content-Digest": str(digest),
                        "Content-Type": "application/octet-stream",
                    }
                )
                if size is not None:
                    response.content_length = size
                with self.app[STORE].writer() as writer:
                    client = _Client(request, response)
                    await client.start()
                    await self._copy(upstream.content, writer, client, digest, size)
                    self.app[REPOSITORIES].link_blob(repo, digest)
                    await client.finish()
        except UpstreamNotFound:
            raise blob_unknown(digest) from None
        log.info("upstream.blob repo=%s digest=%s bytes=%s", repo, digest, size)
        return response

    async def _copy(
        self,
        source: aiohttp.StreamReader,
        writer: BlobWriter,
        client: _Client,
        digest: Digest,
        size: int | None,
    ) -> None:
        """Upstream -> store and client; the last chunk reaches the client only once verified."""
        held = b""
        async for chunk in source.iter_chunked(STREAM_CHUNK):
            writer.write(chunk)
            await client.send(held)
            held = chunk
        try:
            await asyncio.to_thread(writer.commit, digest, size)
        except (DigestMismatchError, SizeMismatchError) as exc:
            log.error("upstream.blob_corrupt digest=%s error=%s", digest, exc)
            client.abort()
            raise UpstreamBlobCorrupt(str(exc)) from None
        await client.send(held)


class _Client:
    """The leader's client: best effort, so a client that goes away doesn't stop the fetch."""

    def __init__(self, request: web.Request, response: web.StreamResponse) -> None:
        self.request = request
        self.response = response
        self.gone = False

    async def start(self) -> None:
        try:
            await self.response.prepare(self.request)
        except ConnectionError:
            self.gone = True

    async def send(self, data: bytes) -> None:
        if self.gone or not data:
            return
        try:
            await self.response.write(data)
        except ConnectionError:
            self.gone = True
            log.info("upstream.client_gone path=%s (fetch continues)", self.request.path)

    async def finish(self) -> None:
        if not self.gone:
            try:
                await self.response.write_eof()
            except ConnectionError:
                self.gone = True

    def abort(self) -> None:
        """Cut the connection so the client sees a truncated body, never a wrong one."""
        transport = self.request.transport
        if transport is not None:
            transport.close()
        self.gone = True


def _for_followers(exc: BaseException) -> BaseException:
    """What clients waiting on a failed fetch are told."""
    if isinstance(exc, RegistryError):
        return exc
    return unavailable(f"fetching the blob from upstream failed: {exc.__class__.__name__}")
