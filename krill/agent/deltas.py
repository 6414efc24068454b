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
node cache.

Every way this can go wrong ends in ``False`` (fetch the full layer), a
metric with the reason and one log line: a miss when there was no delta to
try (``not_a_layer``, ``no_base``, ``none``, ``lookup_failed``, ``no_config``),
a failure when a delta was tried and did not produce the layer
(``delta_fetch``, ``base_gone``, ``base_damaged``, ``bad_delta``, ``recipe``,
``diff_id``, ``digest``). The lookup has its own short timeout, so a slow origin delays
the normal path by at most ``lookup_timeout`` seconds; fetching the delta (and
the config) is bounded by ``fetch_timeout``.

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
import functools
import json
import logging
import shutil
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from krill.agent.cache import NodeCache
from krill.agent.deltachoice import (
    BLOB_HEAD_BYTES,
    Choice,
    Decision,
    DeltaPolicy,
    LayerCosts,
    Rates,
    compression_of,
    decide,
    estimate_tar_bytes,
    kind_of_recipe,
    tar_bytes_from_blob_ends,
)
from krill.agent.layers import LayerIndex, LayerRef
from krill.blobstore import DigestMismatchError
from krill.bodies import BodyTooLarge
from krill.clock import SYSTEM_CLOCK, Clock
from krill.delta import RebuildResult, RecipeError, rebuild_layer
from krill.digests import Digest, DigestError
from krill.endpoints import DELTAS
from krill.oci import nesting_depth
from krill.originclient import OriginClient

log = logging.getLogger(__name__)

MAX_CONFIG_BYTES = 4 * 1024 * 1024
# JSON from the origin (image configs, delta offers) nests a handful of levels;
# json.loads recurses per level, so a hostile origin's 100,000 "[" would be a
# RecursionError in the agent. Depth is measured (oci.nesting_depth) first.
MAX_JSON_DEPTH = 64
# Full-layer choices waiting for their download to finish, so the seconds the choice
# saved can be measured; a download that never finishes must not keep one forever.
MAX_AWAITED_DOWNLOADS = 256


class Miss(StrEnum):
    """Why no delta was tried (the ``krill_agent_delta_misses_total`` label)."""

    NOT_A_LAYER = "not_a_layer"
    NO_BASE = "no_base"
    LOOKUP_FAILED = "lookup_failed"
    NONE = "none"  # the origin has none yet (the lookup queued one)
    NO_CONFIG = "no_config"


class Failure(StrEnum):
    """Why a delta that was tried gave no layer (``krill_agent_delta_failures_total``)."""

    DELTA_FETCH = "delta_fetch"
    BASE_GONE = "base_gone"
    BASE_DAMAGED = "base_damaged"
    BAD_DELTA = "bad_delta"
    RECIPE = "recipe"
    DIFF_ID = "diff_id"
    DIGEST = "digest"


class DeltaMetrics(Protocol):
    def delta_hit(self, bytes_saved: int) -> None: ...

    def delta_miss(self, reason: Miss) -> None: ...

    def delta_failure(self, reason: Failure) -> None: ...

    def delta_choice(self, decision: Decision) -> None: ...

    def delta_seconds(self, choice: Choice, saved: float) -> None:
        """Seconds a choice saved (negative: lost): the path taken, measured, against
        the other path's estimate."""
        ...


# Makes a blob cached on this node through the normal sources; returns its size.
EnsureBlob = Callable[[Digest, str], Awaitable[int]]


@dataclass(frozen=True, slots=True)
class DeltaOffer:
    """The origin's answer: rebuild ``target`` from ``base`` with blob ``delta``."""

    target: Digest
    base: Digest
    delta: Digest
    size: int


class DeltaMiss(Exception):
    """No delta to try; ``reason`` labels the miss metric."""

    def __init__(self, reason: Miss, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


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
        self._policy = policy
        self._clock = clock
        self.rates = Rates()  # changed only by observe_download and the rebuilds below
        self._awaiting_full: dict[Digest, Decision] = {}

    def observe_download(self, digest: Digest, nbytes: int, seconds: float) -> None:
        """A blob finished downloading (swarm or origin): a link rate sample, and the
        measured half of a full-layer choice's seconds saved."""
        self.rates.observe_download(nbytes, seconds)
        decision = self._awaiting_full.pop(digest, None)
        if decision is not None:
            self._metrics.delta_seconds(Choice.FULL, decision.estimate.delta_seconds - seconds)

    async def rebuild(self, digest: Digest, repository: str | None, ensure: EnsureBlob) -> bool:
        """True when ``digest`` is now cached, rebuilt from a delta; False: fetch it whole."""
        if digest in self._delta_blobs:
            return False  # the delta blob itself, being fetched for a rebuild
        try:
            ref, offer = await self._find_offer(digest, repository)
            decision = await self._choose(ref, offer)
            if decision.choice is Choice.FULL:
                self._await_full_download(digest, decision)
                return False
            diff_id = await self._diff_id(ref, ensure)
        except DeltaMiss as exc:
            self._metrics.delta_miss(exc.reason)
            log.info("delta.miss digest=%s reason=%s detail=%s", digest, exc.reason, exc)
            return False
        chosen_at = self._clock.monotonic()
        try:
            await self._rebuild_from(offer, ref.repository, diff_id, ensure)
        except DeltaFailure as exc:
            self._metrics.delta_failure(exc.reason)
            log.warning(
                "delta.failed digest=%s base=%s delta=%s reason=%s detail=%s",
                digest,
                offer.base,
                offer.delta,
                exc.reason,
                exc,
            )
            return False
        entry = self._cache.entry(digest)
        target_size = entry.size if entry is not None else 0
        self._metrics.delta_hit(max(0, target_size - offer.size))
        took = self._clock.monotonic() - chosen_at
        self._metrics.delta_seconds(Choice.DELTA, decision.estimate.full_seconds - took)
        log.info(
            "delta.hit digest=%s base=%s delta=%s delta_bytes=%d layer_bytes=%d",
            digest,
            offer.base,
            offer.delta,
            offer.size,
            target_size,
        )
        return True

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
        compression = compression_of(ref.media_type)
        base_bytes, base_tar = await self._base_sizes(offer.base)
        costs = LayerCosts(
            layer_bytes=ref.size,
            delta_bytes=offer.size,
            tar_bytes=estimate_tar_bytes(ref.size, compression, base_bytes, base_tar),
            kind=self.rates.likely_kind(compression),
        )
        decision = decide(self._policy, costs, self.rates)
        self._metrics.delta_choice(decision)
        expected = decision.estimate
        log.info(
            "delta.choice digest=%s choice=%s reason=%s policy=%s delta_s=%.3f full_s=%.3f "
            "layer_bytes=%d delta_bytes=%d tar_bytes_est=%d recipe_est=%s link_Bps=%.0f "
            "link_samples=%d rebuild_Bps=%.0f rebuild_samples=%d",
            offer.target, decision.choice, decision.reason, self._policy,
            expected.delta_seconds, expected.full_seconds,
            costs.layer_bytes, costs.delta_bytes, costs.tar_bytes, costs.kind,
            expected.link_rate, self.rates.link.samples,
            expected.rebuild_rate, self.rates.rebuild[costs.kind].samples,
        )  # fmt: skip
        return decision

    async def _base_sizes(self, base: Digest) -> tuple[int, int | None]:
        """The cached base's size and, if its trailer or frame header says, its tar size."""
        entry = self._cache.entry(base)
        if entry is None:
            return 0, None
        try:
            with self._cache.pinned(base):
                head, tail = await asyncio.to_thread(_blob_ends, self._cache.path(base))
        except OSError:
            return entry.size, None  # the rebuild will find out; the estimate uses the default
        return entry.size, tar_bytes_from_blob_ends(head, tail, entry.size)

    def _await_full_download(self, digest: Digest, decision: Decision) -> None:
        self._awaiting_full[digest] = decision
        while len(self._awaiting_full) > MAX_AWAITED_DOWNLOADS:
            del self._awaiting_full[next(iter(self._awaiting_full))]

    # ---- using it ---------------------------------------------------------

    async def _rebuild_from(
        self, offer: DeltaOffer, repository: str, diff_id: Digest, ensure: EnsureBlob
    ) -> None:
        with self._cache.pinned(offer.base):
            self._delta_blobs.add(offer.delta)
            try:
                async with asyncio.timeout(self._fetch_timeout):
                    await ensure(offer.delta, repository)
            except Exception as exc:  # any source trouble: fetch the layer whole instead
                raise DeltaFailure(Failure.DELTA_FETCH, f"delta blob unavailable: {exc}") from None
            finally:
                self._delta_blobs.discard(offer.delta)
            with self._cache.pinned(offer.delta):
                if not await self._cache.ensure_verified(offer.base):
                    raise DeltaFailure(Failure.BASE_GONE, "the base left the cache")
                if not await self._cache.ensure_verified(offer.delta):
                    raise DeltaFailure(Failure.DELTA_FETCH, "the delta left the cache")
                await self._rebuild_and_commit(offer, diff_id)

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

    async def _rebuild_and_commit(self, offer: DeltaOffer, diff_id: Digest) -> None:
        store = self._cache.store
        work = store.incoming_path()  # on the store's filesystem; cleared on restart
        work.mkdir()
        try:
            result = await self._run_rebuild(offer, work)
            if Digest.parse(result.diff_id) != diff_id:
                raise DeltaFailure(
                    Failure.DIFF_ID, f"rebuilt diff_id {result.diff_id}, the config says {diff_id}"
                )
            try:
                await asyncio.to_thread(store.adopt_file, result.path, offer.target)
            except DigestMismatchError as exc:
                raise DeltaFailure(Failure.DIGEST, str(exc)) from None
            await self._cache.add(offer.target)
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)

    async def _run_rebuild(self, offer: DeltaOffer, work: Path) -> RebuildResult:
        base, delta = self._cache.path(offer.base), self._cache.path(offer.delta)
        try:
            loop = asyncio.get_running_loop()
            # The header must name the layer the manifest asked for before any work is done.
            rebuild = functools.partial(rebuild_layer, expected_digest=str(offer.target))
            started = self._clock.monotonic()
            result = await loop.run_in_executor(self._executor, rebuild, base, delta, work)
            self._observe_rebuild(result, self._clock.monotonic() - started)
        except Exception as exc:  # DeltaFormatError, RecipeError, zlib.error from a rotten base...
            # Maybe the delta is bad, maybe our base rotted on disk: hash the base again
            # (a damaged one is dropped from the cache, so it is not offered next time).
            if not await self._cache.recheck(offer.base, self._executor):
                damaged = f"the cached base was damaged: {exc}"
                raise DeltaFailure(Failure.BASE_DAMAGED, damaged) from None
            reason = Failure.RECIPE if isinstance(exc, RecipeError) else Failure.BAD_DELTA
            raise DeltaFailure(reason, str(exc)) from None
        if Digest.parse(result.digest) != offer.target:
            wrong = f"delta rebuilds {result.digest}, not {offer.target}"
            raise DeltaFailure(Failure.DIGEST, wrong)
        return result

    def _observe_rebuild(self, result: RebuildResult, seconds: float) -> None:
        kind = kind_of_recipe(result.recipe)
        if kind is not None:
            self.rates.observe_rebuild(kind, result.tar_size, seconds)


def _blob_ends(path: Path) -> tuple[bytes, bytes]:
    """A blob's first ``BLOB_HEAD_BYTES`` and last 4 bytes (where gzip keeps ISIZE)."""
    with open(path, "rb") as f:
        head = f.read(BLOB_HEAD_BYTES)
        f.seek(max(0, f.seek(0, 2) - 4))
        return head, f.read(4)


def origin_json(body: bytes) -> Any:
    """``body`` decoded as JSON; ValueError past ``MAX_JSON_DEPTH`` levels, never RecursionError."""
    depth = nesting_depth(body)
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"JSON nests {depth} levels deep, over the limit of {MAX_JSON_DEPTH}")
    return json.loads(body)


def parse_offer(body: bytes, target: Digest, bases: list[Digest]) -> DeltaOffer:
    """Check the origin's JSON answer; anything off counts as a failed lookup."""
    try:
        doc = origin_json(body)
        status = doc["status"]
        if status == "none":
            raise DeltaMiss(Miss.NONE, f"no delta yet (queued {doc.get('queued', 0)})")
        if status != "ok":
            raise ValueError(f"status {status!r}")
        offer = DeltaOffer(
            Digest.parse(doc["target"]),
            Digest.parse(doc["base"]),
            Digest.parse(doc["delta"]),
            _json_int(doc["size"]),
        )
    except (ValueError, KeyError, TypeError, DigestError) as exc:
        raise DeltaMiss(Miss.LOOKUP_FAILED, f"unreadable delta answer: {exc!r}") from None
    if offer.target != target or offer.base not in bases or offer.size <= 0:
        unfit = f"delta answer does not fit the request: {str(doc)[:500]}"
        raise DeltaMiss(Miss.LOOKUP_FAILED, unfit)
    return offer


def _json_int(value: object) -> int:
    """A JSON integer; TypeError for anything else (int() would take "10", 1.5 and True,
    and raise OverflowError for Infinity)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r:.40}")
    return value
