"""Garbage collection: remove blobs, deltas and sidecars no manifest references.

Mark and sweep, safe beside a serving origin (``krill origin gc`` is another
process, ``gc_interval`` runs the same in the origin's own threads):

* **start**: ``cutoff`` = now - ``grace`` - ``CLOCK_SLACK``. Anything
  written or linked into a repository after it is kept whatever the marks
  say: a blob just uploaded whose manifest is not pushed yet, a blob mounted
  into a repository (every upload, mount, pull-through fill and delta touches
  the blob's link, ``Repositories.link_blob``). The slack covers file
  timestamps taken from the kernel's coarse clock, which can lag
  ``time.time()`` by a tick (4 ms at 250 Hz).
* **mark**: every manifest linked in any repository, its config, its layers,
  and for an index its child manifests (read from the store). A delta is
  live when its target and its base are (``deltas/index``).
* **sweep**, in batches, each under the exclusive ``GcLock`` (a manifest PUT
  holds it shared from its "are the blobs there" check to its link, see
  ``origin.gclock``): mark again from the manifests linked meanwhile (every
  manifest link is listed again; only new ones are read), then delete each
  unmarked blob whose file and every repository link are older than
  ``cutoff`` (mtime), with its sidecars (``.torrent`` metainfo) and its
  repository links. Uploads in progress live in ``incoming/``, which is never
  looked at.
* **before**, in a mirror with ``cache_max_age``/``cache_max_bytes``: the
  manifests past those limits are forgotten (``origin.cacheretention``).
* **after**: delta index entries whose target, base or delta is gone,
  ``unreproducible`` markers of gone targets, and sidecars whose blob is gone.

The one write it races without the lock: the delta engine recording a new
outcome for a target whose index file the collection is rewriting; the
outcome is then lost and the pair is computed again when a node asks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from krill import oci
from krill.atomicfile import write_atomic
from krill.blobstore import BlobStore
from krill.digests import Digest, DigestError
from krill.origin.cacheretention import CacheLimits, evict
from krill.origin.gclock import GcLock
from krill.origin.repositories import Repositories

__all__ = ["CLOCK_SLACK", "GarbageCollector", "GcKind", "GcReport"]

log = logging.getLogger(__name__)

CLOCK_SLACK = 0.05  # seconds: file timestamps come from the kernel's coarse clock
BATCH = 256  # blobs deleted per hold of the exclusive lock (pushes wait that long at most)
DELTAS_DIR = "deltas"  # as origin.deltas lays it out
REPOSITORIES_DIR = "repositories"


class GcKind(Enum):
    """What a collection removes; the value is the metrics label and the CLI's line."""

    BLOBS = "blobs"
    DELTAS = "deltas"
    METAINFO = "metainfo"
    DELTA_INDEX = "delta_index"


@dataclass
class Freed:
    objects: int = 0
    bytes: int = 0


@dataclass
class GcReport:
    """What a collection removed (or, dry, would remove), per kind."""

    dry_run: bool
    freed: dict[GcKind, Freed] = field(default_factory=lambda: {k: Freed() for k in GcKind})
    kept_recent: int = 0  # unreferenced, but committed or linked within the grace period
    evicted: int = 0  # a mirror's manifests forgotten by its retention limits
    # Blobs removed, or in a dry run those that would have been: a dry run's
    # delta-index pass counts them as gone, so it reports what the real run does.
    swept: set[Digest] = field(default_factory=set)

    def add(self, kind: GcKind, size: int) -> None:
        self.freed[kind].objects += 1
        self.freed[kind].bytes += size

    def lines(self) -> list[str]:
        verb = "would remove" if self.dry_run else "removed"
        return [
            f"{kind.value}: {verb} {freed.objects} object{'' if freed.objects == 1 else 's'}, "
            f"{freed.bytes} bytes"
            for kind, freed in self.freed.items()
        ]


class GarbageCollector:
    """One origin data directory's collector; ``collect()`` is blocking (run it in a thread)."""

    def __init__(
        self,
        data: Path,
        grace: float,
        *,
        now: Callable[[], float] = time.time,
        between_mark_and_sweep: Callable[[], None] | None = None,
        cache_limits: CacheLimits | None = None,
    ) -> None:
        self.cache_limits = cache_limits  # a mirror's retention, applied before marking
        self.store = _StoreBesideTheOrigin(data)
        self.repos = Repositories(data / REPOSITORIES_DIR)
        self.lock = GcLock(data)
        self.deltas = data / DELTAS_DIR
        self.grace = grace
        self._now = now
        # A test's hook, to push while a collection is between its two phases.
        self._between = between_mark_and_sweep

    def collect(self, dry_run: bool = False) -> GcReport:
        report = GcReport(dry_run)
        start = self._now()
        cutoff = start - self.grace - CLOCK_SLACK
        if self.cache_limits is not None and not dry_run:
            report.evicted = evict(self.store, self.repos, self.cache_limits, start)
        live: set[Digest] = set()
        self._mark(live)
        live |= self._live_deltas(live)
        if self._between is not None:
            self._between()
        candidates = [d for d in self.store.digests() if d not in live]
        delta_blobs = self._delta_blobs()
        for first in range(0, len(candidates), BATCH):
            batch = candidates[first : first + BATCH]
            with self.lock.exclusive():
                self._mark(live)  # manifests pushed since: theirs are live too
                repos = list(self.repos.names())
                for digest in batch:
                    if digest not in live:
                        self._sweep(digest, cutoff, digest in delta_blobs, repos, report)
        self._prune_delta_index(report)
        self._sweep_orphan_sidecars(report)
        log.info(
            "gc.done dry_run=%s %s kept_recent=%d",
            dry_run,
            " ".join(f"{k.value}={f.objects}/{f.bytes}" for k, f in report.freed.items()),
            report.kept_recent,
        )
        return report

    # mark

    def _mark(self, live: set[Digest]) -> None:
        """Add every manifest linked in any repository, and all it references, to ``live``."""
        visited: set[Digest] = set()
        for repo in self.repos.names():
            for digest in self.repos.manifests(repo):
                self._mark_manifest(repo, digest, live, visited)

    def _mark_manifest(
        self, repo: str, digest: Digest, live: set[Digest], visited: set[Digest]
    ) -> None:
        """Mark a manifest and what it references. ``visited``, not ``live``, says whether
        it was read: the same bytes may be live as another repository's layer first (a
        writer pushing a public manifest as its own blob), and a manifest skipped for that
        left its layers unmarked, for gc to delete (security review, stop 39)."""
        live.add(digest)
        if digest in visited:
            return
        visited.add(digest)
        try:
            body = self.store.read_bytes(digest)
        except FileNotFoundError:
            return
        media_type = self.repos.manifest_media_type(repo, digest)
        try:
            parsed = oci.parse_manifest(body, media_type)
        except oci.ManifestError as exc:
            log.warning("gc.manifest_unreadable repo=%s digest=%s error=%s", repo, digest, exc)
            return
        live.update(d.digest for d in parsed.blob_references())
        for child in parsed.manifests:
            self._mark_manifest(repo, child.digest, live, visited)

    def _index_files(self) -> Iterator[tuple[Path, Digest, dict[str, dict[str, object]]]]:
        folder = self.deltas / "index"
        if not folder.is_dir():
            return
        for path in sorted(folder.glob("*.json")):
            try:
                target = Digest.parse("sha256:" + path.stem)
                doc = json.loads(path.read_text())
            except (DigestError, ValueError, OSError):
                continue
            if isinstance(doc, dict):
                yield path, target, doc

    def _live_deltas(self, live: set[Digest]) -> set[Digest]:
        """Deltas whose target and base are both live."""
        found = set()
        for _path, target, doc in self._index_files():
            if target not in live:
                continue
            for base, entry in doc.items():
                delta = _delta_of(entry)
                if delta is not None and _parses(base) in live:
                    found.add(delta)
        return found

    def _delta_blobs(self) -> set[Digest]:
        return {
            delta
            for _path, _target, doc in self._index_files()
            for entry in doc.values()
            if (delta := _delta_of(entry)) is not None
        }

    # sweep

    def _sweep(
        self, digest: Digest, cutoff: float, is_delta: bool, names: list[str], report: GcReport
    ) -> None:
        path = self.store.path(digest)
        try:
            stat = path.stat()
        except FileNotFoundError:
            return
        recent_link = any(self.repos.blob_linked_since(r, digest, cutoff) for r in names)
        if stat.st_mtime >= cutoff or recent_link:
            report.kept_recent += 1
            return
        for sidecar in path.parent.glob(f"{digest.hex}.*"):
            with contextlib.suppress(FileNotFoundError):
                report.add(GcKind.METAINFO, sidecar.stat().st_size)
        report.add(GcKind.DELTAS if is_delta else GcKind.BLOBS, stat.st_size)
        report.swept.add(digest)
        if report.dry_run:
            return
        self.store.delete(digest)
        for repo in names:
            self.repos.unlink_blob(repo, digest)
        log.info("gc.removed digest=%s bytes=%d delta=%s", digest, stat.st_size, is_delta)

    def _prune_delta_index(self, report: GcReport) -> None:
        """Entries (and markers) naming a blob the store no longer has."""
        for path, target, doc in self._index_files():
            kept = {
                base: entry
                for base, entry in doc.items()
                if self._present(target, report)
                and self._present(_parses(base), report)
                and (_delta_of(entry) is None or self._present(_delta_of(entry), report))
            }
            dropped = len(doc) - len(kept)
            for _ in range(dropped):
                report.add(GcKind.DELTA_INDEX, 0)
            if report.dry_run or not dropped:
                continue
            if kept:
                write_atomic(path, json.dumps(kept, sort_keys=True).encode())
            else:
                path.unlink(missing_ok=True)
        markers = self.deltas / "unreproducible"
        for marker in sorted(markers.glob("*")) if markers.is_dir() else []:
            if not self._present(_parses("sha256:" + marker.name), report):
                report.add(GcKind.DELTA_INDEX, 0)
                if not report.dry_run:
                    marker.unlink(missing_ok=True)

    def _present(self, digest: Digest | None, report: GcReport) -> bool:
        """In the store after this run (a dry run's would-be removals count as gone).

        A real run asks the store only: a blob it failed to delete, or one pushed
        again since, is there, and its delta-index entries stay.
        """
        if digest is None or (report.dry_run and digest in report.swept):
            return False
        return self.store.has(digest)

    def _sweep_orphan_sidecars(self, report: GcReport) -> None:
        blobs_root = self.store.path(Digest("sha256", "0" * 64)).parent.parent
        for shard in sorted(blobs_root.iterdir()) if blobs_root.is_dir() else []:
            for sidecar in sorted(shard.glob("*.*")):
                blob = _parses("sha256:" + sidecar.name.split(".", 1)[0])
                if blob is None or self.store.has(blob):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    report.add(GcKind.METAINFO, sidecar.stat().st_size)
                    if not report.dry_run:
                        sidecar.unlink()


class _StoreBesideTheOrigin(BlobStore):
    """The origin's store, opened without clearing ``incoming/``.

    ``BlobStore()`` removes what is in ``incoming/`` (a crashed writer's
    leftovers), which beside a serving origin would be its uploads in progress.
    """

    def _clear_incoming(self) -> None:
        self._incoming.mkdir(parents=True, exist_ok=True)


def _parses(text: str) -> Digest | None:
    try:
        return Digest.parse(text)
    except DigestError:
        return None


def _delta_of(entry: object) -> Digest | None:
    """The delta blob a kept index entry names (None for a 'none' outcome)."""
    if not isinstance(entry, dict) or entry.get("status") != "ok":
        return None
    return _parses(str(entry.get("delta", "")))
