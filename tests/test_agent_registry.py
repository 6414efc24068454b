"""The agent's registry endpoint against a real origin: pulls, Range, bad input, pushes."""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent_cluster import (
    Agent,
    agent_process,
    build_layout,
    origin_process,
    push,
    push_via_api,
)
from tests.components import SKOPEO_FLAGS, skopeo


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Agent, Path]]:
    """An origin holding team/app:1 (amd64+arm64 index), and an agent without a tracker."""
    root = tmp_path_factory.mktemp("agent-registry")
    with origin_process(root / "origin") as origin:
        image = build_layout(root / "layout", seed=1, platforms=("amd64", "arm64"))
        push(image, origin, "team/app:1")
        with agent_process(root / "agent", origin) as agent:
            yield origin, agent, image.layout


def request(
    url: str, method: str = "GET", headers: dict[str, str] | None = None, data: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, method=method, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def error_code(body: bytes) -> str:
    return json.loads(body)["errors"][0]["code"]


def test_skopeo_copy_through_agent_gives_identical_digests(cluster, tmp_path: Path) -> None:
    _, agent, layout = cluster
    out = tmp_path / "out"
    skopeo(
        "copy",
        "--all",
        "--preserve-digests",
        *SKOPEO_FLAGS,
        f"docker://{agent.registry_hostport}/team/app:1",
        f"oci:{out}:latest",
    )
    from tests.imagebuild import read_oci_layout_digests

    assert read_oci_layout_digests(out) == read_oci_layout_digests(layout)


def test_manifest_bytes_exactly_as_origin_has_them(cluster) -> None:
    origin, agent, _ = cluster
    accept = {"Accept": "application/vnd.oci.image.index.v1+json"}
    status, _headers, body = request(f"{origin}/v2/team/app/manifests/1", headers=accept)
    assert status == 200
    status, agent_headers, agent_body = request(
        f"{agent.registry}/v2/team/app/manifests/1", headers=accept
    )
    assert status == 200
    assert agent_body == body
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    assert agent_headers["Docker-Content-Digest"] == digest
    assert agent_headers["Content-Type"] == "application/vnd.oci.image.index.v1+json"
    status, head_headers, head_body = request(
        f"{agent.registry}/v2/team/app/manifests/{digest}", method="HEAD"
    )
    assert status == 200 and head_body == b""
    assert int(head_headers["Content-Length"]) == len(body)


def test_a_cached_manifest_still_answers_to_the_accept_header(cluster) -> None:
    """A review found the agent served a cached OCI index to a client accepting only
    Docker types (and 404 before it was cached): now it answers as the origin does."""
    origin, agent, _ = cluster
    docker_only = {"Accept": "application/vnd.docker.distribution.manifest.list.v2+json, "
                   "application/vnd.docker.distribution.manifest.v2+json"}  # fmt: skip
    url = f"{agent.registry}/v2/team/app/manifests/1"
    assert request(url, headers={"Accept": "application/vnd.oci.image.index.v1+json"})[0] == 200
    for method in ("GET", "HEAD"):  # cached now, by tag and by digest
        status, _, body = request(url, method=method, headers=docker_only)
        assert status == 404, method
        if method == "GET":
            assert error_code(body) == "MANIFEST_UNKNOWN"
            assert "is not converted" in json.loads(body)["errors"][0]["message"]
    assert request(f"{origin}/v2/team/app/manifests/1", headers=docker_only)[0] == 404
    for accept in ("*/*", "application/json"):  # a wildcard, or no manifest type listed
        assert request(url, headers={"Accept": accept})[0] == 200, accept


def _first_layer(cluster) -> tuple[str, bytes]:
    origin, _, _ = cluster
    _, _, index = request(f"{origin}/v2/team/app/manifests/1")
    child = json.loads(index)["manifests"][0]["digest"]
    _, _, manifest = request(f"{origin}/v2/team/app/manifests/{child}")
    layer = json.loads(manifest)["layers"][0]["digest"]
    _, _, data = request(f"{origin}/v2/team/app/blobs/{layer}")
    return layer, data


def test_blob_get_head_and_range(cluster) -> None:
    _, agent, _ = cluster
    digest, data = _first_layer(cluster)
    url = f"{agent.registry}/v2/team/app/blobs/{digest}"
    status, headers, body = request(url)
    assert status == 200 and body == data
    assert headers["Docker-Content-Digest"] == digest
    status, headers, body = request(url, method="HEAD")
    assert status == 200 and int(headers["Content-Length"]) == len(data)
    status, headers, body = request(url, headers={"Range": "bytes=100-"})
    assert status == 206 and body == data[100:]
    assert headers["Content-Range"] == f"bytes 100-{len(data) - 1}/{len(data)}"
    status, _, body = request(url, headers={"Range": "bytes=10-19"})
    assert status == 206 and body == data[10:20]
    status, _, body = request(url, headers={"Range": "bytes=-7"})
    assert status == 206 and body == data[-7:]


def test_range_on_a_blob_not_yet_cached_resumes_correctly(cluster, tmp_path: Path) -> None:
    _, agent, _ = cluster
    origin = cluster[0]
    _, _, index = request(f"{origin}/v2/team/app/manifests/1")
    child = json.loads(index)["manifests"][1]["digest"]
    _, _, manifest = request(f"{origin}/v2/team/app/manifests/{child}")
    layer = json.loads(manifest)["layers"][1]["digest"]
    _, _, data = request(f"{origin}/v2/team/app/blobs/{layer}")
    url = f"{agent.registry}/v2/team/app/blobs/{layer}"
    status, _, tail = request(url, headers={"Range": f"bytes={len(data) // 2}-"})
    assert status == 206
    status, _, head = request(url, headers={"Range": f"bytes=0-{len(data) // 2 - 1}"})
    assert status == 206
    assert head + tail == data


@pytest.mark.parametrize(
    "header",
    ["bytes=abc", "bytes=5-2", "items=0-1", "bytes=0-1,4-5", "bytes=99999999-", "bytes=-0"],
)
def test_malformed_or_unsatisfiable_range_is_416(cluster, header: str) -> None:
    _, agent, _ = cluster
    digest, data = _first_layer(cluster)
    status, headers, body = request(
        f"{agent.registry}/v2/team/app/blobs/{digest}", headers={"Range": header}
    )
    assert status == 416
    assert error_code(body) == "RANGE_INVALID"
    assert headers["Content-Range"] == f"bytes */{len(data)}"


def test_bad_input_gets_the_spec_errors(cluster) -> None:
    _, agent, _ = cluster
    base = f"{agent.registry}/v2"
    status, _, body = request(f"{base}/Team/App/manifests/1")
    assert (status, error_code(body)) == (400, "NAME_INVALID")
    status, _, body = request(f"{base}/team/../etc/manifests/1")
    assert status in (400, 404)
    status, _, body = request(f"{base}/team/app/blobs/sha256:1234")
    assert (status, error_code(body)) == (400, "DIGEST_INVALID")
    status, _, body = request(f"{base}/team/app/blobs/md5:abcd")
    assert (status, error_code(body)) == (400, "DIGEST_INVALID")
    status, _, body = request(f"{base}/team/app/manifests/nosuchtag")
    assert (status, error_code(body)) == (404, "MANIFEST_UNKNOWN")
    status, _, body = request(f"{base}/team/other/manifests/sha256:{'0' * 64}")
    assert (status, error_code(body)) == (404, "MANIFEST_UNKNOWN")
    status, _, body = request(f"{base}/team/app/blobs/sha256:{'0' * 64}")
    assert (status, error_code(body)) == (404, "BLOB_UNKNOWN")
    status, _, body = request(f"{base}/team/app/manifests/bad%20tag")  # no manifest has it
    assert (status, error_code(body)) == (404, "MANIFEST_UNKNOWN")


def test_push_attempts_are_refused_with_where_to_push(cluster) -> None:
    origin, agent, _ = cluster
    status, _headers, body = request(
        f"{agent.registry}/v2/team/app/blobs/uploads/", method="POST", data=b""
    )
    assert (status, error_code(body)) == (405, "UNSUPPORTED")
    assert origin in json.loads(body)["errors"][0]["message"]
    status, _, body = request(f"{agent.registry}/v2/team/app/manifests/2", method="PUT", data=b"{}")
    assert (status, error_code(body)) == (405, "UNSUPPORTED")


def test_ns_maps_upstream_hosts_to_origin_prefixes(cluster, tmp_path: Path) -> None:
    origin, agent, _ = cluster
    image = build_layout(tmp_path / "layout", seed=7)
    push(image, origin, "docker.io/library/tool:2")
    url = f"{agent.registry}/v2/library/tool/manifests/2?ns=docker.io"
    status, _, body = request(url)
    assert status == 200 and body == image.top.data
    own = origin.removeprefix("http://")
    status, _, _ = request(f"{agent.registry}/v2/team/app/manifests/1?ns={own}")
    assert status == 200
    status, _, body = request(f"{agent.registry}/v2/team/app/manifests/1?ns=quay.io")
    assert (status, error_code(body)) == (404, "MANIFEST_UNKNOWN")


def test_base_endpoint_and_health(cluster) -> None:
    _, agent, _ = cluster
    status, headers, _ = request(f"{agent.registry}/v2/")
    assert status == 200 and headers["Docker-Distribution-API-Version"] == "registry/2.0"
    status, _, body = request(f"{agent.api}/health")
    assert status == 200 and json.loads(body)["status"] == "ok"


def test_docker_manifest_list_round_trips_byte_identical(cluster, tmp_path: Path) -> None:
    origin, agent, _ = cluster
    image = build_layout(tmp_path / "layout", seed=8, platforms=("amd64", "arm64"), docker=True)
    push_via_api(origin, "team/docker", image, "1")
    status, headers, body = request(
        f"{agent.registry}/v2/team/docker/manifests/1",
        headers={"Accept": "application/vnd.docker.distribution.manifest.list.v2+json"},
    )
    assert status == 200 and body == image.top.data
    assert headers["Content-Type"] == "application/vnd.docker.distribution.manifest.list.v2+json"
    out = tmp_path / "out"
    skopeo(
        "copy",
        "--all",
        *SKOPEO_FLAGS,
        f"docker://{agent.registry_hostport}/team/docker:1",
        f"dir:{out}",
    )
    assert (out / "manifest.json").read_bytes() == image.top.data
    for img in image.images:
        for blob in img.blobs():
            assert (out / blob.digest.split(":", 1)[1]).read_bytes() == blob.data


def test_tags_are_listed_from_the_origin_under_the_clients_name(cluster) -> None:
    """skopeo inspect lists tags first, and failed on the agent's 404 before."""
    origin, agent, _ = cluster
    accept = {"Accept": "application/vnd.oci.image.index.v1+json"}
    _, headers, index = request(f"{origin}/v2/team/app/manifests/1", headers=accept)
    put = {"Content-Type": headers["Content-Type"]}
    assert request(f"{origin}/v2/team/app/manifests/2", "PUT", put, index)[0] == 201
    status, _, body = request(f"{agent.registry}/v2/team/app/tags/list")
    assert status == 200 and json.loads(body) == {"name": "team/app", "tags": ["1", "2"]}
    own = origin.removeprefix("http://")  # ns naming the origin itself: its own repositories
    status, headers, body = request(f"{agent.registry}/v2/team/app/tags/list?n=1&ns={own}")
    assert status == 200 and json.loads(body)["tags"] == ["1"]
    ns = own.replace(":", "%3A")
    assert headers["Link"] == f'</v2/team/app/tags/list?n=1&last=1&ns={ns}>; rel="next"'
    status, _, body = request(f"{agent.registry}/v2/team/nothing/tags/list")
    assert status == 404 and error_code(body) == "NAME_UNKNOWN"
    status, _, body = request(f"{agent.registry}/v2/team/app/tags/list?n=x")
    assert status == 400 and error_code(body) == "UNSUPPORTED"  # the origin's own answer
    inspected = skopeo("inspect", "--tls-verify=false", f"docker://{agent.registry_hostport}/team/app:1")
    assert json.loads(inspected.stdout)["RepoTags"] == ["1", "2"]


def test_referrers_come_from_the_origin_filtered_by_artifact_type(cluster) -> None:
    """Signature tools find signatures through the agent (the origin answers OCI-Subject,
    so they never write the fallback tag); the agent filters by artifactType itself."""
    origin, agent, _ = cluster
    accept = {"Accept": "application/vnd.oci.image.index.v1+json"}
    _, headers, index = request(f"{origin}/v2/team/app/manifests/1", headers=accept)
    subject = {"mediaType": headers["Content-Type"], "digest": headers["Docker-Content-Digest"],
               "size": len(index)}
    empty = b"{}"
    empty_digest = "sha256:" + hashlib.sha256(empty).hexdigest()
    upload = f"{origin}/v2/team/app/blobs/uploads/?digest={empty_digest}"
    assert request(upload, "POST", {"Content-Type": "application/octet-stream"}, empty)[0] == 201
    for kind in ("application/vnd.example.sig", "application/vnd.example.sbom"):
        artifact = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": kind,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty_digest,
                       "size": 2},
            "layers": [], "subject": subject,
        }).encode()
        digest = "sha256:" + hashlib.sha256(artifact).hexdigest()
        put = {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}
        target = f"{origin}/v2/team/app/manifests/{digest}"
        status, headers, _ = request(target, "PUT", put, artifact)
        assert status == 201 and headers["OCI-Subject"] == subject["digest"]
    url = f"{agent.registry}/v2/team/app/referrers/{subject['digest']}"
    status, headers, body = request(url)
    assert status == 200 and headers["Content-Type"] == "application/vnd.oci.image.index.v1+json"
    kinds = sorted(m["artifactType"] for m in json.loads(body)["manifests"])
    assert kinds == ["application/vnd.example.sbom", "application/vnd.example.sig"]
    assert "OCI-Filters-Applied" not in headers
    status, headers, body = request(f"{url}?artifactType=application/vnd.example.sig")
    assert status == 200 and headers["OCI-Filters-Applied"] == "artifactType"
    assert [m["artifactType"] for m in json.loads(body)["manifests"]] == [
        "application/vnd.example.sig"
    ]
    status, _, body = request(f"{agent.registry}/v2/team/app/referrers/sha256:{'0' * 64}")
    assert status == 200 and json.loads(body)["manifests"] == []
    status, _, body = request(f"{agent.registry}/v2/team/app/referrers/nodigest")
    assert status == 400 and error_code(body) == "DIGEST_INVALID"
