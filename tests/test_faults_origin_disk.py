"""The origin's data directory fills up, for real: a tmpfs of a few MiB (tests/faults.py).

Each push that cannot fit fails with a 5xx and the spec's JSON error naming
the full disk; nothing partial stays in the store (no blob, no temp file, no
tag pointing at a manifest that is not there); the origin keeps answering;
and once space frees the same push succeeds and pulls back byte-exact.
"""

from __future__ import annotations

import contextlib
import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from krill.blobstore import BlobStore
from tests.agent_cluster import origin_process
from tests.faults import SmallDisk, sha256_digest, small_disk
from tests.imagebuild import build_image, random_files

pytestmark = [
    pytest.mark.slow,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root"),
]

MiB = 1024 * 1024
REPO = "team/app"
DISK = 4 * MiB


def http(
    method: str, url: str, data: bytes | None = None, **headers: str
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


@dataclass
class FullOrigin:
    url: str
    data: Path
    disk: SmallDisk

    def blobs(self) -> set[str]:
        return {str(d) for d in BlobStore(self.data).digests()}

    def incoming(self) -> list[Path]:
        return list((self.data / "incoming").iterdir())


@contextlib.contextmanager
def origin_on_a_small_disk(tmp_path: Path) -> Iterator[FullOrigin]:
    with (
        small_disk(tmp_path / "disk", DISK) as disk,
        origin_process(tmp_path / "origin", "--data", str(disk.path / "data")) as url,
    ):
        yield FullOrigin(url, disk.path / "data", disk)


def assert_disk_full_error(status: int, body: bytes) -> None:
    """A 5xx with the spec's JSON error that says what is wrong."""
    assert 500 <= status < 600, status
    error = json.loads(body)["errors"][0]
    assert error["code"] == "UNAVAILABLE", error
    assert "space" in error["message"], error


def assert_answering(origin: FullOrigin) -> None:
    assert http("GET", f"{origin.url}/v2/")[0] == 200


def monolithic_push(origin: FullOrigin, data: bytes) -> tuple[int, bytes]:
    url = f"{origin.url}/v2/{REPO}/blobs/uploads/?digest={sha256_digest(data)}"
    status, _, body = http("POST", url, data)
    return status, body


def test_a_push_bigger_than_the_free_space_is_refused_and_succeeds_once_space_frees(
    tmp_path: Path,
) -> None:
    big, small = os.urandom(2 * DISK), os.urandom(64 * 1024)
    with origin_on_a_small_disk(tmp_path) as origin:
        assert_disk_full_error(*monolithic_push(origin, big))
        assert origin.blobs() == set()
        assert origin.incoming() == []  # the failed upload's bytes went with it
        assert_answering(origin)
        assert monolithic_push(origin, small)[0] == 201  # its space was given back
        origin.disk.resize(4 * DISK)
        assert monolithic_push(origin, big)[0] == 201
        status, _, body = http("GET", f"{origin.url}/v2/{REPO}/blobs/{sha256_digest(big)}")
        assert (status, body) == (200, big)
        assert origin.blobs() == {sha256_digest(big), sha256_digest(small)}


def patch_chunk(origin: FullOrigin, location: str, data: bytes, start: int) -> tuple[int, bytes]:
    """Send ``data`` as the chunk at ``start``; the status and the body."""
    content_range = f"{start}-{start + len(data) - 1}"
    headers = {"Content-Range": content_range}
    status, _, body = http("PATCH", f"{origin.url}{location}", data, **headers)
    return status, body


def upload_chunks(
    origin: FullOrigin, location: str, data: bytes, start: int, chunk: int
) -> tuple[int, int, bytes]:
    """PATCH ``data`` from ``start`` in chunks until done or refused: (offset, status, body)."""
    status, body = 202, b""
    while start < len(data):
        status, body = patch_chunk(origin, location, data[start : start + chunk], start)
        if status != 202:
            break
        start += min(chunk, len(data) - start)
    return start, status, body


def resume_point(origin: FullOrigin, location: str) -> tuple[str, int]:
    """Where a client following the spec continues an upload after an error: its
    status's Range, or a new upload from byte 0 when the origin no longer knows it."""
    status, headers, _ = http("GET", f"{origin.url}{location}")
    if status == 204:
        return location, int(headers["Range"].split("-")[1]) + 1
    assert status == 404, status
    _, headers, _ = http("POST", f"{origin.url}/v2/{REPO}/blobs/uploads/")
    return headers["Location"], 0


@pytest.mark.parametrize("chunk", [700_000, 1_500_001])
def test_a_chunked_upload_that_hit_a_full_disk_never_commits_torn_bytes(
    tmp_path: Path, chunk: int
) -> None:
    """The failed chunk may be half on disk; the client resumes where the origin says
    (or starts over) once space frees, and the blob stored is exactly what was pushed."""
    data = os.urandom(2 * DISK)
    with origin_on_a_small_disk(tmp_path) as origin:
        _, headers, _ = http("POST", f"{origin.url}/v2/{REPO}/blobs/uploads/")
        offset, status, body = upload_chunks(origin, headers["Location"], data, 0, chunk)
        assert_disk_full_error(status, body)
        origin.disk.resize(4 * DISK)
        location, offset = resume_point(origin, headers["Location"])
        assert upload_chunks(origin, location, data, offset, chunk)[1] == 202
        status, _, _ = http("PUT", f"{origin.url}{location}?digest={sha256_digest(data)}")
        assert status == 201
        digest = sha256_digest(data)
        assert http("GET", f"{origin.url}/v2/{REPO}/blobs/{digest}")[2] == data
        assert origin.incoming() == []


def fill(disk: SmallDisk) -> Path:
    """A file taking every free byte of ``disk``."""
    filler = disk.path / "filler"
    with open(filler, "wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    return filler


def test_a_manifest_put_on_a_full_disk_leaves_no_tag_and_succeeds_after(tmp_path: Path) -> None:
    image = build_image([random_files(5, count=1, size=4096)])
    manifest = image.manifest
    tag_url = f"{{}}/v2/{REPO}/manifests/v1"
    with origin_on_a_small_disk(tmp_path) as origin:
        for blob in image.blobs():
            assert monolithic_push(origin, blob.data)[0] == 201
        filler = fill(origin.disk)
        headers = {"Content-Type": manifest.media_type}
        status, _, body = http("PUT", tag_url.format(origin.url), manifest.data, **headers)
        assert_disk_full_error(status, body)
        assert http("GET", tag_url.format(origin.url))[0] == 404
        assert origin.incoming() == []
        filler.unlink()
        assert http("PUT", tag_url.format(origin.url), manifest.data, **headers)[0] == 201
        status, _, body = http("GET", tag_url.format(origin.url))
        assert (status, body) == (200, manifest.data)
