"""Prometheus metrics of one origin app (its own registry, so apps in one process don't clash)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from krill.httpmetrics import REQUEST_BUCKETS, request_histogram

__all__ = ["DeltaMetrics", "OriginMetrics", "PieceTurnMetrics"]


class OriginMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # Beside it, krill_origin_aborted_responses{route,reason}: bodies cut short.
        self.request_seconds = request_histogram(
            "krill_origin_request_seconds", self.registry, aborted="krill_origin_aborted_responses"
        )
        self.requests = Counter(
            "krill_origin_requests",
            "HTTP requests answered, by method, route kind and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.bytes_served = Counter(
            "krill_origin_bytes_served",
            "Blob bytes sent to clients (response bodies of blob GETs).",
            registry=self.registry,
        )
        self.upstream_fetches = Counter(
            "krill_origin_upstream_fetches",
            "Requests made to the upstream registry, by kind (manifest, blob, blob_head).",
            ["kind"],
            registry=self.registry,
        )

        self.gc_freed_bytes = Counter(
            "krill_origin_gc_freed_bytes",
            "Bytes removed by garbage collection, by kind (blobs, deltas, metainfo, delta_index).",
            ["kind"],
            registry=self.registry,
        )
        self.gc_freed_objects = Counter(
            "krill_origin_gc_freed_objects",
            "Objects removed by garbage collection, by kind (as krill_origin_gc_freed_bytes).",
            ["kind"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _TurnCounts(Protocol):
    """What ``PieceTurnMetrics`` reads (``origin.pieceburst.PieceTurnstile``)."""

    pieces_sent: int
    holds_expired: int


class PieceTurnMetrics(Collector):
    """The piece turnstile's counts, read at each scrape (they change in one place)."""

    def __init__(self, turnstile: _TurnCounts) -> None:
        self._turnstile = turnstile

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            "krill_origin_piece_turns",
            "Claimed pieces sent in turns (origin.pieceburst).",
            value=self._turnstile.pieces_sent,
        )
        yield CounterMetricFamily(
            "krill_origin_piece_turns_expired",
            "Turns that ran out before their piece left: a node reading slowly (its "
            "piece went on beside the next turn).",
            value=self._turnstile.holds_expired,
        )


class DeltaMetrics:
    """The delta pipeline's counters, in the origin app's registry (``OriginMetrics.registry``)."""

    def __init__(self, registry: CollectorRegistry) -> None:
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
        self.compute_seconds = Histogram(
            "krill_origin_delta_compute_seconds",
            "Seconds one delta took in the worker pool (decompress both layers, diff, "
            "encode, verify), by result",
            ["result"],
            registry=registry,
            buckets=(*REQUEST_BUCKETS, 600.0, 1800.0),  # a multi-GB layer takes minutes
        )
        self.queued = Gauge(
            "krill_origin_delta_queue", "Delta pairs waiting to be computed.", registry=registry
        )
