"""The delta path: rebuild a layer from a layer this node holds plus a small delta.

Before a layer is fetched whole, ``DeltaRebuilder.rebuild`` asks the origin
(``GET /krill/v1/deltas/<layer>?have=<bases>``) for a delta against the cached
layers of the repository's earlier images. On an answer it fetches the delta
like any blob (swarm first, then the origin over HTTP, through the fetcher, so
its bytes are what crosses the wire and what the byte counters count), keeps
the base pinned, rebuilds the layer in a worker thread (decompress the base,
apply, recompress by the recipe: CPU work that must never run on the event
loop), checks the uncompressed digest against the image config's diff_id and
the compressed digest against the manifest, and commits the layer into the
node cache. When the origin has the target's metainfo, the rebuild is served
while it runs (``agent.rebuildstream``: piece-verified bytes only, the last
one once the whole digest is checked); ``rebuild`` then returns the transfer
once its first piece has verified, and a later failure fails the stream and
sends the layer's next request to the full download.

Every way this can go wrong ends in ``False`` (fetch the full layer), a
metric with the reason and one log line: a miss when there was no delta to
try (``not_a_layer``, ``no_base``, ``none``, ``lookup_failed``, ``no_config``),
a failure when a delta was tried and did not produce the layer
(``delta_fetch``, ``base_gone``, ``base_damaged``, ``bad_delta``, ``recipe``,
``diff_id``, ``digest``, ``piece``, ``cancelled``). The lookup has its own short
timeout, so a slow origin delays the normal path by at most ``lookup_timeout``
seconds; fetching the delta (and the config) is bounded by ``fetch_timeout``.

A delta on offer is not always the faster way (``agent.deltachoice``): before
fetching it, the rebuilder estimates the delta path (delta over the measured
link rate plus the tar over this node's measured rebuild rate) against the
full layer over the link, and with ``policy`` "fastest" fetches the layer whole
when that is sooner (``False`` again, no miss counted: a choice, with its own
metric and one ``delta.choice`` log line). The fetcher reports every finished
download (``observe_download``) and the rebuilder times its own rebuilds, so
the estimates follow this node's link and CPU; the time a choice saved or
lost is the measured time of the path taken against the estimate of the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Literal, Protocol

import aiohttp

from krill.agent.cache import NodeCache
from krill.agent.deltachoice import (
    Choice,
    ChoiceMetrics,
    Decision,
    DeltaChooser,
    DeltaPolicy,
    read_blob_ends,
    tar_bytes_from_blob_ends,
)
from krill.agent.deltaoffer import (
    MAX_JSON_DEPTH,
    DeltaMiss,
    DeltaOffer,
    Miss,
    origin_json,
    parse_offer,
)
from krill.agent.layers import LayerIndex, LayerRef
from krill.agent.rebuildstream import (
    PieceHashes,
    PieceMismatch,
    RebuildTransfer,
    StreamCancelled,
    failure_cause,
    release_after,
)
from krill.agent.sources import TransferFailed
from krill.blobstore import DigestMismatchError
from krill.bodies import BodyTooLarge
from krill.clock import SYSTEM_CLOCK, Clock
from krill.delta import RebuildResult, RecipeError, rebuild_layer
from krill.digests import Digest
from krill.endpoints import DELTAS
from krill.metainfo import MetainfoError
from krill.originclient import OriginClient

# The offer's names are krill.agent.deltaoffer's, re-exported: this is the delta path's API.
__all__ = [
    "MAX_JSON_DEPTH",
    "DeltaFailure",
    "DeltaMetrics",
    "DeltaMiss",
    "DeltaOffer",
    "DeltaRebuilder",
    "Failure",
    "Miss",
    "origin_json",
    "parse_offer",
]

log = logging.getLogger(__name__)

MAX_CONFIG_BYTES = 4 * 1024 * 1024
# Layers whose streamed rebuild failed, remembered so their next request fetches them
# whole (the oldest are forgotten).
MAX_FAILED_STREAMS = 256


class Failure(StrEnum):
    """Why a delta that was tried gave no layer (``krill_agent_delta_failures_total``)."""

    DELTA_FETCH = "delta_fetch"
    BASE_GONE = "base_gone"
    BASE_DAMAGED = "base_damaged"
    BAD_DELTA = "bad_delta"
    RECIPE = "recipe"
    DIFF_ID = "diff_id"
    DIGEST = "digest"
    PIECE = "piece"  # a streamed piece failed the target's metainfo hash
    CANCELLED = "cancelled"  # a streamed rebuild given up on (stalled, agent stopping)


class DeltaMetrics(ChoiceMetrics, Protocol):
    def delta_hit(self, bytes_saved: int) -> None: ...

    def delta_miss(self, reason: Miss) -> None: ...

    def delta_failure(self, reason: Failure) -> None: ...


# Makes a blob cached on this node through the normal sources; returns its size.
EnsureBlob = Callable[[Digest, str], Awaitable[int]]


class DeltaFailure(Exception):
    """A delta was tried and did not yield the layer; ``reason`` labels the failure metric."""

    def __init__(self, reason: Failure, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class DeltaRebuilder:
    """Tries the delta path for one layer; the fetcher calls it before swarm/HTTP."""

    def __init__(
        self,
        origin: OriginClient,
        cache: NodeCache,
        layers: LayerIndex,
        metrics: DeltaMetrics,
        *,
        lookup_timeout: float,
        fetch_timeout: float = 60.0,
        executor: Executor | None = None,
        policy: DeltaPolicy = DeltaPolicy.FASTEST,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._origin = origin
        self._cache = cache
        self._layers = layers
        self._metrics = metrics
        self._lookup_timeout = lookup_timeout
        self._fetch_timeout = fetch_timeout
        self._delta_blobs: set[Digest] = set()
        # Rebuilds (seconds of CPU each) get their own threads, so they cannot take
        # the default pool serving reads with.
        self._executor = executor
        self._clock = clock
        self.chooser = DeltaChooser(policy, metrics)
        self._failed_streams: dict[Digest, None] = {}  # ordered: the oldest are forgotten
        self._followers: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        """Wait for the streamed rebuilds under way to end (counted, unpinned, cleaned up)."""
        await asyncio.gather(*self._followers, return_exceptions=True)

    def observe_download(self, digest: Digest, nbytes: int, seconds: float) -> None:
        """A blob finished downloading (the fetcher's report): see ``DeltaChooser``."""
        self.chooser.observe_download(digest, nbytes, seconds)

    async def rebuild(
        self, digest: Digest, repository: str | None, ensure: EnsureBlob
    ) -> bool | RebuildTransfer:
        """Get ``digest`` from a delta: True when it is now cached, a ``RebuildTransfer``
        when it is being rebuilt and may be streamed (its first piece verified); False:
        fetch it whole."""
        if digest in self._delta_blobs:
            return False  # the delta blob itself, being fetched for a rebuild
        if digest in self._failed_streams:
            log.info("delta.skipped digest=%s reason=failed_while_streaming", digest)
            return False  # its rebuild failed after serving began: the client retries whole
        try:
            ref, offer = await self._find_offer(digest, repository)
            decision = await self._choose(ref, offer)
            if decision.choice is Choice.FULL:
                return False
            diff_id = await self._diff_id(ref, ensure)
        except DeltaMiss as exc:
            self._metrics.delta_miss(exc.reason)
            log.info("delta.miss digest=%s reason=%s detail=%s", digest, exc.reason, exc)
            return False
        attempt = _Attempt(offer, decision, self._clock.monotonic())
        try:
            rebuilt = await self._rebuild_from(attempt, ref.repository, diff_id, ensure)
        except DeltaFailure as exc:
            self._failed(attempt, exc)
            return False
        if rebuilt is True:
            self._hit(attempt)
        return rebuilt

    def _hit(self, attempt: _Attempt) -> None:
        offer = attempt.offer
        entry = self._cache.entry(offer.target)
        target_size = entry.size if entry is not None else 0
        self._metrics.delta_hit(max(0, target_size - offer.size))
        took = self._clock.monotonic() - attempt.chosen_at
        self.chooser.delta_taken(attempt.decision, took)
        log.info(
            "delta.hit digest=%s base=%s delta=%s delta_bytes=%d layer_bytes=%d seconds=%.3f",
            offer.target, offer.base, offer.delta, offer.size, target_size, took,
        )  # fmt: skip

    def _failed(self, attempt: _Attempt, exc: DeltaFailure) -> None:
        offer = attempt.offer
        self._metrics.delta_failure(exc.reason)
        log.warning(
            "delta.failed digest=%s base=%s delta=%s reason=%s detail=%s",
            offer.target, offer.base, offer.delta, exc.reason, exc,
        )  # fmt: skip

    # ---- finding a delta --------------------------------------------------

    async def _find_offer(
        self, digest: Digest, repository: str | None
    ) -> tuple[LayerRef, DeltaOffer]:
        ref = self._layers.layer(digest)
        if ref is None or repository is None:
            raise DeltaMiss(Miss.NOT_A_LAYER, "not a layer of an image this agent served")
        bases = self._layers.bases(repository, digest, self._cache.has)
        if not bases:
            raise DeltaMiss(Miss.NO_BASE, f"no cached layer of an earlier {repository} image")
        return ref, await self._lookup(digest, bases, repository)

    async def _lookup(self, digest: Digest, bases: list[Digest], repository: str) -> DeltaOffer:
        """Ask the origin; ``repo`` lets it link a delta it finds into the asking repository."""
        if not self._origin.configured:
            raise DeltaMiss(Miss.LOOKUP_FAILED, "no origin configured")
        url = self._origin.url(DELTAS, digest)
        try:
            async with asyncio.timeout(self._lookup_timeout):
                answer = await self._origin.lookup_delta(digest, bases, repository)
        except BodyTooLarge as exc:
            raise DeltaMiss(Miss.LOOKUP_FAILED, f"delta lookup {url}: {exc}") from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise DeltaMiss(Miss.LOOKUP_FAILED, f"delta lookup {url}: {exc!r}") from None
        if answer.status != 200:
            raise DeltaMiss(Miss.LOOKUP_FAILED, f"delta lookup {url} answered {answer.status}")
        return parse_offer(answer.body, digest, bases)

    # ---- delta or full ----------------------------------------------------

    async def _choose(self, ref: LayerRef, offer: DeltaOffer) -> Decision:
        """Delta or full for this layer on this node's current rates; counted and logged."""
        base_bytes, base_tar_bytes = await self._base_sizes(offer.base)
        costs = self.chooser.costs(
            layer_bytes=ref.size,
            media_type=ref.media_type,
            delta_bytes=offer.size,
            base_bytes=base_bytes,
            base_tar_bytes=base_tar_bytes,
        )
        return self.chooser.choose(offer.target, costs)

    async def _base_sizes(self, base: Digest) -> tuple[int, int | None]:
        """The cached base's size and, if its trailer or frame header says, its tar size."""
        entry = self._cache.entry(base)
        if entry is None:
            return 0, None
        try:
            with self._cache.pinned(base):
                head, tail = await asyncio.to_thread(read_blob_ends, self._cache.path(base))
        except OSError:
            return entry.size, None  # the rebuild will find out; the estimate uses the default
        return entry.size, tar_bytes_from_blob_ends(head, tail, entry.size)

    # ---- using it ---------------------------------------------------------

    async def _rebuild_from(
        self, attempt: _Attempt, repository: str, diff_id: Digest, ensure: EnsureBlob
    ) -> Literal[True] | RebuildTransfer:
        """Fetch the delta, then rebuild: streamed when the target's metainfo is at hand
        (base and delta stay pinned until the codec's thread ends), else whole."""
        offer = attempt.offer
        with contextlib.ExitStack() as pins:
            pins.enter_context(self._cache.pinned(offer.base))
            await self._fetch_delta(offer, repository, ensure)
            pins.enter_context(self._cache.pinned(offer.delta))
            had_base = self._cache.has(offer.base)  # pinned: only damage can drop it now
            if not await self._cache.ensure_verified(offer.base):  # rehashed if it changed
                if had_base:
                    raise DeltaFailure(Failure.BASE_DAMAGED, "the cached base was damaged")
                raise DeltaFailure(Failure.BASE_GONE, "the base left the cache")
            if not await self._cache.ensure_verified(offer.delta):
                raise DeltaFailure(Failure.DELTA_FETCH, "the delta left the cache")
            pieces = await self._piece_hashes(offer.target)
            work = self._cache.store.incoming_path()  # on the store's filesystem
            work.mkdir()
            rebuild = self._start_rebuild(offer, work)
            release = functools.partial(release_after, rebuild, work, pins.pop_all())
        if pieces is None:
            try:
                await self._commit(await self._rebuilt(rebuild, offer), offer, diff_id)
            finally:
                await asyncio.shield(release())
            return True
        try:
            transfer = await self._stream(rebuild, offer, diff_id, pieces, work)
        except BaseException:
            await asyncio.shield(release())
            raise
        self._follow(transfer, attempt, release)
        return transfer

    async def _fetch_delta(self, offer: DeltaOffer, repository: str, ensure: EnsureBlob) -> None:
        self._delta_blobs.add(offer.delta)
        try:
            async with asyncio.timeout(self._fetch_timeout):
                await ensure(offer.delta, repository)
        except Exception as exc:  # any source trouble: fetch the layer whole instead
            raise DeltaFailure(Failure.DELTA_FETCH, f"delta blob unavailable: {exc}") from None
        finally:
            self._delta_blobs.discard(offer.delta)

    async def _diff_id(self, ref: LayerRef, ensure: EnsureBlob) -> Digest:
        """The layer's diff_id from its image config (fetched like any blob if not cached)."""
        try:
            async with asyncio.timeout(self._fetch_timeout):
                await ensure(ref.config, ref.repository)
            with self._cache.pinned(ref.config):
                raw = await asyncio.to_thread(self._cache.path(ref.config).read_bytes)
            diff_ids = origin_json(raw[:MAX_CONFIG_BYTES])["rootfs"]["diff_ids"]
            return Digest.parse(diff_ids[ref.position])
        except Exception as exc:  # no config, or not one we can read: no delta
            raise DeltaMiss(Miss.NO_CONFIG, f"image config {ref.config}: {exc!r}") from None

    async def _piece_hashes(self, target: Digest) -> PieceHashes | None:
        """The target's piece hashes from the origin's metainfo; None: rebuild it whole."""
        try:
            async with asyncio.timeout(self._lookup_timeout):
                return PieceHashes.from_metainfo(await self._origin.metainfo(target), target)
        except (MetainfoError, aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.info("delta.not_streamed digest=%s reason=no metainfo detail=%s", target, exc)
            return None

    def _start_rebuild(self, offer: DeltaOffer, work: Path) -> asyncio.Future[RebuildResult]:
        """The codec in a worker thread (seconds of CPU: never on the event loop), timed."""
        base, delta = self._cache.path(offer.base), self._cache.path(offer.delta)
        # The header must name the layer the manifest asked for before any work is done.
        rebuild = functools.partial(rebuild_layer, expected_digest=str(offer.target))
        started = self._clock.monotonic()
        future = asyncio.get_running_loop().run_in_executor(
            self._executor, rebuild, base, delta, work
        )
        future.add_done_callback(lambda done: self._observe_rebuild(done, started))
        return future

    async def _rebuilt(
        self, rebuild: asyncio.Future[RebuildResult], offer: DeltaOffer
    ) -> RebuildResult:
        try:
            return await asyncio.shield(rebuild)
        except Exception as exc:  # DeltaFormatError, RecipeError, zlib.error from a rotten base...
            raise await self._failure_of(exc, offer) from None

    async def _failure_of(self, exc: BaseException, offer: DeltaOffer) -> DeltaFailure:
        """What a failed rebuild means. Maybe the delta is bad, maybe our base rotted on
        disk: the base is hashed again (a damaged one is dropped from the cache, so it is
        not offered next time)."""
        if isinstance(exc, DeltaFailure):
            return exc
        if isinstance(exc, StreamCancelled):
            return DeltaFailure(Failure.CANCELLED, str(exc))
        # A piece that fails its hash is the base's fault as often as the delta's.
        if not await self._cache.recheck(offer.base, self._executor):
            return DeltaFailure(Failure.BASE_DAMAGED, f"the cached base was damaged: {exc}")
        if isinstance(exc, PieceMismatch):
            return DeltaFailure(Failure.PIECE, str(exc))
        reason = Failure.RECIPE if isinstance(exc, RecipeError) else Failure.BAD_DELTA
        return DeltaFailure(reason, str(exc))

    async def _commit(self, result: RebuildResult, offer: DeltaOffer, diff_id: Digest) -> Path:
        """The checked rebuild into the store and the cache index; returns its path there."""
        if Digest.parse(result.digest) != offer.target:
            wrong = f"delta rebuilds {result.digest}, not {offer.target}"
            raise DeltaFailure(Failure.DIGEST, wrong)
        if Digest.parse(result.diff_id) != diff_id:
            raise DeltaFailure(
                Failure.DIFF_ID, f"rebuilt diff_id {result.diff_id}, the config says {diff_id}"
            )
        try:
            await asyncio.to_thread(self._cache.store.adopt_file, result.path, offer.target)
        except DigestMismatchError as exc:
            raise DeltaFailure(Failure.DIGEST, str(exc)) from None
        await self._cache.add(offer.target)
        return self._cache.path(offer.target)

    # ---- streaming it (agent.rebuildstream) -------------------------------

    async def _stream(
        self,
        rebuild: asyncio.Future[RebuildResult],
        offer: DeltaOffer,
        diff_id: Digest,
        pieces: PieceHashes,
        work: Path,
    ) -> RebuildTransfer:
        """The rebuild as a transfer, once its first piece verified; a failure before
        that is a ``DeltaFailure`` (the layer is fetched whole in the same request)."""

        async def commit(result: RebuildResult) -> Path:
            return await self._commit(result, offer, diff_id)

        out = work / offer.target.hex  # where rebuild_layer writes it
        transfer = RebuildTransfer(offer.target, pieces, rebuild, out, commit, self._clock)
        try:
            await transfer.wait_available(0)
        except TransferFailed as exc:
            raise await self._failure_of(failure_cause(exc), offer) from None
        return transfer

    def _follow(
        self,
        transfer: RebuildTransfer,
        attempt: _Attempt,
        release: Callable[[], Awaitable[None]],
    ) -> None:
        """Count the streamed rebuild's end (a hit, or a failure remembered so the next
        request for the layer fetches it whole: this one's client was cut off), then
        unpin and clean up."""

        async def follow() -> None:
            try:
                await transfer.wait_done()
            except TransferFailed as exc:
                self._remember_failed(attempt.offer.target)
                self._failed(attempt, await self._failure_of(failure_cause(exc), attempt.offer))
            else:
                self._hit(attempt)
            finally:
                await release()

        task = asyncio.create_task(follow(), name=f"delta-follow-{attempt.offer.target.hex[:12]}")
        self._followers.add(task)
        task.add_done_callback(self._followers.discard)

    def _remember_failed(self, target: Digest) -> None:
        self._failed_streams[target] = None
        while len(self._failed_streams) > MAX_FAILED_STREAMS:
            del self._failed_streams[next(iter(self._failed_streams))]

    def _observe_rebuild(self, done: asyncio.Future[RebuildResult], started: float) -> None:
        if done.cancelled() or done.exception() is not None:
            return
        result = done.result()
        seconds = self._clock.monotonic() - started
        self.chooser.observe_rebuild(result.recipe, result.tar_size, seconds)


@dataclass(frozen=True, slots=True)
class _Attempt:
    """A delta taken for a layer: what was offered, the choice, and when it was made."""

    offer: DeltaOffer
    decision: Decision
    chosen_at: float
