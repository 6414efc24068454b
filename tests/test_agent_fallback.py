"""When the swarm or the origin is down, pulls still succeed (or move on quickly)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests import containerd
from tests.agent_cluster import agent_process, build_layout, origin_process, push
from tests.components import SKOPEO_FLAGS, docker_registry, free_port, skopeo
from tests.imagebuild import read_oci_layout_digests
from tests.test_agent_containerd import write_hosts


def test_tracker_down_pull_succeeds_via_origin_fallback(tmp_path: Path) -> None:
    dead_tracker = f"http://127.0.0.1:{free_port()}"
    with origin_process(tmp_path / "origin") as origin:
        image = build_layout(tmp_path / "layout", seed=21)
        push(image, origin, "team/fallback:1")
        with agent_process(
            tmp_path / "agent", origin, dead_tracker, settings={"swarm_deadline": 1.0}
        ) as agent:
            out = tmp_path / "out"
            skopeo(
                "copy", *SKOPEO_FLAGS,
                f"docker://{agent.registry_hostport}/team/fallback:1", f"oci:{out}:latest",
            )
            metrics = agent.metrics()
    assert read_oci_layout_digests(out) == read_oci_layout_digests(image.layout)
    blobs = sum(len(b.data) for b in image.images[0].blobs())
    assert metrics["krill_agent_origin_http_bytes_total"] == blobs
    assert sum(v for k, v in metrics.items() if k.startswith("krill_agent_fallbacks_total")) >= 2


def test_origin_down_answers_503_so_clients_move_on(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with agent_process(tmp_path / "agent", dead, dead, settings={"swarm_deadline": 1.0}) as agent:
        for url in (
            f"{agent.registry}/v2/team/app/manifests/1",
            f"{agent.registry}/v2/team/app/blobs/sha256:{'a' * 64}",
            f"{agent.api}/blobs/sha256:{'a' * 64}?repo=team/app",
        ):
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(url, timeout=30)
            assert info.value.code == 503
            assert json.loads(info.value.read())["errors"][0]["code"] == "UNAVAILABLE"


@pytest.mark.skipif(not containerd.available(), reason="containerd and ctr are required")
def test_origin_and_tracker_down_containerd_falls_back_to_upstream(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with (
        docker_registry(tmp_path / "upstream") as upstream,
        agent_process(tmp_path / "agent", dead, dead, settings={"swarm_deadline": 1.0}) as agent,
        containerd.running_containerd(tmp_path / "ctrd") as ctrd,
    ):
        image = build_layout(tmp_path / "layout", seed=22)
        push(image, upstream, "team/up:1")
        host = upstream.removeprefix("http://")
        hosts = tmp_path / "hosts"
        write_hosts(hosts, agent.registry_hostport, f"{host}={upstream}")
        reference = f"{host}/team/up:1"
        ctrd.pull(reference, hosts)
        assert ctrd.image_digest(reference) == image.top.digest
        assert ctrd.snapshots()
    # containerd asked the agent first and got 503s, then went to the server.
    log = (tmp_path / "agent" / "agent.log").read_text()
    assert f"/v2/team/up/manifests/1?ns={host.replace(':', '%3A')}" in log
    assert '" 503 ' in log
