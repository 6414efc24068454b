"""The agent's Prometheus metrics, on a registry of its own (one per agent instance).

``bytes_served`` says where the bytes clients received came from (cache,
swarm, origin HTTP fallback); ``swarm_payload_bytes`` is libtorrent's own
count of peer traffic (the origin's seed counts as a peer there);
``swarm_origin_feed_bytes`` is what the swarm engine took from the origin over
HTTP piece claims (its share of a herd's pull, ``krill.piecefeed``);
``origin_http_bytes`` is what the fallback pulled from the origin directly.

Histograms (seconds): ``request_seconds`` per route of both HTTP APIs
(``krill.httpmetrics``, with ``aborted_responses``: bodies cut short, by route
and reason); ``pull_first_byte_seconds`` and ``pull_seconds`` per
whole-blob GET, from the request's arrival to its first body byte and to its
last, by where the blob came from (``PullSource``): the time containerd waits,
source choice and the swarm deadline included. ``swarm_download_seconds`` and
``delta_rebuild_seconds`` time getting a blob onto the node whoever asked
(preheat too): a swarm download from its metainfo lookup to the verified file,
a delta from the origin's lookup to the rebuilt layer in the cache.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from krill.digests import Digest
from krill.httpmetrics import REQUEST_BUCKETS, request_histogram

if TYPE_CHECKING:  # krill.swarm loads libtorrent, which an agent without a swarm never needs
    from krill.agent.deltachoice import Choice, Decision
    from krill.agent.deltas import Failure, Miss
    from krill.swarm import SwarmStats


class PullSource(StrEnum):
    """Where a pulled blob came from (the ``source`` label of the pull histograms)."""

    CACHE = "cache"  # already on the node
    DELTA = "delta"  # rebuilt from a cached layer and a delta for this pull
    SWARM = "swarm"
    ORIGIN = "origin"  # the HTTP fallback
    UPSTREAM = "upstream"  # the HTTP fallback, the origin's pull-through mirror fetching it


# Layers take seconds to minutes; the upper buckets are for the slow ones.
PULL_BUCKETS = (*REQUEST_BUCKETS, 600.0)


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.request_seconds = request_histogram(
            "krill_agent_request_seconds", self.registry, aborted="krill_agent_aborted_responses"
        )
        self.pull_first_byte_seconds = Histogram(
            "krill_agent_pull_first_byte_seconds",
            "Seconds from a blob GET's arrival to its first body byte, by source",
            ["source"],
            registry=self.registry,
            buckets=PULL_BUCKETS,
        )
        self.pull_seconds = Histogram(
            "krill_agent_pull_seconds",
            "Seconds from a blob GET's arrival to its last body byte, by source",
            ["source"],
            registry=self.registry,
            buckets=PULL_BUCKETS,
        )
        for source in PullSource:  # every source shows in /metrics before its first pull
            self.pull_first_byte_seconds.labels(source)
            self.pull_seconds.labels(source)
        self.swarm_download_seconds = Histogram(
            "krill_agent_swarm_download_seconds",
            "Seconds from asking the swarm for a blob (metainfo lookup) to its verified file",
            registry=self.registry,
            buckets=PULL_BUCKETS,
        )
        self.delta_rebuild_seconds = Histogram(
            "krill_agent_delta_rebuild_seconds",
            "Seconds from the delta lookup to the rebuilt layer in the cache (fetching the "
            "delta included), for layers rebuilt from deltas",
            registry=self.registry,
            buckets=PULL_BUCKETS,
        )
        self.bytes_served = Counter(
            "krill_agent_served_bytes",
            "Blob bytes sent to clients, by where they came from",
            ["source"],
            registry=self.registry,
        )
        self.origin_http_bytes = Counter(
            "krill_agent_origin_http_bytes",
            "Bytes fetched from the origin by the HTTP fallback",
            registry=self.registry,
        )
        self.swarm_bytes = Gauge(
            "krill_agent_swarm_payload_bytes",
            "Payload bytes exchanged with swarm peers",
            ["direction"],
            registry=self.registry,
        )
        self.swarm_feed_bytes = Gauge(
            "krill_agent_swarm_origin_feed_bytes",
            "Piece bytes the swarm engine fetched from the origin over HTTP (piece claims)",
            registry=self.registry,
        )
        self.swarm_unreachable = Gauge(
            "krill_agent_swarm_unreachable_downloads",
            "Downloads that had peers holding pieces while no peer had ever connected in "
            "to this node (its peer port is likely unreachable: firewall, loopback bind)",
            registry=self.registry,
        )
        self.swarm_announces = Gauge(
            "krill_agent_swarm_announces",
            "Announces of this node's swarms, by the tracker's answer (failed: refused, "
            "unreachable or timed out; /ready's tracker check quotes a refusal)",
            ["result"],
            registry=self.registry,
        )
        self.fallbacks = Counter(
            "krill_agent_fallbacks",
            "Blob fetches where the swarm gave way to HTTP",
            ["reason"],
            registry=self.registry,
        )
        self.cache = Counter(
            "krill_agent_cache_lookups",
            "Blob lookups in the node cache",
            ["result"],
            registry=self.registry,
        )
        self.evictions = Counter(
            "krill_agent_cache_evictions",
            "Blobs removed from the node cache",
            ["reason"],
            registry=self.registry,
        )
        self.cache_bytes = Gauge(
            "krill_agent_cache_bytes", "Bytes held in the node cache", registry=self.registry
        )
        self.delta_hits = Counter(
            "krill_agent_delta_hits",
            "Layers rebuilt from a delta instead of downloaded",
            registry=self.registry,
        )
        self.delta_misses = Counter(
            "krill_agent_delta_misses",
            "Layer fetches with no delta to try, by why (not_a_layer, no_base, none, ...)",
            ["reason"],
            registry=self.registry,
        )
        self.delta_failures = Counter(
            "krill_agent_delta_failures",
            "Deltas tried that did not rebuild the layer (it was fetched whole), by why",
            ["reason"],
            registry=self.registry,
        )
        self.delta_bytes_saved = Counter(
            "krill_agent_delta_bytes_saved",
            "Layer bytes not downloaded thanks to deltas (layer size - delta size)",
            registry=self.registry,
        )
        # Delta or full (agent.deltachoice): each choice with its reason, the bytes a full
        # choice downloaded beyond the delta, and the seconds choices saved or lost.
        self.delta_choices = Counter(
            "krill_agent_delta_choice",
            "Layers with a delta on offer, by the path taken (delta, full) and why",
            ["choice", "reason"],
            registry=self.registry,
        )
        self.delta_bytes_forgone = Counter(
            "krill_agent_delta_bytes_forgone",
            "Bytes downloaded beyond the delta's because the full layer was faster "
            "(layer size - delta size per full choice)",
            registry=self.registry,
        )
        self.delta_seconds_saved = Counter(
            "krill_agent_delta_seconds_saved",
            "Seconds choices saved: the other path's estimate minus the path's measured time",
            ["choice"],
            registry=self.registry,
        )
        self.delta_seconds_lost = Counter(
            "krill_agent_delta_seconds_lost",
            "Seconds choices lost: the path's measured time minus the other path's estimate",
            ["choice"],
            registry=self.registry,
        )

    def event(self, kind: str, label: str) -> None:
        """Hook for BlobFetcher: ('cache', 'hit'|'miss'), ('fallback', reason)."""
        if kind == "cache":
            self.cache.labels(label).inc()
        elif kind == "fallback":
            self.fallbacks.labels(label).inc()

    def downloaded(self, source: str, seconds: float) -> None:
        """Hook for BlobFetcher: a blob is on the node (HTTP fallback downloads are not
        timed here: the pull histograms' ``origin`` source covers them)."""
        if source == PullSource.SWARM:
            self.swarm_download_seconds.observe(seconds)
        elif source == PullSource.DELTA:
            self.delta_rebuild_seconds.observe(seconds)

    def pull_first_byte(self, source: str, seconds: float) -> None:
        self.pull_first_byte_seconds.labels(source).observe(seconds)

    def pull_done(self, source: str, seconds: float) -> None:
        self.pull_seconds.labels(source).observe(seconds)

    def delta_hit(self, bytes_saved: int) -> None:
        self.delta_hits.inc()
        self.delta_bytes_saved.inc(bytes_saved)

    def delta_miss(self, reason: Miss) -> None:
        self.delta_misses.labels(reason).inc()

    def delta_failure(self, reason: Failure) -> None:
        self.delta_failures.labels(reason).inc()

    def delta_choice(self, decision: Decision) -> None:
        self.delta_choices.labels(decision.choice, decision.reason).inc()
        self.delta_bytes_forgone.inc(decision.bytes_forgone)

    def delta_seconds(self, choice: Choice, saved: float) -> None:
        if saved >= 0:
            self.delta_seconds_saved.labels(choice).inc(saved)
        else:
            self.delta_seconds_lost.labels(choice).inc(-saved)

    def evicted(self, digest: Digest, reason: str) -> None:
        self.evictions.labels(reason).inc()

    def served(self, source: str, count: int) -> None:
        self.bytes_served.labels(source).inc(count)

    def update_swarm(self, stats: SwarmStats) -> None:
        """Copy the engine's session totals."""
        self.swarm_bytes.labels("uploaded").set(stats.uploaded)
        self.swarm_bytes.labels("downloaded").set(stats.downloaded)
        self.swarm_feed_bytes.set(stats.origin_feed_bytes)
        self.swarm_unreachable.set(stats.unreachable_downloads)
        self.swarm_announces.labels("ok").set(stats.announces_ok)
        self.swarm_announces.labels("failed").set(stats.announces_failed)

    def render(self) -> bytes:
        return generate_latest(self.registry)
