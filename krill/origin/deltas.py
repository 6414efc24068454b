"""The origin's delta pipeline: precompute layer deltas when a tag moves, serve the best one.

When ``repo:tag`` moves to a new manifest, each new layer is paired with
base candidates from the layers of the repository's last K versions (same
platform): the layer at the same position, and the layer whose file list
overlaps most. Pairs are computed in a bounded process pool; a delta is
kept only if it is under half the target's size *and* rebuilding the target
from base + delta + recipe reproduced the target's sha256. Kept deltas are
stored as ordinary blobs (so they swarm like any blob) and indexed.

``GET /krill/v1/deltas/<target>?have=<digest>,...`` answers::

    {"status": "ok", "target": ..., "base": ..., "delta": ..., "size": N,
     "format": "krill-delta/1", "mediaType": "application/vnd.krill.delta.v1"}

or ``{"status": "none", "queued": N}`` at once, queueing the pairs not
computed yet (nodes on older versions are served next time). With
``repo=<name>`` a hit is also linked into that repository when the target
is linked there, so a node pulling through ``<name>`` can fetch it there.

A worker process that dies (say the kernel's OOM killer ends it) gets the
pool replaced (``origin.deltapool``), and the pair whose job died is
recorded as failed (so it is not retried on every lookup). Worker scratch
files (``.krd`` deltas, decompressed tars) live in ``deltas/work/``, which
is emptied at start.

In a pull-through mirror a tag moves when a refresh finds it moved upstream,
and the new layers are not in the store yet (no client has asked for them).
The engine is then given a ``Prefetch`` (the mirror's): before pairing, it
has the new manifest's child manifests and changed layers fetched, but only
for platforms whose earlier version the mirror holds (a base layer in the
store), since only those layers can get a delta. Without it the pairs would
be skipped until some node had downloaded the whole layer.

The pipeline's other parts: the jobs and their ``DeltaOutcome``
(``origin.deltajobs``), the per-target index (``origin.deltaindex``), the
lookup route and the wiring, ``origin.delta_routes.setup(app)`` from
``create_app``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from krill import oci
from krill.atomicfile import write_atomic
from krill.blobstore import BlobStore
from krill.clock import SYSTEM_CLOCK, Clock
from krill.delta import MEDIA_TYPE
from krill.delta.format import FORMAT_NAME
from krill.digests import Digest
from krill.origin.appkeys import METRICS, REPOSITORIES, STORE, TAG_HISTORY
from krill.origin.config import OriginConfig
from krill.origin.deltaindex import DeltaIndex
from krill.origin.deltajobs import DeltaOutcome, JobResult, compute_delta_job, file_list_job
from krill.origin.deltapool import WorkerPool
from krill.origin.metrics import DeltaMetrics

__all__ = ["DELTA_ENGINE", "DeltaEngine", "DeltaSettings", "Prefetch", "settings_for"]

log = logging.getLogger(__name__)

DELTAS_DIR = "deltas"
FILE_LIST_CACHE = 4096  # layers whose file lists are kept in memory (a few KiB each)


@dataclass(frozen=True, slots=True)
class DeltaSettings:
    """How much delta work the origin does (defaults suit a small origin)."""

    history: int = 3  # K: previous versions whose layers are base candidates
    workers: int = 1  # processes computing deltas at once
    max_queue: int = 1024  # pairs waiting; more are dropped (and asked for again later)
    max_ratio: float = 0.5  # keep a delta only if smaller than this fraction of the target
    candidates_per_layer: int = 2


class Prefetch(Protocol):
    """Brings a moved tag's manifests and layers into the store before pairing (a mirror's)."""

    async def prefetch_manifests(self, repo: str, digests: list[Digest]) -> None: ...

    async def prefetch_blobs(self, repo: str, digests: list[Digest]) -> None: ...


@dataclass(frozen=True, slots=True)
class _Changed:
    """A new layer that an earlier version of its platform did not have."""

    position: int
    target: Digest
    earlier: list[list[Digest]]  # that platform's layers in each earlier version


@dataclass(frozen=True, slots=True)
class _Pair:
    target: Digest
    base: Digest
    repo: str | None


class DeltaEngine:
    """Plans pairs on tag moves, computes them in a process pool, answers lookups."""

    def __init__(
        self,
        app: web.Application,
        settings: DeltaSettings,
        prefetch: Prefetch | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.app = app
        self.clock = clock  # times computations (krill_origin_delta_compute_seconds)
        self.settings = settings
        self.prefetch = prefetch  # None: a registry of record, where pushes bring every layer
        self.store: BlobStore = app[STORE]
        root = self.store.root / DELTAS_DIR
        self.work = root / "work"
        self.index = DeltaIndex(root / "index")
        self.unreproducible_dir = root / "unreproducible"
        self.metrics = DeltaMetrics(app[METRICS].registry)
        self.queue: asyncio.Queue[_Pair] = asyncio.Queue(settings.max_queue)
        self.pending: set[tuple[Digest, Digest]] = set()
        self.file_lists: OrderedDict[Digest, frozenset[str]] = OrderedDict()
        self.tasks: set[asyncio.Task[None]] = set()
        self.pool = WorkerPool(settings.workers)
        self.idle = asyncio.Event()
        self.idle.set()

    # lifecycle

    async def run(self) -> AsyncIterator[None]:
        """cleanup_ctx: the pool and its feeder tasks live as long as the app."""
        if self.work.exists():
            for leftover in self.work.iterdir():  # crash leftovers: never published
                leftover.unlink(missing_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        self.pool.start()
        feeders = [asyncio.create_task(self._feed()) for _ in range(self.settings.workers)]
        try:
            yield
        finally:
            for task in [*feeders, *self.tasks]:
                task.cancel()
            for task in [*feeders, *self.tasks]:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            # Waiting for a running job must not block the event loop (other apps' cleanup).
            await self.pool.close()

    # planning

    async def on_tag_moved(self, repo: str, tag: str, old: Digest | None, new: Digest) -> None:
        """TAG_MOVED hook: plan in the background so the push is answered at once."""
        task = asyncio.create_task(self._plan_logged(repo, new))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _plan_logged(self, repo: str, new: Digest) -> None:
        try:
            await self.plan(repo, new)
        except Exception:
            log.exception("delta.plan_failed repo=%s manifest=%s", repo, new)

    async def plan(self, repo: str, new: Digest) -> int:
        """Queue (target, base) pairs for the new manifest's layers; return how many."""
        previous = self.app[TAG_HISTORY].previous_manifests(repo, self.settings.history, new)
        bases = [self._platform_layers(repo, digest) for digest in previous]
        if self.prefetch is not None:
            children = self._children_wanted(repo, new, bases)
            await self.prefetch.prefetch_manifests(repo, children)
        changed = self._changed_layers(self._platform_layers(repo, new), bases)
        if self.prefetch is not None:
            missing = [c.target for c in changed if not self.store.has(c.target)]
            await self.prefetch.prefetch_blobs(repo, missing)
        queued = 0
        for layer in changed:
            for base in await self._candidates(layer.position, layer.target, layer.earlier):
                queued += self._enqueue(_Pair(layer.target, base, repo))
        log.info("delta.planned repo=%s manifest=%s pairs=%d", repo, new, queued)
        return queued

    def _changed_layers(
        self, targets: dict[str, list[Digest]], bases: list[dict[str, list[Digest]]]
    ) -> list[_Changed]:
        """New layers of platforms with an earlier version whose layers the store holds."""
        changed: list[_Changed] = []
        for platform, layers in targets.items():
            earlier = [b[platform] for b in bases if platform in b]
            known = {layer for image in earlier for layer in image}
            if not any(self.store.has(layer) for layer in known):
                continue  # no base to diff against: fetching the target would buy nothing
            changed.extend(
                _Changed(position, target, earlier)
                for position, target in enumerate(layers)
                if target not in known  # unchanged layer: nodes already have it
            )
        return changed

    def _children_wanted(
        self, repo: str, new: Digest, bases: list[dict[str, list[Digest]]]
    ) -> list[Digest]:
        """Child manifests of a new index, for the platforms an earlier version has."""
        parsed = self._manifest(repo, new)
        if parsed is None or not parsed.is_index:
            return []
        platforms = {key for base in bases for key in base}
        single = len(parsed.manifests) == 1 and "" in platforms
        return [
            child.digest
            for child in parsed.manifests
            if (single or _platform_key(child.platform) in platforms)
            and not self.store.has(child.digest)
        ]

    def _platform_layers(self, repo: str, manifest: Digest) -> dict[str, list[Digest]]:
        """Layers per platform ("os/arch/variant") of a manifest or index in the store."""
        parsed = self._manifest(repo, manifest)
        if parsed is None:
            return {}
        if not parsed.is_index:
            return {"": [layer.digest for layer in parsed.layers]}
        result: dict[str, list[Digest]] = {}
        for child in parsed.manifests:
            key = _platform_key(child.platform)
            child_manifest = self._manifest(repo, child.digest)
            if child_manifest is not None and not child_manifest.is_index:
                result[key] = [layer.digest for layer in child_manifest.layers]
        if len(result) == 1:  # a one-platform index pairs with plain manifests too
            result[""] = next(iter(result.values()))
        return result

    def _manifest(self, repo: str, digest: Digest) -> oci.ParsedManifest | None:
        media_type = self.app[REPOSITORIES].manifest_media_type(repo, digest)
        if media_type is None or not self.store.has(digest):
            return None  # deleted from the repository: its history line is no version now
        try:
            return oci.parse_manifest(self.store.read_bytes(digest), media_type)
        except oci.ManifestError:
            return None

    async def _candidates(
        self, position: int, target: Digest, earlier: list[list[Digest]]
    ) -> list[Digest]:
        """Same position in each earlier version, then the best file-list overlap."""
        chosen: list[Digest] = []
        for image in earlier:
            if position < len(image) and image[position] not in chosen:
                chosen.append(image[position])
        overlap = await self._best_overlap(target, {d for image in earlier for d in image})
        if overlap is not None and overlap not in chosen:
            chosen.insert(1, overlap)
        return chosen[: self.settings.candidates_per_layer]

    async def _best_overlap(self, target: Digest, bases: set[Digest]) -> Digest | None:
        target_files = await self._file_list(target)
        best, best_score = None, 0.0
        for base in sorted(bases, key=str):
            files = await self._file_list(base)
            union = len(target_files | files)
            score = len(target_files & files) / union if union else 0.0
            if score > best_score:
                best, best_score = base, score
        return best

    async def _file_list(self, layer: Digest) -> frozenset[str]:
        """The layer's member names (empty if unreadable); a bounded LRU cache."""
        cached = self.file_lists.get(layer)
        if cached is not None:
            self.file_lists.move_to_end(layer)
            return cached
        if not self.store.has(layer) or not self.pool.running:
            return frozenset()
        try:
            names = frozenset(
                await self.pool.run(file_list_job, str(self.store.path(layer)), str(self.work))
            )
        except BrokenProcessPool:
            return frozenset()  # the worker died, not the layer's fault: ask again next time
        except Exception as exc:  # a layer we cannot read pairs by position only
            log.info("delta.file_list_failed layer=%s error=%s", layer, exc)
            names = frozenset()
        self.file_lists[layer] = names
        while len(self.file_lists) > FILE_LIST_CACHE:
            self.file_lists.popitem(last=False)
        return names

    def _enqueue(self, pair: _Pair) -> int:
        key = (pair.target, pair.base)
        if key in self.pending or str(pair.base) in self.index.entries(pair.target):
            return 0
        if self._known_unreproducible(pair.target):
            return 0
        try:
            self.queue.put_nowait(pair)
        except asyncio.QueueFull:
            return 0
        self.pending.add(key)
        self.idle.clear()
        self.metrics.queued.set(self.queue.qsize())
        return 1

    def _known_unreproducible(self, target: Digest) -> bool:
        return (self.unreproducible_dir / target.hex).exists()

    # computing

    async def _feed(self) -> None:
        while True:
            pair = await self.queue.get()
            self.metrics.queued.set(self.queue.qsize())
            try:
                await self._compute(pair)
            except Exception as exc:
                log.exception("delta.compute_crashed target=%s base=%s", pair.target, pair.base)
                await self._record_failure(pair, exc)
            finally:
                self.pending.discard((pair.target, pair.base))
                self.queue.task_done()
                if not self.pending:
                    self.idle.set()

    async def _record_failure(self, pair: _Pair, exc: Exception) -> None:
        """Remember the failure, so the pair is not recomputed on every lookup."""
        self.metrics.computed.labels(DeltaOutcome.FAILED.value).inc()
        entry = {"status": "none", "reason": DeltaOutcome.FAILED.value}
        try:
            await asyncio.to_thread(self.index.record, pair.target, pair.base, entry)
        except OSError:
            log.exception("delta.record_failed target=%s base=%s", pair.target, pair.base)

    async def _compute(self, pair: _Pair) -> None:
        if not (self.store.has(pair.target) and self.store.has(pair.base)):
            return
        self.work.mkdir(parents=True, exist_ok=True)
        started = self.clock.monotonic()
        result = await self.pool.run(
            compute_delta_job,
            str(self.store.path(pair.base)),
            str(self.store.path(pair.target)),
            str(self.work),
            self.settings.max_ratio,
        )
        self.metrics.computed.labels(result.outcome.value).inc()
        seconds = self.clock.monotonic() - started
        self.metrics.compute_seconds.labels(result.outcome.value).observe(seconds)
        if result.outcome is DeltaOutcome.OK:
            entry = await asyncio.to_thread(self._publish, pair, result)
        else:
            entry = {"status": "none", "reason": result.outcome.value}
            if result.outcome is DeltaOutcome.UNREPRODUCIBLE:
                await self._mark_unreproducible(pair.target, result.reason)
        await asyncio.to_thread(self.index.record, pair.target, pair.base, entry)
        log.info(
            "delta.computed target=%s base=%s status=%s size=%s",
            pair.target,
            pair.base,
            result.outcome.value,
            result.size,
        )

    async def _mark_unreproducible(self, target: Digest, reason: str) -> None:
        """Remember (and count, once) a target no base can ever give a delta for."""
        if self._known_unreproducible(target):
            return
        self.metrics.unreproducible.inc()
        marker = self.unreproducible_dir / target.hex
        await asyncio.to_thread(write_atomic, marker, (reason + "\n").encode())

    def _publish(self, pair: _Pair, result: JobResult) -> dict[str, Any]:
        """Store the verified delta as a blob and link it where the target is linked."""
        assert result.path is not None and result.size is not None  # an OK result has both
        delta = self.store.adopt_file(Path(result.path))
        repos = self.app[REPOSITORIES]
        names = [pair.repo] if pair.repo is not None else list(repos.names())
        for name in names:  # pairs queued by a lookup: every repository holding the target
            if repos.has_blob(name, pair.target):
                repos.link_blob(name, delta)
        return {"status": "ok", "delta": str(delta), "size": result.size, "format": FORMAT_NAME}

    # serving

    def lookup(self, target: Digest, have: list[Digest], repo: str | None = None) -> dict[str, Any]:
        """The smallest delta from a base in ``have`` (linked into ``repo`` if given)."""
        entries = self.index.entries(target)
        found = [
            (entry["size"], base, entry)
            for base, entry in entries.items()
            if entry.get("status") == "ok"
            and base in {str(h) for h in have}
            and self.store.has(Digest.parse(entry["delta"]))
        ]
        if found:
            size, base, entry = min(found, key=lambda item: item[0])
            self.metrics.requests.labels("hit").inc()
            if repo is not None:
                self._link_into(repo, target, Digest.parse(entry["delta"]))
            return {
                "status": "ok",
                "target": str(target),
                "base": base,
                "delta": entry["delta"],
                "size": size,
                "format": entry["format"],
                "mediaType": MEDIA_TYPE,
            }
        self.metrics.requests.labels("none").inc()
        return {"status": "none", "target": str(target), "queued": self._queue_asked(target, have)}

    def _link_into(self, repo: str, target: Digest, delta: Digest) -> None:
        """Make the delta fetchable under ``repo`` if the target is (it was made elsewhere)."""
        repos = self.app[REPOSITORIES]
        if repos.has_blob(repo, target) and not repos.has_blob(repo, delta):
            repos.link_blob(repo, delta)

    def _queue_asked(self, target: Digest, have: list[Digest]) -> int:
        """Queue deltas from the first few bases a node offered (it lists its best first).

        Every base queued costs a delta computation, so a node offering many
        layers queues only ``candidates_per_layer`` of them; nodes on the same
        old version offer the same bases, so the next of them gets a hit.
        """
        if not self.store.has(target):
            return 0
        entries = self.index.entries(target)
        usable = [
            base
            for base in have
            if base != target and self.store.has(base) and str(base) not in entries
        ]
        return sum(
            self._enqueue(_Pair(target, base, None))
            for base in usable[: self.settings.candidates_per_layer]
        )


def _platform_key(platform: dict[str, Any] | None) -> str:
    """"os/arch/variant" of an index entry, how layers of one platform are paired."""
    fields = platform or {}
    return "/".join(str(fields.get(k, "")) for k in ("os", "architecture", "variant"))


DELTA_ENGINE = web.AppKey("krill_origin_delta_engine", DeltaEngine)


def settings_for(config: OriginConfig) -> DeltaSettings:
    """The delta settings an origin was configured with."""
    return DeltaSettings(
        history=config.delta_history,
        workers=config.delta_workers,
        max_queue=config.delta_max_queue,
        max_ratio=config.delta_max_ratio,
    )
