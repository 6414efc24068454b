"""Scraped samples for ``promql_subset``: what Prometheus's TSDB would hold of one run.

``ingest_exposition`` stores one scrape of a ``/metrics`` page with the target's labels
added; a counter's or histogram's series first seen after its ``_created`` time gets a 0
at that time (Prometheus's ``created-timestamp-zero-ingestion``), so ``rate()`` sees the
first burst of a new series. ``SampleStore`` answers the series a selector matches.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client.parser import text_string_to_metric_families

if TYPE_CHECKING:
    from promql_subset import Matcher

__all__ = ["Labels", "Points", "SampleStore", "ingest_exposition", "labels_of"]

Labels = tuple[tuple[str, str], ...]  # sorted (name, value) pairs; __name__ included for raw series
Points = list[tuple[float, float]]


def labels_of(mapping: Mapping[str, str]) -> Labels:
    """The canonical (sorted) form of a label set, usable as a dict key."""
    return tuple(sorted(mapping.items()))



@dataclass
class SampleStore:
    """Every scraped sample, by metric name and series; what Prometheus's TSDB would hold."""

    by_name: dict[str, dict[Labels, Points]] = field(default_factory=lambda: defaultdict(dict))

    def append(self, labels: Labels, t: float, value: float) -> None:
        """Add a sample; out-of-order ones are dropped, as Prometheus drops them."""
        points = self.by_name[dict(labels)["__name__"]].setdefault(labels, [])
        if not points or t > points[-1][0]:
            points.append((t, value))

    def points(self, labels: Labels) -> Points:
        """The samples of one series (empty when it was never scraped)."""
        return self.by_name.get(dict(labels)["__name__"], {}).get(labels, [])

    def matching(self, name: str, matchers: Iterable[Matcher]) -> Iterable[tuple[Labels, Points]]:
        """The series named ``name`` whose labels satisfy every matcher."""
        for labels, points in self.by_name.get(name, {}).items():
            found = dict(labels)
            if all(m.accepts(found) for m in matchers):
                yield labels, points

    def time_range(self) -> tuple[float, float]:
        """First and last sample time over all series (the run the store holds)."""
        every = [points for series in self.by_name.values() for points in series.values()]
        if not any(every):
            raise ValueError("no samples were stored")
        return min(p[0][0] for p in every if p), max(p[-1][0] for p in every if p)


_CREATED_SUFFIXES = ("_total", "_bucket", "_count", "_sum")


def ingest_exposition(store: SampleStore, t: float, text: str, target: Mapping[str, str]) -> None:
    """Store one scrape of a ``/metrics`` page taken at ``t``, with the target's labels added.

    ``target`` is what Prometheus's service discovery attaches (``job``,
    ``instance``, ``namespace``, ``pod``). A counter's or histogram's series
    first seen after its ``_created`` time gets a 0 at that time (see the
    module docstring).
    """
    created: dict[tuple[str, Labels], float] = {}
    samples: list[tuple[str, dict[str, str], float]] = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_created"):
                base = sample.name.removesuffix("_created")
                created[(base, labels_of(sample.labels))] = sample.value
            else:
                samples.append((sample.name, dict(sample.labels), sample.value))
    for name, sample_labels, value in samples:
        labels = labels_of({**sample_labels, **target, "__name__": name})
        since = _created_time(created, name, sample_labels)
        points = store.points(labels)
        if since is not None and since < t and (not points or since > points[-1][0]):
            store.append(labels, since, 0.0)
        store.append(labels, t, value)


def _created_time(
    created: Mapping[tuple[str, Labels], float], name: str, labels: Mapping[str, str]
) -> float | None:
    for suffix in _CREATED_SUFFIXES:
        if name.endswith(suffix):
            key_labels = labels_of({k: v for k, v in labels.items() if k != "le"})
            return created.get((name.removesuffix(suffix), key_labels))
    return None
