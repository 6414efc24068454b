"""The pull-through origin computes ``gzip-go`` deltas for a mirrored tag that moved upstream.

A real docker-registry is the upstream; Go-gzipped v1 and then v2 of an image
are pushed to it under one tag (skopeo, blobs unchanged). ``krill origin
--upstream`` with ``--tag-ttl 0`` resolves the tag upstream on every request,
so it sees the move; it then fetches the changed layer itself (its prefetch)
and computes the delta, and an agent holding v1 that pulls v2 must rebuild the
changed layer from that delta, with upstream asked for each blob once.
"""

from __future__ import annotations

import contextlib
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.agent_cluster import Agent, agent_process, origin_process, push
from tests.components import docker_registry
from tests.goflate.oracle import GoOracle
from tests.metrics_text import read_metrics
from tests.test_agent_delta_e2e import Versions, metric, skopeo_copy_from, wait_for_delta
from tests.test_gogzip_e2e import delta_recipe, go_versions

pytestmark = pytest.mark.slow

pytest.importorskip("krill._goflate", reason="the C extension is not built")

MIRRORED = "library/goapp"
TAG = "latest"
# Agents ask the mirror for the tag on every pull (their default reuses it for 30 s), as the
# mirror asks upstream with --tag-ttl 0.
NODE = {"tag_ttl": 0.0}


@dataclass
class Mirror:
    upstream: str
    origin: str
    node: Agent  # the node that holds v1
    versions: Versions


@contextlib.contextmanager
def v1_on_a_node_then_the_tag_moves_upstream(
    tmp_path: Path, go_oracle: GoOracle
) -> Iterator[Mirror]:
    """Upstream has v1 as ``MIRRORED:TAG``; a node pulls it through the mirror; then the tag
    moves to v2 upstream (nothing has asked the mirror about it yet)."""
    versions = go_versions(tmp_path / "images", go_oracle, 6)
    with docker_registry(tmp_path / "upstream") as upstream:
        push(versions.v1, upstream, f"{MIRRORED}:{TAG}")
        with (
            origin_process(tmp_path / "origin", "--upstream", upstream, "--tag-ttl", "0") as origin,
            agent_process(tmp_path / "node", origin, settings=NODE) as node,
        ):
            pulled = skopeo_copy_from(node, f"{MIRRORED}:{TAG}", tmp_path / "v1")
            assert pulled == versions.v1.digests
            push(versions.v2, upstream, f"{MIRRORED}:{TAG}")
            yield Mirror(upstream, origin, node, versions)


def resolve_at_the_mirror(origin: str) -> str:
    """GET the tag from the mirror (as any client's pull starts): it is resolved upstream."""
    request = urllib.request.Request(
        f"{origin}/v2/{MIRRORED}/manifests/{TAG}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.headers["Docker-Content-Digest"]


def assert_v2_rebuilt_from(mirror: Mirror, delta: dict, tmp_path: Path) -> None:
    """The node pulls v2 through the mirror: the changed layer comes from ``delta``."""
    before = mirror.node.metrics()
    pulled = skopeo_copy_from(mirror.node, f"{MIRRORED}:{TAG}", tmp_path / "v2")
    after = mirror.node.metrics()
    assert pulled == mirror.versions.v2.digests  # skopeo verified every digest it wrote
    hits = "krill_agent_delta_hits_total"
    assert metric(after, hits) == metric(before, hits) + 1
    http = "krill_agent_origin_http_bytes_total"
    config = mirror.versions.v2.images[0].config
    assert after[http] - before[http] == delta["size"] + len(config.data)


def upstream_blob_fetches(origin: str) -> float:
    return read_metrics(origin).get('krill_origin_upstream_fetches_total{kind="blob"}', 0.0)


def test_a_fresh_node_pulling_v2_shares_the_mirrors_prefetch_of_the_moved_layer(
    tmp_path: Path, go_oracle: GoOracle
) -> None:
    """A node with nothing cached is the first to pull v2: its manifest GET shows the mirror
    the move, and its download of the changed layer and the mirror's prefetch of it are one
    upstream fetch; the node holding v1 then gets the gzip-go delta."""
    with v1_on_a_node_then_the_tag_moves_upstream(tmp_path, go_oracle) as mirror:
        base, target = mirror.versions.changed
        assert upstream_blob_fetches(mirror.origin) == 3  # v1's config and two layers
        with agent_process(tmp_path / "fresh-node", mirror.origin, settings=NODE) as fresh:
            assert skopeo_copy_from(fresh, f"{MIRRORED}:{TAG}", tmp_path / "fresh") == (
                mirror.versions.v2.digests
            )
        delta = wait_for_delta(mirror.origin, target, base)
        assert upstream_blob_fetches(mirror.origin) == 5  # + v2's config and changed layer
        assert delta["base"] == base
        recipe = delta_recipe(mirror.origin, MIRRORED, delta["delta"])
        assert recipe["kind"] == "gzip-go" and recipe["level"] == 6
        assert_v2_rebuilt_from(mirror, delta, tmp_path)


def test_a_tag_moved_upstream_gets_its_go_gzip_delta_before_any_node_fetches_the_layer(
    tmp_path: Path, go_oracle: GoOracle
) -> None:
    """The mirror sees the move (any client resolving the tag), fetches the changed layer
    itself and computes the delta, so the first node on v1 to pull v2 gets it."""
    with v1_on_a_node_then_the_tag_moves_upstream(tmp_path, go_oracle) as mirror:
        base, target = mirror.versions.changed
        assert resolve_at_the_mirror(mirror.origin) == mirror.versions.v2.top.digest
        delta = wait_for_delta(mirror.origin, target, base)
        assert_v2_rebuilt_from(mirror, delta, tmp_path)
        assert upstream_blob_fetches(mirror.origin) == 5  # v2's layer came once, for the mirror
