"""Getting a blob onto this node: cache first, then the swarm, then the origin over HTTP.

``BlobFetcher.open`` answers with either a ``CachedBlob`` (a verified file) or
an ``InflightBlob`` (a committed ``Transfer`` that can be streamed as it
grows). Every digest has at most one transfer at a time (single-flight): a
hundred concurrent requests for one layer share one download.

A layer this node can rebuild from a delta (``agent.deltas``) is tried that
way first, inside the same single-flight task; any failure there falls through
to the sources below.

Source choice, per blob: the swarm gets ``swarm_deadline`` seconds to find the
blob's metainfo and start, then as long to deliver its first verified bytes;
that wait goes on, a deadline at a time, while each window shows progress
anywhere in the blob (pieces verified out of order: a slow start, not a dead
swarm). If it cannot (tracker down, no peers, no metainfo) the swarm
download is cancelled and the origin's
HTTP API is asked instead; if that fails too the caller gets
``SourceUnavailable`` at once, which the endpoint turns into a 503 so
containerd moves on to the next host in ``hosts.toml``. Nothing here waits
past a deadline without progress to show for it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from krill.agent.cache import NodeCache
from krill.agent.deltas import DeltaRebuilder
from krill.agent.sources import (
    BlobNotFound,
    BlobSource,
    SourceUnavailable,
    Transfer,
    TransferFailed,
    ensure_room,
)
from krill.clock import SYSTEM_CLOCK, Clock
from krill.digests import Digest
from krill.errortext import error_text

log = logging.getLogger(__name__)


class Fallback(StrEnum):
    """Why a fetch left the swarm (the ``krill_agent_fallbacks_total`` label)."""

    DEADLINE = "deadline"  # no verified bytes within swarm_deadline
    UNAVAILABLE = "unavailable"  # the swarm could not start or its transfer failed
    ERROR = "error"  # anything else the swarm raised
    FAILED = "failed"  # the origin could not serve it either: 503


@dataclass(frozen=True)
class _Flight:
    """One digest's shared fetch and the repository it was started for."""

    task: asyncio.Task[CachedBlob | InflightBlob]
    repository: str | None


@dataclass(frozen=True)
class CachedBlob:
    digest: Digest
    path: Path
    size: int
    source: str = "cache"  # "delta" when this request's fetch rebuilt it (metrics label)


@dataclass(frozen=True)
class InflightBlob:
    digest: Digest
    transfer: Transfer
    source: str
    started: float = 0.0  # on the fetcher's clock, when this source was asked

    @property
    def size(self) -> int:
        return self.transfer.size


class BlobFetcher:
    """Cache lookups, single-flight transfers and the swarm -> origin fallback."""

    def __init__(
        self,
        cache: NodeCache,
        *,
        swarm: BlobSource | None,
        origin: BlobSource | None,
        swarm_deadline: float,
        stall_timeout: float = 60.0,
        seed_ttl: float = 0.0,
        on_event: Callable[[str, str], None] | None = None,
        on_downloaded: Callable[[str, float], None] | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.cache = cache
        self._swarm = swarm
        self._origin = origin
        self._deadline = swarm_deadline
        self.stall_timeout = stall_timeout
        self._seed_ttl = seed_ttl
        self._on_event = on_event or (lambda event, label: None)
        # (source, seconds) once a blob is on the node: "swarm"/"origin" from the
        # source's first request to the committed file, "delta" from the lookup to
        # the rebuilt layer in the cache.
        self._on_downloaded = on_downloaded or (lambda source, seconds: None)
        self._clock = clock
        # Set by the node when deltas are on: tried before the swarm for known layers.
        self.deltas: DeltaRebuilder | None = None
        self._inflight: dict[Digest, _Flight] = {}
        self._finishers: dict[Digest, asyncio.Task[None]] = {}

    def in_flight(self, digest: Digest) -> bool:
        """Whether a fetch of ``digest`` is under way (started and not yet forgotten)."""
        return digest in self._inflight

    async def open(self, digest: Digest, repository: str | None) -> CachedBlob | InflightBlob:
        """A servable view of the blob; raises SourceUnavailable when no source has it now.

        The source is chosen in a task of its own, so a client that hangs up while
        waiting does not cancel the choice for the others sharing it.
        """
        cached = await self.cached(digest)
        if cached is not None:
            self._on_event("cache", "hit")
            return cached
        self._on_event("cache", "miss")
        flight = self._join_or_start(digest, repository)
        try:
            return await asyncio.shield(flight.task)
        except SourceUnavailable as exc:
            if not _worth_own_try(exc, flight.repository, repository):
                raise
        # The shared fetch could not ask the origin for our repository (it had none,
        # or the blob is not in its one): try again on our own, once.
        log.info("fetch.retry_with_repo digest=%s repo=%s", digest, repository)
        return await asyncio.shield(self._join_or_start(digest, repository).task)

    def _join_or_start(self, digest: Digest, repository: str | None) -> _Flight:
        """The digest's single-flight fetch, started for ``repository`` if none is running."""
        flight = self._inflight.get(digest)
        if flight is None:
            task = asyncio.create_task(
                self._start(digest, repository), name=f"start-{digest.hex[:12]}"
            )
            task.add_done_callback(_consume_exception)
            flight = self._inflight[digest] = _Flight(task, repository)
        return flight

    async def _start(self, digest: Digest, repository: str | None) -> CachedBlob | InflightBlob:
        try:
            rebuilt = await self._try_delta(digest, repository)
            if isinstance(rebuilt, CachedBlob):
                self._inflight.pop(digest, None)
                return rebuilt
            # A layer still being rebuilt is streamed like a download (agent.rebuildstream).
            blob = rebuilt or await self._commit_source(digest, repository)
        except BaseException:
            self._inflight.pop(digest, None)
            raise
        self._finish_later(blob)
        return blob

    async def _try_delta(
        self, digest: Digest, repository: str | None
    ) -> CachedBlob | InflightBlob | None:
        """The layer rebuilt from a cached base and a delta (or being rebuilt, its first
        piece verified), or None to fetch it whole."""
        if self.deltas is None:
            return None
        started = self._clock.monotonic()
        rebuilt = await self.deltas.rebuild(digest, repository, self.ensure)
        if rebuilt is False:
            return None
        if rebuilt is not True:
            return InflightBlob(digest, rebuilt, "delta", started)
        self._on_downloaded("delta", self._clock.monotonic() - started)
        cached = await self.cached(digest)
        return dataclasses.replace(cached, source="delta") if cached is not None else None

    async def cached(self, digest: Digest) -> CachedBlob | None:
        if not await self.cache.ensure_verified(digest):
            return None
        entry = self.cache.entry(digest)
        if entry is None:
            return None
        self.cache.touch(digest)
        return CachedBlob(digest, self.cache.path(digest), entry.size)

    async def ensure(self, digest: Digest, repository: str | None) -> int:
        """Make the blob cached on this node (for preheat and deltas); returns its size."""
        return await self.complete(await self.open(digest, repository))

    async def complete(self, blob: CachedBlob | InflightBlob) -> int:
        """Wait until an opened blob is committed and indexed in the cache; returns its size.

        Waits as long as the transfer makes progress (``stall_timeout`` between bytes).
        """
        if isinstance(blob, InflightBlob):
            with self.cache.pinned(blob.digest):
                await wait_complete(blob, self.stall_timeout)
                finisher = self._finishers.get(blob.digest)
                if finisher is not None:
                    await asyncio.shield(finisher)  # indexed in the cache once this returns
        return blob.size

    async def _commit_source(self, digest: Digest, repository: str | None) -> InflightBlob:
        errors: list[str] = []
        if self._swarm is not None:
            try:
                return await self._try_swarm(digest, repository)
            except Exception as exc:  # any swarm trouble: the origin is the way out
                if isinstance(exc, BlobNotFound) and repository is None:
                    # The origin said it has no such blob, and without a repository
                    # there is no other way to ask it: a 404, not a 503.
                    self._on_event("fallback", Fallback.FAILED)
                    raise
                reason = _fallback_reason(exc)
                errors.append(f"swarm: {str(exc) or 'no bytes within the deadline'}")
                text = error_text(exc)
                log.info("fetch.fallback digest=%s reason=%s error=%r", digest, reason, text)
                self._on_event("fallback", reason)
        if self._origin is not None:
            try:
                started = self._clock.monotonic()
                transfer = await self._origin.start(digest, repository)
                return InflightBlob(digest, transfer, self._origin.name, started)
            except BlobNotFound:
                self._on_event("fallback", Fallback.FAILED)
                raise
            except SourceUnavailable as exc:
                errors.append(f"origin: {exc}")
        self._on_event("fallback", Fallback.FAILED)
        raise SourceUnavailable("; ".join(errors) or "no blob source configured")

    async def _try_swarm(self, digest: Digest, repository: str | None) -> InflightBlob:
        assert self._swarm is not None
        transfer: Transfer | None = None
        started = self._clock.monotonic()
        try:
            async with asyncio.timeout(self._deadline):
                transfer = await self._swarm.start(digest, repository)
            await ensure_room(self.cache.store, digest, transfer.size, self.cache)
            await self._first_bytes(digest, transfer)
        except BaseException:
            if transfer is not None:
                transfer.cancel()
            raise
        return InflightBlob(digest, transfer, self._swarm.name, started)

    async def _first_bytes(self, digest: Digest, transfer: Transfer) -> None:
        """Wait for the transfer's first servable bytes while it makes headway.

        Each ``swarm_deadline`` window must show progress anywhere in the blob
        (``progress``: pieces verified, for the swarm). A node that pulls a whole
        image asks for every layer at once, and the first bytes of one layer can
        take longer than the deadline while the others share the link; counting
        from the request alone sent such a layer to the origin in every
        image-herd run (docs/benchmarks.md, issue 16).
        """
        while True:
            before = _progress(transfer)
            try:
                async with asyncio.timeout(self._deadline):
                    await transfer.wait_available(0)
                return
            except TimeoutError:
                if _progress(transfer) == before:
                    raise
                log.info(
                    "fetch.swarm_slow_start digest=%s progress=%d deadline=%.1f",
                    digest, _progress(transfer), self._deadline,
                )

    def _finish_later(self, blob: InflightBlob) -> None:
        task = asyncio.create_task(self._finish(blob), name=f"finish-{blob.digest.hex[:12]}")
        self._finishers[blob.digest] = task
        task.add_done_callback(lambda _t: self._finishers.pop(blob.digest, None))

    async def _finish(self, blob: InflightBlob) -> None:
        """Index the blob once its transfer commits; forget the transfer either way."""
        try:
            with self.cache.pinned(blob.digest):
                await blob.transfer.wait_done()
                pin_for = self._seed_ttl if blob.source == "swarm" else 0.0
                await self.cache.add(blob.digest, pin_for=pin_for)
            seconds = self._clock.monotonic() - blob.started
            self._on_downloaded(blob.source, seconds)
            if self.deltas is not None and blob.source != "delta":  # link rate samples
                self.deltas.observe_download(blob.digest, blob.size, seconds)
            log.info("fetch.done digest=%s source=%s bytes=%d", blob.digest, blob.source, blob.size)
        except TransferFailed as exc:
            log.warning("fetch.failed digest=%s source=%s error=%s", blob.digest, blob.source, exc)
        except OSError as exc:  # committed, but the index could not be written: refetch later
            log.warning("fetch.index_failed digest=%s error=%r", blob.digest, error_text(exc))
        finally:
            self._inflight.pop(blob.digest, None)

    async def close(self) -> None:
        for finisher in list(self._finishers.values()):
            finisher.cancel()
        starts = [flight.task for flight in self._inflight.values()]
        for task in starts:
            if task.done() and not task.cancelled() and task.exception() is None:
                blob = task.result()
                if isinstance(blob, InflightBlob):
                    blob.transfer.cancel()
            else:
                task.cancel()
        await asyncio.gather(*self._finishers.values(), *starts, return_exceptions=True)


def _progress(transfer: Transfer) -> int:
    """A count that grows while a transfer gets anywhere: the swarm's verified pieces
    (in any order), else its servable prefix."""
    progress = getattr(transfer, "progress", None)
    return int(progress) if progress is not None else transfer.available


async def wait_progress(blob: InflightBlob, position: int, stall_timeout: float) -> int:
    """Bytes available past ``position``; a transfer silent for ``stall_timeout`` is cancelled.

    Without this limit a swarm download that lost its peers (or an origin that
    stopped sending) would keep its waiter, and the blob's pin, forever.
    """
    try:
        async with asyncio.timeout(stall_timeout):
            return await blob.transfer.wait_available(position)
    except TimeoutError:
        blob.transfer.cancel()
        raise TransferFailed(
            f"{blob.source} transfer of {blob.digest} stalled at byte {position} "
            f"for {stall_timeout:g}s; cancelled so the next request starts over"
        ) from None


async def wait_complete(blob: InflightBlob, stall_timeout: float) -> Path:
    """The committed file, waiting as long as the transfer keeps making progress."""
    position = 0
    while position < blob.size:
        position = await wait_progress(blob, position, stall_timeout)
    async with asyncio.timeout(stall_timeout):
        return await blob.transfer.wait_done()


def _worth_own_try(exc: SourceUnavailable, shared: str | None, mine: str | None) -> bool:
    """Whether a waiter with repository ``mine`` should retry a shared fetch started for ``shared``.

    Only when the failure may be the shared fetch's repository's fault: it had
    none (no HTTP fallback possible) or the origin has no such blob in it (404).
    """
    if mine is None or mine == shared:
        return False
    return shared is None or isinstance(exc, BlobNotFound)


def _fallback_reason(exc: BaseException) -> Fallback:
    if isinstance(exc, TimeoutError):
        return Fallback.DEADLINE
    if isinstance(exc, (SourceUnavailable, TransferFailed)):
        return Fallback.UNAVAILABLE
    return Fallback.ERROR


def _consume_exception(task: asyncio.Task[CachedBlob | InflightBlob]) -> None:
    """Mark a failed start as seen (every waiter got it; nobody else will ask)."""
    if not task.cancelled():
        task.exception()
