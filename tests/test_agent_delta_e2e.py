"""Layer deltas end to end: v1 pulled through the agent, v2 rebuilt from a delta.

Real processes: an origin (seeding via ``--tracker``), its tracker, an agent,
and containerd pulling through the agent. v2 changes a few files in the big
layer; the agent must fetch only the delta for it (the byte counters show what
crossed the wire), rebuild the exact layer, and serve it to containerd and
skopeo. A delta that cannot be used falls back to the full layer.
"""

from __future__ import annotations

import contextlib
import json
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from krill.endpoints import DELTAS
from tests.agent_cluster import (
    Agent,
    PushedImage,
    agent_process,
    origin_and_tracker,
    origin_process,
    push,
)
from tests.components import SKOPEO_FLAGS, skopeo
from tests.imagebuild import (
    Image,
    build_image,
    random_files,
    read_oci_layout_digests,
    realistic_files,
    write_oci_layout,
)
from tests.polling import until_sync
from tests.test_agent_containerd import containerd_through

pytestmark = pytest.mark.slow

REPOSITORY = "team/app"


@dataclass
class Versions:
    v1: PushedImage
    v2: PushedImage

    @property
    def changed(self) -> tuple[str, str]:
        """(v1 layer, v2 layer) digests of the big layer, the one v2 changed."""
        return self.v1.images[0].layers[1].digest, self.v2.images[0].layers[1].digest


def _big_layer_files() -> dict[str, bytes]:
    """~10 MB uncompressed: a realistic tree of text and structured binaries, plus blobs."""
    files = realistic_files(11, count=400)
    files.update(random_files(12, count=4, size=512 * 1024))
    return files


def _patched(files: dict[str, bytes]) -> dict[str, bytes]:
    """v2: a few files changed, one added; everything else as in v1."""
    out = dict(files)
    names = sorted(out)
    out[names[5]] = out[names[5]][:1000] + b"patched in v2" + out[names[5]][1000:]
    out[names[50]] = out[names[50]] + b"\nappended in v2\n"
    out["etc/krill-release"] = b"VERSION=2\n"
    return out


def _layout(root: Path, image: Image) -> PushedImage:
    return PushedImage(
        write_oci_layout(root, image.manifest, [image], "latest"), image.manifest, [image]
    )


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> Versions:
    root = tmp_path_factory.mktemp("delta-images")
    runtime = realistic_files(3, count=10)
    big = _big_layer_files()
    v1 = build_image([runtime, big])
    v2 = build_image([runtime, _patched(big)])
    return Versions(_layout(root / "v1", v1), _layout(root / "v2", v2))


def wait_for_delta(origin: str, target: str, base: str, timeout: float = 180) -> dict:
    """Poll the origin's lookup (the first call queues the pair) until the delta is there.

    Computing the delta of a large layer on a loaded machine can take minutes,
    hence the long budget.
    """
    url = f"{DELTAS.url(origin, target)}?have={base}"
    answers: list[dict] = []

    def ready() -> bool:
        answers.append(json.loads(urllib.request.urlopen(url, timeout=10).read()))
        return answers[-1]["status"] == "ok"

    until_sync(ready, f"the origin's delta for {target} from {base}", within=timeout, interval=0.1)
    return answers[-1]


def wire_bytes(metrics: dict[str, float]) -> float:
    """Blob bytes this agent downloaded: from swarm peers, the origin's piece feed and
    the origin's HTTP fallback."""
    swarm = metrics.get('krill_agent_swarm_payload_bytes{direction="downloaded"}', 0)
    feed = metrics.get("krill_agent_swarm_origin_feed_bytes", 0)
    return swarm + feed + metrics.get("krill_agent_origin_http_bytes_total", 0)


def metric(metrics: dict[str, float], name: str) -> float:
    return metrics.get(name, 0.0)


def skopeo_copy_from(agent: Agent, reference: str, out: Path) -> set[str]:
    skopeo(
        "copy",
        "--all",
        "--preserve-digests",
        *SKOPEO_FLAGS,
        f"docker://{agent.registry_hostport}/{reference}",
        f"oci:{out}:latest",
    )
    return read_oci_layout_digests(out)


def test_containerd_pulls_v2_and_only_the_delta_crosses_the_wire(
    tmp_path: Path, versions: Versions
) -> None:
    base, target = versions.changed
    layer = versions.v2.images[0].layers[1]
    config_v2 = versions.v2.images[0].config
    with origin_and_tracker(tmp_path) as (origin, tracker):
        host = origin.removeprefix("http://")
        push(versions.v1, origin, f"{REPOSITORY}:1")
        with (
            agent_process(
                tmp_path / "agent", origin, tracker, settings={"swarm_deadline": 20.0}
            ) as agent,
            containerd_through(tmp_path, agent, origin) as (ctrd, hosts),
        ):
            ctrd.pull(f"{host}/{REPOSITORY}:1", hosts)
            after_v1 = agent.metrics()
            assert metric(after_v1, 'krill_agent_delta_misses_total{reason="no_base"}') >= 2

            push(versions.v2, origin, f"{REPOSITORY}:2")
            delta = wait_for_delta(origin, target, base)
            assert delta["size"] < len(layer.data) / 2

            reference = f"{host}/{REPOSITORY}:2"
            ctrd.pull(reference, hosts)
            after_v2 = agent.metrics()
            assert ctrd.image_digest(reference) == versions.v2.top.digest
            assert ctrd.snapshots(), "containerd did not unpack v2"

            # What crossed the wire for v2: its config and the delta, not the 3.6 MB layer.
            crossed = wire_bytes(after_v2) - wire_bytes(after_v1)
            assert crossed == delta["size"] + len(config_v2.data), (crossed, delta, len(layer.data))
            hits = metric(after_v2, "krill_agent_delta_hits_total")
            assert hits == metric(after_v1, "krill_agent_delta_hits_total") + 1
            saved = metric(after_v2, "krill_agent_delta_bytes_saved_total")
            assert saved == len(layer.data) - delta["size"]
            print(
                f"delta e2e: layer {len(layer.data)} bytes, delta {delta['size']} bytes "
                f"({100 * delta['size'] / len(layer.data):.2f} %), wire for v2 {int(crossed)}"
            )

            pulled = skopeo_copy_from(agent, f"{REPOSITORY}:2", tmp_path / "pulled")
            assert pulled == versions.v2.digests


@contextlib.contextmanager
def v1_on_the_node_and_v2_pushed(
    tmp_path: Path, versions: Versions
) -> Iterator[tuple[Agent, dict]]:
    """An origin and an agent; v1 pulled through the agent, v2 pushed, the delta computed.

    Yields the agent and the origin's delta lookup answer for the changed layer.
    """
    base, target = versions.changed
    with origin_process(tmp_path / "origin") as origin:
        push(versions.v1, origin, f"{REPOSITORY}:1")
        with agent_process(tmp_path / "agent", origin) as agent:
            assert (
                skopeo_copy_from(agent, f"{REPOSITORY}:1", tmp_path / "v1") == versions.v1.digests
            )
            push(versions.v2, origin, f"{REPOSITORY}:2")
            yield agent, wait_for_delta(origin, target, base)


def flip_a_byte(path: Path, at: float) -> None:
    """Damage a file on disk the way rot would: one byte at fraction ``at`` of it."""
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0xFF
    path.write_bytes(bytes(data))


def _origin_blob_path(origin_root: Path, digest: str) -> Path:
    """Where the origin process keeps a blob (``BlobStore`` layout under its --data)."""
    hex_digest = digest.split(":", 1)[1]
    return origin_root / "data" / "blobs" / "sha256" / hex_digest[:2] / hex_digest


def test_a_corrupt_delta_falls_back_to_the_full_layer(tmp_path: Path, versions: Versions) -> None:
    """The origin's delta blob is damaged on disk: the agent fetches the layer whole."""
    layer = versions.v2.images[0].layers[1]
    with v1_on_the_node_and_v2_pushed(tmp_path, versions) as (agent, delta):
        flip_a_byte(_origin_blob_path(tmp_path / "origin", delta["delta"]), 0.5)
        before = agent.metrics()
        pulled = skopeo_copy_from(agent, f"{REPOSITORY}:2", tmp_path / "v2")
        after = agent.metrics()
        assert pulled == versions.v2.digests  # skopeo verified every digest it wrote
        failures = 'krill_agent_delta_failures_total{reason="delta_fetch"}'
        assert metric(after, failures) == metric(before, failures) + 1
        assert metric(after, "krill_agent_delta_hits_total") == 0
        http = (
            after["krill_agent_origin_http_bytes_total"]
            - before["krill_agent_origin_http_bytes_total"]
        )
        assert http >= len(layer.data)  # the whole layer came over HTTP after the failure


def _agent_blob_path(agent: Agent, digest: str) -> Path:
    """Where the agent keeps a cached blob (``BlobStore`` layout under <data>/blobs)."""
    hex_digest = digest.split(":", 1)[1]
    return agent.data / "blobs" / "blobs" / "sha256" / hex_digest[:2] / hex_digest


def test_a_damaged_cached_base_falls_back_and_is_dropped(
    tmp_path: Path, versions: Versions
) -> None:
    """The base rotted on disk: the rebuild fails, the layer comes whole, the base is dropped."""
    base, _target = versions.changed
    with v1_on_the_node_and_v2_pushed(tmp_path, versions) as (agent, _delta):
        rotten = _agent_blob_path(agent, base)
        flip_a_byte(rotten, 1 / 3)
        pulled = skopeo_copy_from(agent, f"{REPOSITORY}:2", tmp_path / "v2")
        after = agent.metrics()
        assert pulled == versions.v2.digests
        assert metric(after, 'krill_agent_delta_failures_total{reason="base_damaged"}') == 1
        assert metric(after, "krill_agent_delta_hits_total") == 0
        assert not rotten.exists()  # dropped, so it is never offered as a base again


def test_concurrent_requests_share_one_delta_rebuild(tmp_path: Path, versions: Versions) -> None:
    """Eight clients ask for the changed layer at once: one lookup, one delta fetch, one rebuild."""
    _base, target = versions.changed
    layer = versions.v2.images[0].layers[1]
    config_v2 = versions.v2.images[0].config
    with v1_on_the_node_and_v2_pushed(tmp_path, versions) as (agent, delta):
        manifest_url = f"{agent.registry}/v2/{REPOSITORY}/manifests/2"
        accept = {"Accept": versions.v2.top.media_type}
        urllib.request.urlopen(urllib.request.Request(manifest_url, headers=accept)).read()

        before = agent.metrics()
        url = f"{agent.registry}/v2/{REPOSITORY}/blobs/{target}"
        with ThreadPoolExecutor(8) as pool:
            bodies = list(pool.map(lambda _i: urllib.request.urlopen(url).read(), range(8)))
        after = agent.metrics()
        assert all(body == layer.data for body in bodies)
        assert metric(after, "krill_agent_delta_hits_total") == 1
        http = "krill_agent_origin_http_bytes_total"
        assert after[http] - before[http] == delta["size"] + len(config_v2.data)
