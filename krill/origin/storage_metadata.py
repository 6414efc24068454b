"""Repository metadata in the bucket, so several origins on one bucket are one registry.

Blob bytes were already in the bucket (``origin.storage``); the names for
them were not: which repository links which blob and manifest, and where
each tag points. Without those, a second origin on the same bucket answered
404 for everything the first was pushed. Now every link and tag is also a
small object next to the blobs, under the directory layout's names::

    <prefix>/repositories/<name>/_layers/<hex>      empty: the blob is linked in <name>
    <prefix>/repositories/<name>/_manifests/<hex>   the manifest's media type
    <prefix>/repositories/<name>/_tags/<tag>        the digest the tag points to
    <prefix>/repositories/<name>/_tag_history/<ns>-<tag>
                                                    one move of the tag (its history line)

The local files under ``--data/repositories`` stay as they were (every other
module reads them, synchronously, often in threads) and become a cache of
these objects:

* **written through, after the local write, before the answer** (as blobs
  are): a push is answered only when its link or tag is in the bucket, so
  any origin on the bucket can answer for it once the client has its 201;
* **links read through**: a blob or manifest link missing locally is looked
  up in the bucket and, found, written locally (with, for a manifest, its
  bytes). A link names content by digest and never changes, so a found link
  is cached for good; a missing one is asked again every time (a push
  through another origin may have made it since);
* **tags read with a time to live**: a tag is read from the bucket when the
  local copy was last checked more than ``TAG_TTL`` seconds ago, so a tag
  moved through another origin is seen within that time (at once by the
  origin it was pushed to). Tag changes on one origin are serialised
  (``tag_lock``), from the local write to the bucket's, so a refresh cannot
  undo a push it overlaps;
* **deletions** remove the bucket's objects too; another origin that cached
  a deleted link forgets it at its own collection
  (``storage_gc.reconcile_with_bucket`` drops the manifest links and tags
  the bucket no longer has; the local collection then the blobs only they
  referenced).

Concurrent writers of one tag on two origins: the last PUT wins (S3 has no
compare-and-swap that every S3-compatible store implements). Links are
idempotent. Tag history: each origin publishes the moves pushes and
deletes make through it, and merges the others' into its own history before
it adopts a tag moved elsewhere (so its delta planner knows the versions
pushed elsewhere); adopting records a line of its own too.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from enum import Enum

from aiohttp import web

from krill import oci
from krill.clock import Clock
from krill.digests import Digest, DigestError
from krill.origin import gctombstones as tombstones
from krill.origin.appkeys import REPOSITORIES, STORE, TAG_HISTORY
from krill.origin.manifests import store_manifest
from krill.origin.tagging import delete_tag, move_tag
from krill.origin.taghistory import TagEvent, event_line, parse_event
from krill.s3backend import S3Backend, S3Error

__all__ = [
    "METADATA",
    "TAG_TTL",
    "BucketMetadata",
    "MetaEntry",
    "MetaKind",
    "bucket_tags",
    "metadata_entries",
    "metadata_published",
]

log = logging.getLogger(__name__)

ROOT = "repositories/"
# Written once the bucket holds the registry's metadata (no repository name starts with _).
PUBLISHED = ROOT + "_published"
# Each origin's tag moves, one object each: <time ns>-<tag> holding the history line.
HISTORY_DIR = "_tag_history"
# Seconds a tag read from the bucket is trusted before it is read again.
TAG_TTL = 5.0

_KEY = re.compile(r"^repositories/(?P<repo>.+)/(?P<kind>_layers|_manifests|_tags)/(?P<leaf>[^/]+)$")


class MetaKind(Enum):
    """The kinds of metadata object; the value is the directory name, as in ``--data``."""

    LAYER = "_layers"
    MANIFEST = "_manifests"
    TAG = "_tags"


@dataclass(frozen=True)
class MetaEntry:
    """One metadata object of the bucket (its leaf is a digest's hex or a tag)."""

    repo: str
    kind: MetaKind
    leaf: str
    modified: float

    @property
    def digest(self) -> Digest | None:
        """The linked digest (None for a tag, or a leaf that is no digest)."""
        if self.kind is MetaKind.TAG:
            return None
        try:
            return Digest.parse("sha256:" + self.leaf)
        except DigestError:
            return None


async def metadata_published(backend: S3Backend) -> bool:
    """Whether an origin of this version has published its metadata to the bucket."""
    return await backend.object_modified(PUBLISHED) is not None


def meta_key(repo: str, kind: MetaKind, leaf: str) -> str:
    return f"{ROOT}{repo}/{kind.value}/{leaf}"


def history_key(repo: str, event: TagEvent) -> str:
    """One object per tag move: time first, so a listing comes oldest first."""
    return f"{ROOT}{repo}/{HISTORY_DIR}/{round(event.time * 1e9):020d}-{event.tag}"


async def metadata_entries(backend: S3Backend) -> list[MetaEntry]:
    """Every metadata object in the bucket."""
    return [entry async for entry in _entries(backend, ROOT)]


async def bucket_tags(backend: S3Backend, repo: str) -> list[str]:
    """The tags the bucket has for ``repo`` (not for repositories nested under its name)."""
    prefix = f"{ROOT}{repo}/{MetaKind.TAG.value}/"
    return [e.leaf async for e in _entries(backend, prefix) if e.repo == repo]


async def _entries(backend: S3Backend, prefix: str) -> AsyncIterator[MetaEntry]:
    async for listed in backend.list_objects(prefix):
        match = _KEY.match(listed.key)
        if match is not None:
            kind = MetaKind(match["kind"])
            yield MetaEntry(match["repo"], kind, match["leaf"], listed.modified)


class BucketMetadata:
    """Links and tags of an origin's repositories, written to and read from its bucket."""

    def __init__(self, app: web.Application, backend: S3Backend, clock: Clock) -> None:
        self.app = app
        self.backend = backend
        self.clock = clock
        self._tag_checked: dict[tuple[str, str], float] = {}
        self._catalog_checked: float | None = None
        self._tag_locks: defaultdict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)
        self._history_seen: set[str] = set()  # history objects published or merged here

    async def publish_if_new(self) -> int:
        """On a bucket no origin has published metadata to yet, publish ``--data``'s.

        Buckets written before links moved there hold blobs whose names only an
        origin's ``--data`` knows; publishing them once keeps those blobs from
        looking unreferenced (``origin.storage_gc`` refuses such a bucket until
        then). Afterwards the bucket is the reference, and an origin's own links
        never go back to it unasked: they may be deleted ones another origin dropped.
        """
        if await metadata_published(self.backend):
            return 0
        repos = self.app[REPOSITORIES]
        count = 0
        for repo in list(repos.names()):
            for digest, _ in repos.blob_links(repo):
                await self.put_layer_link(repo, digest)
            for digest, _ in repos.manifest_links(repo):
                await self.put_manifest_link(repo, digest)
            for tag in repos.tags(repo):
                await self.put_tag(repo, tag)
            count += 1
        await self.backend.put_object(PUBLISHED, b"")
        log.info("origin.metadata_published repositories=%d", count)
        return count

    def tag_lock(self, repo: str, tag: str) -> asyncio.Lock:
        """Held from a tag's local change to its bucket write, and around a refresh."""
        return self._tag_locks[(repo, tag)]

    # written through

    async def put_layer_link(self, repo: str, digest: Digest) -> None:
        await self.backend.put_object(meta_key(repo, MetaKind.LAYER, digest.hex), b"")

    async def put_manifest_link(self, repo: str, digest: Digest) -> None:
        media_type = self.app[REPOSITORIES].manifest_media_type(repo, digest)
        if media_type is None:  # deleted again meanwhile: nothing to publish
            return
        key = meta_key(repo, MetaKind.MANIFEST, digest.hex)
        await self.backend.put_object(key, media_type.encode())

    async def lost_references(
        self, repo: str, digest: Digest, put_blob: Callable[[Digest], Awaitable[None]]
    ) -> list[Digest]:
        """After the manifest is linked in the bucket: the blobs it names that the bucket no
        longer has and this origin cannot put back (``put_blob``) from its local copy.

        A bucket collection on another machine may delete an old, unreferenced
        blob after it listed the links and before this manifest was linked
        (docs/storage.md); asking once the link is visible catches it whenever
        the deletion came first. The repository's links to those blobs are
        published again first (``_republish_layer_links``).
        """
        media_type = self.app[REPOSITORIES].manifest_media_type(repo, digest)
        body = await self._manifest_bytes(digest)
        if media_type is None or body is None:
            return []
        references = [d.digest for d in oci.parse_manifest(body, media_type).blob_references()]
        await self._republish_layer_links(repo, references)
        await tombstones.lift(self.backend, references)  # before looking (origin.gctombstones)
        present = await asyncio.gather(*(self.backend.exists(d) for d in references))
        lost = []
        for reference, there in zip(references, present, strict=True):
            if there:
                continue
            if self.app[STORE].has(reference):
                await put_blob(reference)
                log.warning("origin.reference_restored digest=%s manifest=%s", reference, digest)
            else:
                lost.append(reference)
        return lost

    async def _republish_layer_links(self, repo: str, references: list[Digest]) -> None:
        """Put the bucket's links for the blobs ``repo`` links here (idempotent, empty PUTs).

        A blob push whose bucket write failed (503, "push it again") is linked
        locally: the retry's ``HEAD`` finds it and skips the upload, so without
        this the link never reached the bucket and other replicas answered
        ``BLOB_UNKNOWN`` for a layer of a pushed image.
        """
        repos = self.app[REPOSITORIES]
        linked = [d for d in references if repos.has_blob(repo, d)]
        await asyncio.gather(*(self.put_layer_link(repo, d) for d in linked))

    async def put_tag(self, repo: str, tag: str) -> None:
        """Publish the local value of ``repo:tag`` (or its absence)."""
        digest = self.app[REPOSITORIES].get_tag(repo, tag)
        key = meta_key(repo, MetaKind.TAG, tag)
        if digest is None:
            await self.backend.delete_object(key)
        else:
            await self.backend.put_object(key, str(digest).encode())
        self._tag_checked[(repo, tag)] = self.clock.monotonic()

    async def put_history(self, repo: str, tags: Iterable[str]) -> None:
        """Publish the latest local move of each tag (the one a push or delete just made)."""
        history = self.app[TAG_HISTORY]
        for tag in tags:
            event = await asyncio.to_thread(history.last_event, repo, tag)
            if event is not None:
                key = history_key(repo, event)
                await self.backend.put_object(key, event_line(event).encode())
                self._history_seen.add(key)

    async def merge_history(self, repo: str) -> None:
        """Add the moves other origins published for ``repo`` to the local tag history, so
        the delta planner here knows the versions pushed elsewhere."""
        prefix = f"{ROOT}{repo}/{HISTORY_DIR}/"
        keys = [o.key async for o in self.backend.list_objects(prefix)]
        events = []
        for key in keys:
            if key in self._history_seen:
                continue
            data = await self.backend.get_object(key)
            event = parse_event(repo, data.decode("utf-8", "replace")) if data else None
            if event is not None:
                events.append(event)
            self._history_seen.add(key)
        if events:
            added = await asyncio.to_thread(self.app[TAG_HISTORY].merge, repo, events)
            log.info("origin.history_read_through repo=%s events=%d", repo, added)

    async def delete_layer_link(self, repo: str, digest: Digest) -> None:
        await self.backend.delete_object(meta_key(repo, MetaKind.LAYER, digest.hex))

    async def delete_manifest(self, repo: str, digest: Digest) -> list[str]:
        """The manifest's link and every tag of ``repo`` the bucket has pointing to it;
        return those tags."""
        deleted = []
        for tag in await bucket_tags(self.backend, repo):
            if await self._bucket_tag(repo, tag) == digest:
                await self.backend.delete_object(meta_key(repo, MetaKind.TAG, tag))
                deleted.append(tag)
        await self.backend.delete_object(meta_key(repo, MetaKind.MANIFEST, digest.hex))
        return deleted

    # read through

    async def read_layer_link(self, repo: str, digest: Digest) -> bool:
        """Whether ``repo`` links the blob, locally or in the bucket (then linked locally too)."""
        repos = self.app[REPOSITORIES]
        if repos.has_blob(repo, digest):
            return True
        modified = await self.backend.object_modified(meta_key(repo, MetaKind.LAYER, digest.hex))
        if modified is None:
            return False
        await asyncio.to_thread(repos.link_blob, repo, digest)
        log.info("origin.link_read_through repo=%s digest=%s kind=layer", repo, digest)
        return True

    async def read_manifest(self, repo: str, digest: Digest) -> bool:
        """Whether ``repo`` has the manifest, locally or in the bucket (then stored locally)."""
        app = self.app
        if app[REPOSITORIES].manifest_media_type(repo, digest) is not None and app[STORE].has(
            digest
        ):
            return True
        media_type = await self.backend.get_object(meta_key(repo, MetaKind.MANIFEST, digest.hex))
        if media_type is None:
            return False
        body = await self._manifest_bytes(digest)
        if body is None:
            log.warning("origin.manifest_missing_in_bucket repo=%s digest=%s", repo, digest)
            return False
        try:
            parsed = oci.parse_manifest(body, media_type.decode() or None)
        except oci.ManifestError as exc:
            log.error("origin.manifest_unreadable repo=%s digest=%s error=%s", repo, digest, exc)
            return False
        await asyncio.to_thread(store_manifest, app, repo, digest, body, parsed)
        log.info("origin.link_read_through repo=%s digest=%s kind=manifest", repo, digest)
        return True

    async def adopt_repositories(self) -> None:
        """Bring in one manifest of each repository the bucket has and ``--data`` lacks.

        For the catalog, which lists the local repositories: one linked
        manifest makes a repository exist here. The bucket's whole metadata is
        listed, at most once per ``TAG_TTL`` (a catalog is asked for rarely).
        """
        now = self.clock.monotonic()
        if self._catalog_checked is not None and now - self._catalog_checked < TAG_TTL:
            return
        self._catalog_checked = now
        local = set(await asyncio.to_thread(lambda: list(self.app[REPOSITORIES].names())))
        wanted: dict[str, Digest] = {}
        async for entry in _entries(self.backend, ROOT):
            digest = entry.digest
            if entry.kind is MetaKind.MANIFEST and entry.repo not in local and digest is not None:
                wanted.setdefault(entry.repo, digest)
        for repo, digest in wanted.items():
            await self.read_manifest(repo, digest)

    async def adopt_manifests(self, repo: str) -> None:
        """Bring in every manifest of ``repo`` the bucket has and ``--data`` lacks.

        For the referrers API: storing a manifest locally records it as a
        referrer of its subject, so a referrer pushed through another origin
        is listed here too.
        """
        prefix = f"{ROOT}{repo}/{MetaKind.MANIFEST.value}/"
        async for entry in _entries(self.backend, prefix):
            digest = entry.digest
            if entry.repo == repo and digest is not None:
                await self.read_manifest(repo, digest)

    async def _manifest_bytes(self, digest: Digest) -> bytes | None:
        if self.app[STORE].has(digest):
            return await asyncio.to_thread(self.app[STORE].read_bytes, digest)
        try:
            async with self.backend.open(digest) as reader:  # pushed under a size limit
                body = b"".join([chunk async for chunk in reader.chunks])
        except LookupError:
            return None
        return body if Digest.of_bytes(body) == digest else None

    async def refresh_tag(self, repo: str, tag: str, *, force: bool = False) -> None:
        """Bring the local ``repo:tag`` up to the bucket's, unless checked within ``TAG_TTL``.

        A tag the bucket points at a manifest is moved locally (recorded in the
        local tag history, hooks called) after the manifest is read through; one
        the bucket lacks is deleted locally.
        """
        key = (repo, tag)
        async with self.tag_lock(repo, tag):
            checked = self._tag_checked.get(key)
            if not force and checked is not None and self.clock.monotonic() - checked < TAG_TTL:
                return
            self._tag_checked[key] = self.clock.monotonic()
            bucket = await self._bucket_tag(repo, tag)
            local = self.app[REPOSITORIES].get_tag(repo, tag)
            if bucket == local:
                return
            await self.merge_history(repo)  # before the hooks: the delta planner reads it
            if bucket is None:
                await delete_tag(self.app, repo, tag)
                log.info("origin.tag_read_through repo=%s tag=%s new=none", repo, tag)
            elif await self.read_manifest(repo, bucket):
                await move_tag(self.app, repo, tag, bucket)
                log.info("origin.tag_read_through repo=%s tag=%s new=%s", repo, tag, bucket)

    async def refresh_tags(self, repo: str, *, force: bool = False) -> None:
        """Every tag of ``repo`` the bucket or the local copy has, refreshed."""
        names = set(await bucket_tags(self.backend, repo))
        names.update(self.app[REPOSITORIES].tags(repo))
        for tag in sorted(names):
            await self.refresh_tag(repo, tag, force=force)

    async def _bucket_tag(self, repo: str, tag: str) -> Digest | None:
        data = await self.backend.get_object(meta_key(repo, MetaKind.TAG, tag))
        if data is None:
            return None
        try:
            return Digest.parse(data.decode().strip())
        except (DigestError, UnicodeDecodeError):
            log.warning("origin.tag_unreadable repo=%s tag=%s", repo, tag)
            return None

    async def in_bucket(self, repo: str, digests: Iterable[str]) -> frozenset[Digest]:
        """Of a manifest's missing references, those ``repo`` links in the bucket with their
        bytes there (linked locally now): a push may name blobs pushed through another origin.
        """
        found = set()
        try:
            for text in digests:
                digest = Digest.parse(text)
                if await self.read_manifest(repo, digest):
                    found.add(digest)
                elif await self.read_layer_link(repo, digest) and await self.backend.exists(digest):
                    found.add(digest)
        except S3Error as exc:  # the push is told what is missing, and tries again
            log.warning("origin.metadata_read_failed repo=%s error=%s", repo, exc)
        return frozenset(found)


METADATA = web.AppKey("krill_origin_bucket_metadata", BucketMetadata)
