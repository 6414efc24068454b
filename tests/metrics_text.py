"""Reading a service's Prometheus ``/metrics`` in tests, with prometheus_client's own parser.

Tests look samples up by the key the exposition format writes them under,
``name{label="value",...}`` (labels in the order the service exported them),
so an assertion reads like the line a person would grep for.
"""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["parse_metrics", "read_metrics", "sample_key"]


def sample_key(name: str, labels: dict[str, str]) -> str:
    """``name{a="x",b="y"}``, or just ``name`` without labels."""
    if not labels:
        return name
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value}, every sample of every family."""
    return {
        sample_key(sample.name, sample.labels): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def read_metrics(base_url: str) -> dict[str, float]:
    """GET ``{base_url}/metrics`` (blocking) and parse it."""
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=10) as response:
        return parse_metrics(response.read().decode())
