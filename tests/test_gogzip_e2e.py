"""Go-made layers end to end: the origin computes a ``gzip-go`` delta, the agent rebuilds with it.

Docker, BuildKit, crane and ko gzip layers with Go's ``compress/gzip``. Here
both versions of an image have their layers gzipped by Go itself (the oracle
of tests/goflate, at the level each builder uses) and pushed unchanged with
skopeo; v2 changes a few files of the big layer and the tag moves. The origin
must find the layer reproducible (recipe ``gzip-go``) and keep a delta, and
an agent holding v1 must fetch only that delta for v2, rebuild Go's exact
bytes, and serve them to containerd (which unpacks them) and to skopeo.
"""

from __future__ import annotations

import functools
import io
import urllib.request
from pathlib import Path

import pytest

from krill.delta.format import read_header
from tests.agent_cluster import agent_process, origin_and_tracker, push
from tests.goflate.oracle import GoOracle
from tests.imagebuild import Image, build_image, realistic_files
from tests.test_agent_containerd import containerd_through
from tests.test_agent_delta_e2e import (
    Versions,
    _big_layer_files,
    _layout,
    _patched,
    metric,
    skopeo_copy_from,
    wait_for_delta,
    wire_bytes,
)

pytestmark = pytest.mark.slow

pytest.importorskip("krill._goflate", reason="the C extension is not built")

REPOSITORY = "team/goapp"


@functools.cache
def _layer_files() -> tuple[dict[str, bytes], dict[str, bytes], dict[str, bytes]]:
    """(the runtime layer's files, the big layer's in v1, in v2): the same at every level."""
    big = _big_layer_files()
    return realistic_files(3, count=10), big, _patched(big)


# Level -> (v1, v2). Go's gzip is deterministic, so the images (about 1 s of generating
# files and 1 s of Go gzipping 10 MB twice, at level 6) are built once a session for all
# the tests here and in test_gogzip_mirror; each test writes its own layouts.
_GO_IMAGES: dict[int, tuple[Image, Image]] = {}


def go_versions(root: Path, go_oracle: GoOracle, level: int) -> Versions:
    """v1 and v2 of a two-layer image (the big layer changed in v2), layers gzipped by Go."""
    if level not in _GO_IMAGES:
        runtime, big_v1, big_v2 = _layer_files()
        gzip = functools.partial(go_oracle.gzip, level=level)
        _GO_IMAGES[level] = (
            build_image([runtime, big_v1], compressor=gzip),
            build_image([runtime, big_v2], compressor=gzip),
        )
    v1, v2 = _GO_IMAGES[level]
    return Versions(_layout(root / "v1", v1), _layout(root / "v2", v2))


def delta_recipe(origin: str, repository: str, delta: str) -> dict[str, object]:
    """The recipe in the header of a delta blob the origin serves."""
    url = f"{origin}/v2/{repository}/blobs/{delta}"
    with urllib.request.urlopen(url, timeout=30) as response:
        return read_header(io.BytesIO(response.read())).recipe


@pytest.mark.parametrize("level", [6, 1])
def test_go_gzipped_v2_is_rebuilt_from_a_delta_and_unpacked_by_containerd(
    tmp_path: Path, go_oracle: GoOracle, level: int
) -> None:
    """Level 6 is gzip.NewWriter's default (Docker, BuildKit); crane and ko write level 1."""
    versions = go_versions(tmp_path / "images", go_oracle, level)
    base, target = versions.changed
    layer = versions.v2.images[0].layers[1]
    config_v2 = versions.v2.images[0].config
    assert layer.data[:3] == b"\x1f\x8b\x08" and layer.data[9] == 255  # Go's header (OS unknown)
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

            push(versions.v2, origin, f"{REPOSITORY}:2")
            delta = wait_for_delta(origin, target, base)
            assert delta["size"] < len(layer.data) / 2
            recipe = delta_recipe(origin, REPOSITORY, delta["delta"])
            assert recipe["kind"] == "gzip-go", recipe
            assert recipe["header"] == layer.data[:10].hex()

            reference = f"{host}/{REPOSITORY}:2"
            ctrd.pull(reference, hosts)
            after_v2 = agent.metrics()
            assert ctrd.image_digest(reference) == versions.v2.top.digest
            assert ctrd.snapshots(), "containerd did not unpack v2"

            # The delta was used: one hit, and only it and v2's config crossed the wire.
            hits = metric(after_v2, "krill_agent_delta_hits_total")
            assert hits == metric(after_v1, "krill_agent_delta_hits_total") + 1
            crossed = wire_bytes(after_v2) - wire_bytes(after_v1)
            assert crossed == delta["size"] + len(config_v2.data), (crossed, delta, len(layer.data))
            failures = sum(v for k, v in after_v2.items() if k.startswith("krill_agent_delta_fail"))
            assert failures == 0
            print(
                f"gogzip e2e (Go level {level}): layer {len(layer.data)} bytes, "
                f"delta {delta['size']} bytes ({100 * delta['size'] / len(layer.data):.2f} %), "
                f"wire for v2 {int(crossed)}"
            )

            # skopeo checks every digest it writes: the rebuilt layer is Go's exact bytes.
            pulled = skopeo_copy_from(agent, f"{REPOSITORY}:2", tmp_path / "pulled")
            assert pulled == versions.v2.digests
