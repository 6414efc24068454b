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

A worker process that dies (say the kernel's OOM killer ends it) breaks a
``ProcessPoolExecutor`` for good; the engine then starts a fresh pool, and
the pair whose job died is recorded as failed (so it is not retried on
every lookup). Worker scratch files (``.krd`` deltas, decompressed tars) live
in ``deltas/work/``, which is emptied at start.

Wiring: ``origin.deltas.setup(app)`` from ``create_app``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import tempfile
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import Counter, Gauge

from krill import oci
from krill.atomicfile import write_atomic
from krill.blobstore import BlobStore
from krill.delta import MEDIA_TYPE, DeltaFormatError, RecipeError, apply_delta, create_delta
from krill.delta.format import FORMAT_NAME
from krill.digests import Digest
from krill.origin.appkeys import METRICS, REPOSITORIES, STORE, TAG_HISTORY, TAG_MOVED
from krill.origin.config import OriginConfig
from krill.registry_params import parse_digest, parse_name

log = logging.getLogger(__name__)

MAX_HAVE = 64
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


# --- worker-process jobs (top-level functions: they are pickled by name) -------------------


def compute_delta_job(base: str, target: str, work_dir: str, max_ratio: float) -> dict[str, Any]:
    """Create, verify and size-check one delta; runs in a worker process."""
    work = Path(work_dir)
    fd, name = tempfile.mkstemp(prefix="delta-", suffix=".krd", dir=work)
    os.close(fd)
    out = Path(name)
    try:
        result = create_delta(Path(base), Path(target), out)
        target_size = Path(target).stat().st_size
        if result.size >= max_ratio * target_size:
            out.unlink()
            return {"status": "too_big", "size": result.size, "target_size": target_size}
        scratch = out.with_suffix(".verify")
        try:
            rebuilt = apply_delta(Path(base), out, scratch)  # verifies diff_id and digest
        finally:
            scratch.unlink(missing_ok=True)
        return {"status": "ok", "path": str(out), "size": result.size, "digest": rebuilt.digest}
    except RecipeError as exc:
        out.unlink(missing_ok=True)
        return {"status": "unreproducible", "reason": str(exc)}
    except (DeltaFormatError, OSError, ValueError) as exc:
        out.unlink(missing_ok=True)
        return {"status": "failed", "reason": str(exc)}
    except Exception as exc:  # a corrupt layer (EOFError, zlib.error), MemoryError, ...
        out.unlink(missing_ok=True)
        return {"status": "failed", "reason": f"{exc.__class__.__name__}: {exc}"}


def file_list_job(blob: str, work_dir: str) -> list[str]:
    """The member names of a layer (for pairing by file-list overlap); runs in a worker.

    The decompressed tar goes to ``work_dir`` (emptied at start), not next to
    the blob, so a killed worker leaves nothing in the store.
    """
    from krill.delta.layerfiles import materialize_tar
    from krill.delta.tarscan import scan

    tar = materialize_tar(Path(blob), Path(work_dir))
    try:
        with open(tar.path, "rb") as f:
            return sorted({m.name for m in scan(f, tar.size).members})
    finally:
        tar.discard()


# --- the index -------------------------------------------------------------------------------


class DeltaIndex:
    """Per target layer: base digest -> outcome, one small JSON file per target."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, target: Digest) -> Path:
        return self.root / f"{target.hex}.json"

    def entries(self, target: Digest) -> dict[str, dict[str, Any]]:
        try:
            doc = json.loads(self._path(target).read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def record(self, target: Digest, base: Digest, entry: dict[str, Any]) -> None:
        """Add one outcome (blocking, fsynced: call off the event loop)."""
        doc = self.entries(target)
        doc[str(base)] = entry
        write_atomic(self._path(target), json.dumps(doc, sort_keys=True).encode())


# --- metrics ---------------------------------------------------------------------------------


class DeltaMetrics:
    def __init__(self, registry: Any) -> None:
        self.computed = Counter(
            "krill_origin_delta_computed",
            "Delta computations by result (ok, too_big, unreproducible, failed).",
            ["result"],
            registry=registry,
        )
        self.unreproducible = Counter(
            "krill_origin_delta_unreproducible_layers",
            "Layers that get no delta because their compression cannot be reproduced.",
            registry=registry,
        )
        self.requests = Counter(
            "krill_origin_delta_requests",
            "Delta lookups by answer (hit, none).",
            ["answer"],
            registry=registry,
        )
        self.queued = Gauge(
            "krill_origin_delta_queue", "Delta pairs waiting to be computed.", registry=registry
        )


# --- the engine ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Pair:
    target: Digest
    base: Digest
    repo: str | None


class DeltaEngine:
    """Plans pairs on tag moves, computes them in a process pool, answers lookups."""

    def __init__(self, app: web.Application, settings: DeltaSettings) -> None:
        self.app = app
        self.settings = settings
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
        self.pool: ProcessPoolExecutor | None = None
        self.idle = asyncio.Event()
        self.idle.set()

    # lifecycle

    async def run(self) -> AsyncIterator[None]:
        """cleanup_ctx: the pool and its feeder tasks live as long as the app."""
        if self.work.exists():
            for leftover in self.work.iterdir():  # crash leftovers: never published
                leftover.unlink(missing_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        self.pool = self._new_pool()
        feeders = [asyncio.create_task(self._feed()) for _ in range(self.settings.workers)]
        try:
            yield
        finally:
            for task in [*feeders, *self.tasks]:
                task.cancel()
            for task in [*feeders, *self.tasks]:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            pool, self.pool = self.pool, None
            # Waiting for a running job must not block the event loop (other apps' cleanup).
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            self.settings.workers, mp_context=multiprocessing.get_context("spawn")
        )

    async def _in_pool(self, job: Callable[..., Any], *args: Any) -> Any:
        """Run ``job`` in a worker; a dead worker gets the pool replaced.

        A pool already broken when the job is submitted (a worker died while
        idle) is replaced and the job goes to the new one; a job whose worker
        died under it fails (running it again would likely kill again).
        """
        for attempt in range(2):
            pool = self._running_pool()
            try:
                future = pool.submit(job, *args)
            except BrokenProcessPool:
                self._replace_pool(pool, job)
                if attempt == 0:
                    continue
                raise
            try:
                return await asyncio.wrap_future(future)
            except BrokenProcessPool:
                self._replace_pool(pool, job)
                raise
        raise AssertionError("unreachable")

    def _running_pool(self) -> ProcessPoolExecutor:
        if self.pool is None:
            raise RuntimeError("the delta engine is not running")
        return self.pool

    def _replace_pool(self, broken: ProcessPoolExecutor, job: Callable[..., Any]) -> None:
        if self.pool is broken:  # the first to notice replaces it
            log.error("delta.worker_died job=%s (starting a new pool)", job.__name__)
            self.pool = self._new_pool()
            broken.shutdown(wait=False, cancel_futures=True)

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
        targets = self._platform_layers(repo, new)
        previous = self.app[TAG_HISTORY].previous_manifests(repo, self.settings.history, new)
        bases = [self._platform_layers(repo, digest) for digest in previous]
        queued = 0
        for platform, layers in targets.items():
            earlier = [b[platform] for b in bases if platform in b]
            known = {layer for image in earlier for layer in image}
            for position, target in enumerate(layers):
                if target in known:
                    continue  # unchanged layer: nodes already have it
                for base in await self._candidates(position, target, earlier):
                    queued += self._enqueue(_Pair(target, base, repo))
        log.info("delta.planned repo=%s manifest=%s pairs=%d", repo, new, queued)
        return queued

    def _platform_layers(self, repo: str, manifest: Digest) -> dict[str, list[Digest]]:
        """Layers per platform ("os/arch/variant") of a manifest or index in the store."""
        parsed = self._manifest(repo, manifest)
        if parsed is None:
            return {}
        if not parsed.is_index:
            return {"": [layer.digest for layer in parsed.layers]}
        result: dict[str, list[Digest]] = {}
        for child in parsed.manifests:
            platform = child.platform or {}
            key = "/".join(str(platform.get(k, "")) for k in ("os", "architecture", "variant"))
            child_manifest = self._manifest(repo, child.digest)
            if child_manifest is not None and not child_manifest.is_index:
                result[key] = [layer.digest for layer in child_manifest.layers]
        if len(result) == 1:  # a one-platform index pairs with plain manifests too
            result[""] = next(iter(result.values()))
        return result

    def _manifest(self, repo: str, digest: Digest) -> oci.ParsedManifest | None:
        if not self.store.has(digest):
            return None
        media_type = self.app[REPOSITORIES].manifest_media_type(repo, digest)
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
        if not self.store.has(layer) or self.pool is None:
            return frozenset()
        try:
            names = frozenset(
                await self._in_pool(file_list_job, str(self.store.path(layer)), str(self.work))
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
        self.metrics.computed.labels("failed").inc()
        entry = {"status": "none", "reason": "failed"}
        try:
            await asyncio.to_thread(self.index.record, pair.target, pair.base, entry)
        except OSError:
            log.exception("delta.record_failed target=%s base=%s", pair.target, pair.base)

    async def _compute(self, pair: _Pair) -> None:
        if not (self.store.has(pair.target) and self.store.has(pair.base)):
            return
        self.work.mkdir(parents=True, exist_ok=True)
        result = await self._in_pool(
            compute_delta_job,
            str(self.store.path(pair.base)),
            str(self.store.path(pair.target)),
            str(self.work),
            self.settings.max_ratio,
        )
        status = result["status"]
        self.metrics.computed.labels(status).inc()
        if status == "ok":
            entry = await asyncio.to_thread(self._publish, pair, result)
        else:
            entry = {"status": "none", "reason": status}
            if status == "unreproducible" and not self._known_unreproducible(pair.target):
                self.metrics.unreproducible.inc()
                marker = self.unreproducible_dir / pair.target.hex
                await asyncio.to_thread(write_atomic, marker, (result["reason"] + "\n").encode())
        await asyncio.to_thread(self.index.record, pair.target, pair.base, entry)
        log.info(
            "delta.computed target=%s base=%s status=%s size=%s",
            pair.target,
            pair.base,
            status,
            result.get("size"),
        )

    def _publish(self, pair: _Pair, result: dict[str, Any]) -> dict[str, Any]:
        """Store the verified delta as a blob and link it where the target is linked."""
        delta = self.store.adopt_file(Path(result["path"]))
        repos = self.app[REPOSITORIES]
        names = [pair.repo] if pair.repo is not None else list(repos.names())
        for name in names:  # pairs queued by a lookup: every repository holding the target
            if repos.has_blob(name, pair.target):
                repos.link_blob(name, delta)
        return {"status": "ok", "delta": str(delta), "size": result["size"], "format": FORMAT_NAME}

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


DELTA_ENGINE = web.AppKey("krill_origin_delta_engine", DeltaEngine)


async def get_delta(request: web.Request) -> web.Response:
    """``GET /krill/v1/deltas/<target>?have=a,b[&repo=name]``: the smallest delta from a base
    the node has."""
    target = parse_digest(request.match_info["digest"], what="target digest")
    have_text = request.query.get("have", "")
    haves = [h for h in have_text.split(",") if h][:MAX_HAVE]
    have = [parse_digest(h, what="have digest") for h in haves]
    repo = _repo_param(request.query.get("repo"))
    return web.json_response(request.app[DELTA_ENGINE].lookup(target, have, repo))


def _repo_param(text: str | None) -> str | None:
    return parse_name(text) if text else None


def settings_for(config: OriginConfig) -> DeltaSettings:
    """The delta settings an origin was configured with."""
    return DeltaSettings(
        history=config.delta_history,
        workers=config.delta_workers,
        max_queue=config.delta_max_queue,
        max_ratio=config.delta_max_ratio,
    )


def setup(app: web.Application, settings: DeltaSettings | None = None) -> DeltaEngine:
    """Hook the engine into an origin app (TAG_MOVED hook, route, pool lifecycle)."""
    engine = DeltaEngine(app, settings or DeltaSettings())
    app[DELTA_ENGINE] = engine
    app[TAG_MOVED].append(engine.on_tag_moved)
    app.router.add_get("/krill/v1/deltas/{digest}", get_delta, name="delta_lookup")
    app.cleanup_ctx.append(lambda _app: engine.run())
    return engine
