"""Killing the origin (kill -9) in the middle of an upload loses nothing and leaves nothing."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from krill.blobstore import BlobStore
from tests.agent_cluster import wait_until
from tests.components import SKOPEO_FLAGS, free_port, krill_process, skopeo
from tests.imagebuild import build_image, random_files, read_oci_layout_digests, write_oci_layout


def http(method: str, url: str, data: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def incoming_bytes(data_dir: Path) -> int:
    incoming = data_dir / "incoming"
    return sum(p.stat().st_size for p in incoming.iterdir()) if incoming.exists() else 0


def start_partial_patch(port: int, location: str, body: bytes, sent: int) -> socket.socket:
    """Send a PATCH's headers and the first ``sent`` bytes of ``body``, then stall."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        f"PATCH {location} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
        f"Content-Type: application/octet-stream\r\n\r\n".encode()
        + body[:sent]
    )
    return sock


@pytest.mark.slow
def test_kill_during_upload_then_same_push_succeeds(tmp_path: Path) -> None:
    image = build_image([random_files(7, count=4, size=512 * 1024)])
    layer = image.layers[0]
    port = free_port()
    data_dir = tmp_path / "origin"
    base = f"http://127.0.0.1:{port}"
    args = ["origin", "--listen", f"127.0.0.1:{port}", "--data", str(data_dir)]

    with krill_process(args, tmp_path / "origin-1.log", f"{base}/health") as proc:
        status, headers, _ = http("POST", f"{base}/v2/team/app/blobs/uploads/")
        assert status == 202
        location = headers["Location"]
        half = len(layer.data) // 2
        sock = start_partial_patch(port, location, layer.data, half)
        wait_until(lambda: incoming_bytes(data_dir) >= half, "the origin to be mid-upload")
        proc.kill()
        proc.wait()
        sock.close()

    # the crash left a temp file, never a blob
    assert incoming_bytes(data_dir) >= half
    assert [p for p in (data_dir / "blobs").rglob("*") if p.is_file()] == []

    with krill_process(args, tmp_path / "origin-2.log", f"{base}/health"):
        assert incoming_bytes(data_dir) == 0  # the restarted origin removed the temp file
        assert list(BlobStore(data_dir).digests()) == []
        status, _, body = http("PATCH", f"{base}{location}", b"more")
        assert status == 404
        assert json.loads(body)["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"
        status, _, _ = http("GET", f"{base}/v2/team/app/blobs/{layer.digest}")
        assert status == 404
        # the client restarts the push: the whole image goes in and comes back identical
        src = write_oci_layout(tmp_path / "src", image.manifest, [image], "v1")
        ref = f"docker://127.0.0.1:{port}/team/app:v1"
        skopeo("copy", *SKOPEO_FLAGS, f"oci:{src}:v1", ref)
        out = tmp_path / "out"
        skopeo("copy", *SKOPEO_FLAGS, ref, f"oci:{out}:v1")
        assert read_oci_layout_digests(out) == read_oci_layout_digests(src)
