"""``krill up --storage s3://...``: a local cluster whose origin keeps everything in a bucket."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from krill.s3backend import S3Backend, S3Location
from tests.agent_cluster import build_layout, push
from tests.components import SKOPEO_FLAGS, free_port, krill_command, skopeo
from tests.imagebuild import read_oci_layout_digests
from tests.s3_fixtures import SeaweedFS, s3_location, seaweedfs
from tests.test_origin_s3 import storage_url
from tests.test_up import wait_for_banner

__all__ = ["s3_location", "seaweedfs"]  # fixtures used here


@pytest.mark.slow
def test_krill_up_on_object_storage(
    seaweedfs: SeaweedFS, s3_location: S3Location, tmp_path: Path
) -> None:
    ports = [str(free_port()) for _ in range(4)]
    cmd = krill_command(
        "up",
        *("--data", str(tmp_path / "data"), "--storage", storage_url(s3_location)),
        *("--origin-port", ports[0], "--tracker-port", ports[1]),
        *("--agent-port", ports[2], "--registry-port", ports[3]),
    )
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": seaweedfs.credentials.access_key,
        "AWS_SECRET_ACCESS_KEY": seaweedfs.credentials.secret_key,
    }
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    try:
        banner = wait_for_banner(proc)
        up = json.loads((tmp_path / "data" / "up.json").read_text())
        assert up["storage"] == storage_url(s3_location) and up["storage"] in banner
        image = build_layout(tmp_path / "layout", seed=71)
        push(image, f"http://{up['origin']}", "team/up:1")
        out = tmp_path / "out"
        skopeo("copy", *SKOPEO_FLAGS, f"docker://{up['registry']}/team/up:1", f"oci:{out}:latest")
        assert read_oci_layout_digests(out) == read_oci_layout_digests(image.layout)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    pushed = read_oci_layout_digests(image.layout)
    assert pushed <= asyncio.run(bucket_digests(seaweedfs, s3_location))  # written through


async def bucket_digests(store: SeaweedFS, location: S3Location) -> set[str]:
    bucket = S3Backend(location, store.credentials)
    try:
        return {str(info.digest) async for info in bucket.list()}
    finally:
        await bucket.close()
