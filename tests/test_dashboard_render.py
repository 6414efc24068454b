"""The PromQL subset `scripts/render-dashboard` draws the dashboard with, on hand-made samples.

The expected numbers are worked out by hand from Prometheus's rules (counter
resets, extrapolation to the window's edges, linear interpolation inside a
bucket), so a chart in docs/img/dashboard.png shows what Prometheus and
Grafana would. No plotting library is needed: the evaluator imports none.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.scripts_import import script_module

ROOT = Path(__file__).resolve().parent.parent


promql = script_module("promql_subset")  # as the renderer imports it (with promql_samples)


def _store(series: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]]) -> object:
    store = promql.SampleStore()
    for labels, points in series.items():
        for t, value in points:
            store.append(promql.labels_of(dict(labels)), t, value)
    return store


def _at(expr: str, store: object, t: float) -> dict[tuple[tuple[str, str], ...], float]:
    result: dict[tuple[tuple[str, str], ...], float] = promql.parse(expr).at(store, t)
    return result


def _counter(name: str, points: list[tuple[float, float]], **labels: str) -> dict:
    return {tuple(sorted({"__name__": name, **labels}.items())): points}


# --- rate() -----------------------------------------------------------------------------------


def test_rate_counts_what_was_counted_across_a_reset() -> None:
    # 0 -> 20 in 2 s, the process restarts (counter back to 5), then 15: 20 + 15 = 35 counted.
    store = _store(_counter("c_total", [(1, 0), (2, 10), (3, 20), (4, 5), (5, 15)]))
    # Window (0, 5]: the first sample is 1 s after its start, but the counter was 0 there, so
    # nothing is extrapolated before it (nor after the last, at the end): 35 in the 5 s window.
    assert _at("rate(c_total[5s])", store, 5) == {(): pytest.approx(35 / 5)}
    # Window (1, 5] leaves t=1 out: 10 -> 20, reset, 15 is 25 in 3 s sampled; the first sample
    # is 1 s from the start (under 1.1 average gaps), so that second is extrapolated over too.
    assert _at("rate(c_total[4s])", store, 5) == {(): pytest.approx(25 * (3 + 1) / 3 / 4)}


def test_rate_needs_two_samples_in_the_window_and_drops_the_name() -> None:
    store = _store(_counter("c_total", [(0, 1), (10, 2), (11, 4)], job="agent"))
    assert _at("rate(c_total[5s])", store, 10) == {}  # one sample in (5, 10]
    assert _at("rate(c_total[2s])", store, 11) == {
        (("job", "agent"),): pytest.approx(2 * (1 + 1) / 1 / 2)  # 2 in 1 s, extended 1 s back
    }


def test_created_time_gives_a_new_counter_its_zero() -> None:
    store = promql.SampleStore()
    target = {"job": "agent"}
    page = (
        "# TYPE x_bytes counter\n"
        'x_bytes_total{{source="origin"}} {value}\n'
        'x_bytes_created{{source="origin"}} 100.5\n'
    )
    promql.ingest_exposition(store, 101.0, page.format(value=1000), target)
    promql.ingest_exposition(store, 102.0, page.format(value=1000), target)
    labels = promql.labels_of({"__name__": "x_bytes_total", "source": "origin", "job": "agent"})
    assert store.points(labels) == [(100.5, 0.0), (101.0, 1000.0), (102.0, 1000.0)]
    # So rate() sees the burst that arrived with the series, as with Prometheus's
    # created-timestamp-zero-ingestion.
    assert (
        _at("rate(x_bytes_total[2s])", store, 101.0)[(("job", "agent"), ("source", "origin"))] > 0
    )


# --- histogram_quantile() ---------------------------------------------------------------------


def _uniform_histogram(name: str, observations: int, **labels: str) -> dict:
    """Buckets le=1..10 and +Inf after ``observations`` spread evenly over (0, 10]."""
    series: dict = {}
    for bound in [*range(1, 11), math.inf]:
        le = "+Inf" if bound == math.inf else f"{float(bound)}"
        cumulative = observations * min(bound, 10) / 10
        series.update(_counter(name, [(0, 0), (10, cumulative)], le=le, **labels))
    return series


def test_histogram_quantile_interpolates_a_known_distribution() -> None:
    store = _store(_uniform_histogram("d_seconds_bucket", 1000))
    expr = "histogram_quantile({q}, sum by (le) (rate(d_seconds_bucket[20s])))"
    assert _at(expr.format(q=0.95), store, 10) == {(): pytest.approx(9.5)}
    assert _at(expr.format(q=0.5), store, 10) == {(): pytest.approx(5.0)}
    assert _at(expr.format(q=0.01), store, 10) == {(): pytest.approx(0.1)}  # first bucket from 0


def test_histogram_quantile_in_the_inf_bucket_and_without_observations() -> None:
    assert promql.bucket_quantile(0.99, [(1.0, 10), (2.0, 50), (math.inf, 100)]) == 2.0
    assert math.isnan(promql.bucket_quantile(0.5, [(1.0, 0), (math.inf, 0)]))  # a gap
    assert math.isnan(promql.bucket_quantile(0.5, [(1.0, 3), (2.0, 4)]))  # no +Inf bucket
    # Rates of buckets scraped apart can dip; Prometheus evens them out before ranking.
    assert promql.bucket_quantile(0.5, [(1.0, 6), (2.0, 5), (math.inf, 10)]) == pytest.approx(5 / 6)


def test_histogram_quantile_keeps_each_group_apart() -> None:
    store = _store(
        {
            **_uniform_histogram("d_seconds_bucket", 1000, source="swarm", pod="a"),
            **_uniform_histogram("d_seconds_bucket", 10, source="cache", pod="a"),
        }
    )
    expr = "histogram_quantile(0.5, sum by (le, source) (rate(d_seconds_bucket[20s])))"
    assert _at(expr, store, 10) == {
        (("source", "cache"),): pytest.approx(5.0),
        (("source", "swarm"),): pytest.approx(5.0),
    }


# --- sum by, matchers, division, Grafana's variables ------------------------------------------


def test_sum_by_adds_up_instances_and_keeps_only_the_by_labels() -> None:
    store = _store(
        {
            **_counter("g", [(0, 1)], source="swarm", instance="a"),
            **_counter("g", [(0, 2)], source="swarm", instance="b"),
            **_counter("g", [(0, 5)], source="cache", instance="a"),
        }
    )
    assert _at("sum by (source) (g)", store, 1) == {
        (("source", "cache"),): 5,
        (("source", "swarm"),): 3,
    }
    assert _at("sum(g) by (source)", store, 1) == _at("sum by (source) (g)", store, 1)
    assert _at("sum(g)", store, 1) == {(): 8}
    assert _at('sum(g{instance=~"a|c", source!="cache"})', store, 1) == {(): 1}
    assert _at("g", store, 400) == {}  # older than the 5 min lookback


def test_division_matches_label_sets_and_leaves_a_gap_for_zero_over_zero() -> None:
    store = _store(
        {
            **_counter("lookups_total", [(0, 0), (1, 3), (2, 3)], result="hit"),
            **_counter("lookups_total", [(0, 0), (1, 1), (2, 1)], result="miss"),
        }
    )
    expr = 'sum(rate(lookups_total{result="hit"}[2s])) / sum(rate(lookups_total[2s]))'
    assert _at(expr, store, 1) == {(): pytest.approx(0.75)}
    (value,) = _at(expr, store, 2).values()  # no lookups in (0, 2]: 0 / 0
    assert math.isnan(value)
    ranged = promql.query_range(promql.parse(expr), store, 1, 3, 1)
    assert ranged == {(): [(1, pytest.approx(0.75))]}  # a gap at 2 (NaN) and 3 (no rate), not 0


def test_grafana_variables_and_what_is_not_supported() -> None:
    expr = 'rate(x{namespace=~"$namespace"}[$__rate_interval])'
    text = promql.substitute(expr, {"namespace": ".*", "__rate_interval": "4s"})
    assert text == 'rate(x{namespace=~".*"}[4s])'
    with pytest.raises(promql.Unsupported, match=r"\$cluster"):
        promql.substitute("x{c=~'$cluster'}", {})
    for expr, reason in [
        ("avg(x)", "aggregation avg"),
        ("sum without (pod) (x)", "without"),
        ("increase(x[5m])", "function increase"),
        ("x offset 5m", "offset"),
        ("x > 3", "operator"),
    ]:
        with pytest.raises(promql.Unsupported, match=reason):
            promql.parse(expr)


def test_every_dashboard_expression_is_in_the_subset() -> None:
    """So the committed picture has no "not rendered" panel; if this fails after a dashboard
    change, the picture shows which panel needs more of PromQL here."""
    dashboard = json.loads((ROOT / "helm/krill/dashboards/krill.json").read_text())
    variables = {"namespace": ".*", "__rate_interval": "4s"}
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            promql.parse(promql.substitute(target["expr"], variables))
