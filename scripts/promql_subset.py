"""The part of PromQL the chart's Grafana dashboard uses, evaluated over scraped samples.

There is no Prometheus or Grafana on the machines Krill is built on, yet the
docs show the dashboard (``helm/krill/dashboards/krill.json``) filled with the
metrics of a real run: ``scripts/render_dashboard.py`` scrapes the services'
``/metrics`` into a ``SampleStore`` and asks this module for each panel's
expressions over time. The dashboard needs only selectors with label matchers,
``rate()`` over a range, ``sum`` (optionally ``by``), ``histogram_quantile()``
and one division, so that is what is here, with Prometheus's own semantics
where they decide what a chart shows:

- ``rate()`` corrects counter resets and extrapolates to the window's edges
  exactly as Prometheus's ``extrapolatedRate`` does (no result from fewer than
  two samples in the window);
- ``histogram_quantile()`` interpolates linearly inside the bucket the rank
  falls in, answers the highest finite bound for the ``+Inf`` bucket and
  nothing (NaN: a gap) when the window saw no observations;
- an instant selector takes a series' latest sample in the 5 minutes before
  the evaluation time (Prometheus's default lookback);
- a counter that appears mid-run starts at its ``_created`` time with a 0
  (Prometheus's ``created-timestamp-zero-ingestion``): without it the first
  pull of a new ``source`` label, often the whole burst, is invisible to
  ``rate()`` because the series' first sample already holds it.

Anything else (other functions, ``without``, ``offset``, subqueries, other
aggregations) raises ``Unsupported`` with the reason, which the renderer
draws instead of a chart: a panel is either computed the way Prometheus would
or visibly not rendered. Only the standard library and prometheus_client's
text parser are used, so tests need no plotting library.
"""

from __future__ import annotations

import bisect
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from promql_samples import Labels, Points, SampleStore, ingest_exposition, labels_of

__all__ = [
    "BinaryOp",
    "HistogramQuantile",
    "Labels",
    "Node",
    "Rate",
    "SampleStore",
    "Selector",
    "Sum",
    "Unsupported",
    "ingest_exposition",
    "labels_of",
    "parse",
    "query_range",
    "substitute",
]

LOOKBACK_SECONDS = 300.0  # Prometheus's --query.lookback-delta default
Vector = dict[Labels, float]


class Unsupported(Exception):
    """The expression needs PromQL this module does not implement; the message says what."""


def _without(labels: Labels, names: Iterable[str]) -> Labels:
    drop = set(names)
    return tuple(pair for pair in labels if pair[0] not in drop)


# --- the expression tree ---------------------------------------------------------------------


@dataclass(frozen=True)
class Matcher:
    """One ``label op "value"`` inside a selector's braces."""

    label: str
    op: str  # = != =~ !~
    value: str

    def accepts(self, labels: Mapping[str, str]) -> bool:
        """Prometheus's rule: a missing label matches as the empty string; regexes are anchored."""
        found = labels.get(self.label, "")
        if self.op in ("=", "!="):
            return (found == self.value) == (self.op == "=")
        return (re.fullmatch(self.value, found) is not None) == (self.op == "=~")


class Node:
    """An expression; ``at`` evaluates it as an instant query at time ``t``."""

    def at(self, store: SampleStore, t: float) -> Vector | float:
        raise NotImplementedError


@dataclass(frozen=True)
class Number(Node):
    value: float

    def at(self, store: SampleStore, t: float) -> Vector | float:
        return self.value


@dataclass(frozen=True)
class Selector(Node):
    """``name{matchers}``: each matching series' latest sample within the lookback."""

    name: str
    matchers: tuple[Matcher, ...]

    def at(self, store: SampleStore, t: float) -> Vector | float:
        out: Vector = {}
        for labels, points in store.matching(self.name, self.matchers):
            before = _window(points, t - LOOKBACK_SECONDS, t)
            if before:
                out[labels] = before[-1][1]
        return out


def _window(points: Points, start: float, end: float) -> Points:
    """The samples in (start, end]: left-open, as Prometheus 3's range selectors."""
    first = bisect.bisect_right(points, (start, math.inf))
    return points[first : bisect.bisect_right(points, (end, math.inf))]


@dataclass(frozen=True)
class Rate(Node):
    """``rate(selector[range])``: per-second increase, as Prometheus's ``extrapolatedRate``."""

    selector: Selector
    seconds: float

    def at(self, store: SampleStore, t: float) -> Vector | float:
        out: Vector = {}
        start = t - self.seconds
        for labels, points in store.matching(self.selector.name, self.selector.matchers):
            window = _window(points, start, t)
            if len(window) >= 2:
                out[_without(labels, ["__name__"])] = _extrapolated_rate(window, start, t)
        return out


def _extrapolated_rate(window: Points, start: float, end: float) -> float:
    """Prometheus's ``extrapolatedRate`` for a counter (promql/functions.go)."""
    (first_t, first_v), (last_t, last_v) = window[0], window[-1]
    increase = last_v - first_v
    previous = first_v
    for _, value in window[1:]:
        if value < previous:  # a reset: the counter restarted from 0
            increase += previous
        previous = value
    sampled = last_t - first_t
    average_gap = sampled / (len(window) - 1)
    threshold = average_gap * 1.1
    to_start, to_end = first_t - start, end - last_t
    if to_start >= threshold:
        to_start = average_gap / 2
    if increase > 0 and first_v >= 0:
        to_start = min(to_start, sampled * (first_v / increase))  # a counter never went below 0
    if to_end >= threshold:
        to_end = average_gap / 2
    return increase * (sampled + to_start + to_end) / sampled / (end - start)


@dataclass(frozen=True)
class Sum(Node):
    """``sum [by (labels)] (expr)``; without ``by``, one series with no labels."""

    expr: Node
    by: tuple[str, ...]

    def at(self, store: SampleStore, t: float) -> Vector | float:
        inner = _vector(self.expr.at(store, t), "sum")
        out: Vector = defaultdict(float)
        for labels, value in inner.items():
            out[tuple(pair for pair in labels if pair[0] in self.by)] += value
        return dict(out)


@dataclass(frozen=True)
class HistogramQuantile(Node):
    """``histogram_quantile(q, buckets)`` over classic ``_bucket`` series."""

    q: float
    buckets: Node

    def at(self, store: SampleStore, t: float) -> Vector | float:
        groups: dict[Labels, list[tuple[float, float]]] = defaultdict(list)
        for labels, value in _vector(self.buckets.at(store, t), "histogram_quantile").items():
            bound = dict(labels).get("le")
            if bound is not None:
                groups[_without(labels, ["le", "__name__"])].append((float(bound), value))
        out: Vector = {}
        for labels, buckets in groups.items():
            value = bucket_quantile(self.q, buckets)
            if not math.isnan(value):
                out[labels] = value
        return out


def bucket_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus's ``bucketQuantile`` (promql/quantile.go) over (upper bound, count) pairs."""
    merged: dict[float, float] = defaultdict(float)
    for bound, count in buckets:
        merged[bound] += count
    ordered = sorted(merged.items())
    if len(ordered) < 2 or ordered[-1][0] != math.inf:
        return math.nan
    counts = _monotonic([count for _, count in ordered])
    observations = counts[-1]
    if observations == 0 or math.isnan(observations):
        return math.nan
    rank = q * observations
    b = next(i for i, count in enumerate(counts) if count >= rank)
    if b == len(ordered) - 1:
        return ordered[-2][0]  # in the +Inf bucket: the highest finite bound is all we know
    if b == 0 and ordered[0][0] <= 0:
        return ordered[0][0]
    start = ordered[b - 1][0] if b > 0 else 0.0
    in_bucket = counts[b] - (counts[b - 1] if b > 0 else 0.0)
    rank -= counts[b - 1] if b > 0 else 0.0
    return start + (ordered[b][0] - start) * (rank / in_bucket)


def _monotonic(counts: list[float]) -> list[float]:
    """Bucket counts never decrease with the bound; rates of scrapes taken apart can."""
    out, highest = [], -math.inf
    for count in counts:
        highest = max(highest, count)
        out.append(highest)
    return out


@dataclass(frozen=True)
class BinaryOp(Node):
    """``a / b`` (and ``* + -``): one-to-one on identical label sets, or with a scalar."""

    op: str
    left: Node
    right: Node

    def at(self, store: SampleStore, t: float) -> Vector | float:
        left, right = self.left.at(store, t), self.right.at(store, t)
        if isinstance(left, float) and isinstance(right, float):
            return _apply(self.op, left, right)
        if isinstance(left, float):
            return {k: _apply(self.op, left, v) for k, v in _vector(right, self.op).items()}
        if isinstance(right, float):
            return {k: _apply(self.op, v, right) for k, v in left.items()}
        rhs = {_without(k, ["__name__"]): v for k, v in right.items()}
        out: Vector = {}
        for labels, value in left.items():
            key = _without(labels, ["__name__"])
            if key in rhs:
                out[key] = _apply(self.op, value, rhs[key])
        return out


def _apply(op: str, a: float, b: float) -> float:
    if op == "/":
        if b == 0:  # IEEE 754, as Prometheus: 0/0 is NaN, x/0 is ±Inf
            return math.nan if a == 0 or math.isnan(a) else math.copysign(math.inf, a)
        return a / b
    return {"*": a * b, "+": a + b, "-": a - b}[op]


def _vector(value: Vector | float, where: str) -> Vector:
    if isinstance(value, float):
        raise Unsupported(f"{where} of a scalar")
    return value


# --- parsing ---------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<string>"(?:[^"\\]|\\.)*")
    | (?P<duration>\[[0-9]+(?:ms|s|m|h|d|w|y)\])
    | (?P<number>[0-9]+(?:\.[0-9]*)?(?:e[+-]?[0-9]+)?)
    | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
    | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^=(){}\[\],<>@])
    )""",
    re.VERBOSE,
)
_DURATION_SECONDS = {
    "ms": 0.001,
    "s": 1,
    "m": 60,
    "h": 3600,
    "d": 86400,
    "w": 604800,
    "y": 31536000,
}
_AGGREGATIONS = {"sum", "avg", "min", "max", "count", "stddev", "stdvar", "topk", "bottomk",
                 "quantile", "count_values", "group"}  # fmt: skip


def substitute(expr: str, variables: Mapping[str, str]) -> str:
    """Replace Grafana's ``$name``, ``${name}`` and ``[[name]]`` with the values given."""

    def value(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g is not None)
        if name not in variables:
            raise Unsupported(f"dashboard variable ${name} has no value here")
        return variables[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)|\[\[(\w+)\]\]", value, expr)


def _tokens(expr: str) -> list[tuple[str, str]]:
    out, position = [], 0
    expr = expr.rstrip()
    while position < len(expr):
        match = _TOKEN.match(expr, position)
        if match is None or match.lastgroup is None:
            raise Unsupported(f"cannot read {expr[position : position + 20]!r}")
        out.append((match.lastgroup, match.group(match.lastgroup)))
        position = match.end()
    return out


class _Parser:
    """Recursive descent over the subset; anything outside it raises ``Unsupported``."""

    def __init__(self, expr: str) -> None:
        self.tokens = _tokens(expr)
        self.i = 0

    def peek(self) -> str:
        return self.tokens[self.i][1] if self.i < len(self.tokens) else ""

    def take(self, expected: str | None = None) -> tuple[str, str]:
        if self.i >= len(self.tokens):
            raise Unsupported(f"expression ends where {expected or 'more'} was expected")
        token = self.tokens[self.i]
        if expected is not None and token[1] != expected:
            raise Unsupported(f"expected {expected!r}, found {token[1]!r}")
        self.i += 1
        return token

    def parse(self) -> Node:
        node = self.sum_level()
        if self.i != len(self.tokens):
            raise Unsupported(f"{self.peek()!r} is not in the supported subset")
        return node

    def sum_level(self) -> Node:
        node = self.product_level()
        while self.peek() in ("+", "-"):
            node = BinaryOp(self.take()[1], node, self.product_level())
        return node

    def product_level(self) -> Node:
        node = self.operand()
        while self.peek() in ("*", "/"):
            node = BinaryOp(self.take()[1], node, self.operand())
        if self.peek() in ("%", "^", "==", "!=", ">", "<", ">=", "<=", "and", "or", "unless"):
            raise Unsupported(f"operator {self.peek()!r}")
        return node

    def operand(self) -> Node:
        kind, text = self.take()
        if text == "(":
            node = self.sum_level()
            self.take(")")
            return node
        if kind == "number":
            return Number(float(text))
        if kind != "ident":
            raise Unsupported(f"{text!r} where an expression was expected")
        if text == "sum":
            return self.sum()
        if text in _AGGREGATIONS:
            raise Unsupported(f"aggregation {text}()")
        if self.peek() == "(":
            return self.call(text)
        return self.selector(text)

    def sum(self) -> Node:
        by = self.grouping()
        self.take("(")
        inner = self.sum_level()
        self.take(")")
        if not by:
            by = self.grouping()
        return Sum(inner, by)

    def grouping(self) -> tuple[str, ...]:
        if self.peek() == "without":
            raise Unsupported("sum without (...)")
        if self.peek() != "by":
            return ()
        self.take("by")
        self.take("(")
        names = []
        while self.peek() != ")":
            names.append(self.take()[1])
            if self.peek() == ",":
                self.take(",")
        self.take(")")
        return tuple(names)

    def call(self, function: str) -> Node:
        self.take("(")
        if function == "rate":
            selector = self.selector(self.take()[1])
            kind, text = self.take()
            if kind != "duration":
                raise Unsupported("rate() of something other than a range selector")
            self.take(")")
            return Rate(selector, _duration_seconds(text))
        if function == "histogram_quantile":
            q = self.sum_level()
            if not isinstance(q, Number):
                raise Unsupported("histogram_quantile() with a non-constant quantile")
            self.take(",")
            buckets = self.sum_level()
            self.take(")")
            return HistogramQuantile(q.value, buckets)
        raise Unsupported(f"function {function}()")

    def selector(self, name: str) -> Selector:
        matchers: list[Matcher] = []
        if self.peek() == "{":
            self.take("{")
            while self.peek() != "}":
                label, op, (kind, value) = self.take()[1], self.take()[1], self.take()
                if op not in ("=", "!=", "=~", "!~") or kind != "string":
                    raise Unsupported(f"label matcher {label}{op}{value}")
                matchers.append(Matcher(label, op, _unquote(value)))
                if self.peek() == ",":
                    self.take(",")
            self.take("}")
        if self.peek() in ("offset", "@"):
            raise Unsupported(f"{self.peek()} modifier")
        return Selector(name, tuple(matchers))


def _duration_seconds(token: str) -> float:
    match = re.fullmatch(r"\[([0-9]+)([a-z]+)\]", token)
    if match is None:
        raise Unsupported(f"range {token}")
    return int(match.group(1)) * _DURATION_SECONDS[match.group(2)]


def _unquote(token: str) -> str:
    return re.sub(r"\\(.)", r"\1", token[1:-1])


def parse(expr: str) -> Node:
    """The expression's tree, or ``Unsupported`` saying which part is outside the subset."""
    return _Parser(expr).parse()


def query_range(
    node: Node, store: SampleStore, start: float, end: float, step: float
) -> dict[Labels, Points]:
    """A range query: the expression at ``start``, ``start + step``, ... ``end``; NaN is a gap."""
    out: dict[Labels, Points] = defaultdict(list)
    steps = math.floor((end - start) / step + 1e-9) + 1
    for i in range(steps):
        t = start + i * step
        value = node.at(store, t)
        vector = {(): value} if isinstance(value, float) else value
        for labels, v in vector.items():
            if not math.isnan(v):
                out[labels].append((t, v))
    return dict(out)
