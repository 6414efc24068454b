"""Manifests for the agent's registry endpoint, fetched from the origin and cached.

Bytes are kept exactly as the origin sent them (a manifest's digest is the
hash of its bytes). Digest references are immutable, so they are cached on
disk forever (a small ``BlobStore`` under ``<data>/manifests``, with the media
type in a sidecar); a tag's answer is reused for ``tag_ttl`` seconds. When the
origin cannot be reached, a tag seen before is still answered from the cache
(stale but consistent; the origin is asked again after ``STALE_RETRY`` s, not
on every request, each of which would wait its timeout out), and anything
else gets 503 quickly so containerd tries the next host. A manifest that
cannot be stored (a full disk) is still served: it was checked in memory.

A digest names the same bytes in every repository, but the spec answers 404
for a manifest the repository does not hold, and a repository may be one the
client cannot read. So the cache remembers the repositories the origin served
each manifest under (a ``repos`` sidecar, one name a line), and a digest asked
under any other repository goes to the origin first: its 200 adds the
repository, its 404 or 401 is the answer. With the origin unreachable such a
request is 503, never the cached bytes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from krill import oci
from krill.agent.origins import ask_origin
from krill.atomicfile import write_atomic
from krill.blobstore import BlobStore
from krill.digests import Digest
from krill.names import image_reference
from krill.originclient import OriginClient
from krill.registry_errors import RegistryError
from krill.registry_params import lookup_reference

log = logging.getLogger(__name__)

DEFAULT_ACCEPT = ", ".join(oci.MANIFEST_TYPES)
# Seconds a stale tag answer is reused before the unreachable origin is asked again.
STALE_RETRY = 5.0


class OriginRefused(Exception):
    """The origin refused the client's credentials (401, with its challenge) or access (403)."""

    def __init__(self, status: int, challenge: str | None) -> None:
        super().__init__(f"the origin answered {status}")
        self.status = status
        self.challenge = challenge


@dataclass(frozen=True)
class Manifest:
    body: bytes
    media_type: str
    digest: Digest


class ManifestCache:
    """Fetches manifests from the origin; tags for ``tag_ttl``, digests forever."""

    def __init__(
        self,
        origin: OriginClient,
        store: BlobStore,
        *,
        tag_ttl: float,
        timeout: float,
        on_manifest: Callable[[str, Manifest], Awaitable[None]] | None = None,
    ) -> None:
        self._on_manifest = on_manifest
        self._origin = origin
        self._store = store
        self._tag_ttl = tag_ttl
        self._timeout = timeout
        self._tags: dict[tuple[str, str], tuple[Digest, float]] = {}

    @property
    def origin(self) -> OriginClient:
        """The client manifests are fetched with (failing over along the replicas)."""
        return self._origin

    async def get(
        self,
        repository: str,
        reference: str,
        accept: str | None = None,
        authorization: str | None = None,
    ) -> Manifest:
        """The manifest; every one handed out is reported to ``on_manifest`` (layer index).

        ``authorization`` is the client's header, sent to the origin when the
        manifest is fetched (a private repository's manifests are the
        client's to read, not the node's). Whether the client may read a
        cached one is ``agent.access``'s question, asked before this.
        """
        manifest = await self._get(repository, reference, accept, authorization)
        accepted = oci.refused_by_accept([accept] if accept else [], manifest.media_type)
        if accepted is not None:  # a cached one, or the origin's answer to another Accept
            raise RegistryError(
                "MANIFEST_UNKNOWN",
                f"manifest {image_reference(repository, reference)} is a {manifest.media_type} "
                f"and is not converted; the client accepts only {', '.join(sorted(accepted))}",
                status=404,
            )
        if self._on_manifest is not None:
            await self._on_manifest(repository, manifest)
        return manifest

    async def _get(
        self, repository: str, reference: str, accept: str | None, authorization: str | None
    ) -> Manifest:
        ref = lookup_reference(reference)
        if isinstance(ref, Digest):
            cached = self._load(ref)
            if cached is not None and repository in self._repositories(ref):
                return cached
            return await self._fetch(repository, str(ref), accept, authorization, expected=ref)
        key = (repository, ref)
        hit = self._tags.get(key)
        if hit is not None and hit[1] > time.monotonic():
            cached = self._load(hit[0])
            if cached is not None:
                return cached
        try:
            manifest = await self._fetch(repository, ref, accept, authorization, expected=None)
        except RegistryError as exc:
            stale = self._load(hit[0]) if hit is not None and exc.code == "UNAVAILABLE" else None
            if stale is None:
                raise
            log.warning("manifest.stale repo=%s tag=%s digest=%s", repository, ref, stale.digest)
            # Asked again only after a pause: each ask waits the origin's timeout out.
            self._tags[key] = (stale.digest, time.monotonic() + STALE_RETRY)
            return stale
        self._tags[key] = (manifest.digest, time.monotonic() + self._tag_ttl)
        return manifest

    def _load(self, digest: Digest) -> Manifest | None:
        if not self._store.has(digest):
            return None
        media_type = self._store.sidecar_path(digest, "mediatype").read_text().strip()
        return Manifest(self._store.read_bytes(digest), media_type, digest)

    def _repositories(self, digest: Digest) -> frozenset[str]:
        """The repositories the origin served this cached manifest under."""
        try:
            text = self._store.sidecar_path(digest, "repos").read_text()
        except FileNotFoundError:  # cached before repositories were recorded
            return frozenset()
        return frozenset(text.split())

    def _save(self, manifest: Manifest, repository: str) -> None:
        """Store the body, its media type and its repositories durably (blocking).

        The body goes last: a manifest is in the cache once its body is, and
        then its sidecars are already there.
        """
        sidecar = self._store.sidecar_path(manifest.digest, "mediatype")
        sidecar.parent.mkdir(parents=True, exist_ok=True)
        sidecar.write_text(manifest.media_type)
        repositories = self._repositories(manifest.digest) | {repository}
        repos = self._store.sidecar_path(manifest.digest, "repos")
        write_atomic(repos, "".join(f"{name}\n" for name in sorted(repositories)))
        if not self._store.has(manifest.digest):
            self._store.put_bytes(manifest.body, manifest.digest)

    async def _fetch(
        self,
        repository: str,
        reference: str,
        accept: str | None,
        authorization: str | None,
        expected: Digest | None,
    ) -> Manifest:
        url = self._origin.manifest_url(repository, reference)
        headers = {"Accept": accept or DEFAULT_ACCEPT}
        if authorization:
            headers["Authorization"] = authorization
        if not self._origin.configured:
            raise RegistryError("UNAVAILABLE", "this agent has no origin configured")
        too_large = RegistryError(
            "MANIFEST_INVALID", "manifest from the origin is too large", status=502
        )
        answer = await ask_origin(  # error bodies are skipped: only a 200's body is read
            self._origin, url, what="manifest", limit=oci.MAX_MANIFEST_BYTES,
            seconds=self._timeout, headers=headers, ok=200, too_large=too_large,
        )  # fmt: skip
        status, content_type, body = answer.status, answer.content_type, answer.body
        if status == 404:  # unknown, or stored as a type this Accept leaves out
            name = image_reference(repository, reference)
            detail = " (or not in a type the request's Accept lists)" if accept else ""
            raise RegistryError(
                "MANIFEST_UNKNOWN", f"manifest {name} is not on the origin{detail}"
            )
        if status in (401, 403):
            raise OriginRefused(status, answer.challenge)
        if status != 200:
            raise RegistryError(
                "UNAVAILABLE",
                f"the origin answered {status} for {repository}:{reference}",
                status=502,
            )
        digest = Digest.of_bytes(body)
        if expected is not None and digest != expected:
            raise RegistryError(
                "UNAVAILABLE",
                f"the origin's manifest for {expected} hashes to {digest}",
                status=502,
            )
        manifest = Manifest(body, content_type.split(";")[0].strip() or _body_type(body), digest)
        try:
            await asyncio.to_thread(self._save, manifest, repository)  # fsyncs: off the loop
        except OSError as exc:  # a full disk: the manifest is verified in memory, serve it
            log.warning("manifest.not_cached digest=%s error=%s", digest, exc)
        return manifest


def _body_type(body: bytes) -> str:
    try:
        return oci.parse_manifest(body, None).media_type
    except oci.ManifestError:
        return oci.OCI_MANIFEST
