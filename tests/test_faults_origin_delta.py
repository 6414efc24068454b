"""The origin SIGKILLed while a worker computes a delta: restarts consistent, computes it again.

A tag moved from v1 to v2 queues a delta between their changed layers; its
worker writes ``deltas/work/delta-*.krd`` while it runs. The test kills the
origin as soon as that file exists, then checks what the issue asks:

* the worker processes do not outlive their origin for long (they end once
  their job does, instead of computing for nobody);
* after the restart the scratch directory is empty (nothing half-made was
  published), every delta the index calls ``ok`` is in the store, the tag
  history ends with the move to v2, and the tag serves v2;
* the push can be retried (201, same manifest), and the delta for the pair is
  computed again when a node asks for it.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from krill.blobstore import BlobStore
from krill.digests import Digest
from tests.components import free_port
from tests.faults import RestartableOrigin, push_blob
from tests.imagebuild import Image, build_image, random_files, realistic_files
from tests.polling import until_sync

pytestmark = pytest.mark.slow

REPO = "team/app"


def versions() -> tuple[Image, Image]:
    """v1 and v2: one layer of many files, a few changed (so a delta is worth computing)."""
    app_v1 = realistic_files(3, count=400)
    app_v2 = {**app_v1, "etc/os-release": b'NAME="Krill test"\nVERSION_ID="2"\n'}
    app_v2["usr/bin/tool7"] = app_v2["usr/bin/tool7"][:5000] + b"patched"
    runtime = random_files(4, count=1, size=4096)
    return build_image([runtime, app_v1]), build_image([runtime, app_v2])


def push_image(base: str, image: Image, tag: str) -> int:
    """Blobs, then the manifest under ``tag``; the manifest PUT's status."""
    for blob in image.blobs():
        push_blob(base, blob.data, REPO)
    request = urllib.request.Request(
        f"{base}/v2/{REPO}/manifests/{tag}",
        data=image.manifest.data,
        method="PUT",
        headers={"Content-Type": image.manifest.media_type},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return int(response.status)


def children(pid: int) -> list[int]:
    """The direct child processes of ``pid`` (the delta pool's workers among them)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(p) for p in (task / "children").read_text().split()]
    return found


def running(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie nobody reaped has stopped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def ok_deltas(data: Path) -> list[str]:
    """Every delta digest the delta index records as usable."""
    found = []
    for path in (data / "deltas" / "index").glob("*.json"):
        for entry in json.loads(path.read_text()).values():
            if entry.get("status") == "ok":
                found.append(entry["delta"])
    return found


def last_tag_move(data: Path) -> dict[str, object]:
    lines = (data / "repositories" / REPO / "_tag_history.jsonl").read_text().splitlines()
    event = json.loads(lines[-1])
    assert isinstance(event, dict)
    return event


def delta_lookup(base_url: str, target: str, base: str) -> dict[str, object]:
    url = f"{base_url}/krill/v1/deltas/{target}?have={base}&repo={REPO}"
    with urllib.request.urlopen(url, timeout=30) as response:
        answer = json.loads(response.read())
    assert isinstance(answer, dict)
    return answer


def get(url: str, accept: str) -> bytes:
    request = urllib.request.Request(url, headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=60) as response:
        return bytes(response.read())


def test_an_origin_killed_while_computing_a_delta_restarts_consistent(tmp_path: Path) -> None:
    v1, v2 = versions()
    target, base = v2.layers[1].digest, v1.layers[1].digest
    origin = RestartableOrigin(free_port(), tmp_path / "origin" / "data", tmp_path)
    work = origin.data / "deltas" / "work"
    with origin.running("origin-1") as proc:
        assert push_image(origin.url, v1, "latest") == 201
        assert push_image(origin.url, v2, "latest") == 201  # the move queues the delta
        until_sync(lambda: any(work.glob("delta-*")), "a delta being computed", interval=0.002)
        workers = children(proc.pid)
        origin.kill()
    until_sync(
        lambda: not any(running(p) for p in workers), "the workers to end with it", within=120
    )
    with origin.running("origin-2"):
        assert list(work.iterdir()) == []
        store = BlobStore(origin.data)
        assert all(store.has(Digest.parse(d)) for d in ok_deltas(origin.data))
        assert last_tag_move(origin.data)["new"] == v2.manifest.digest
        assert push_image(origin.url, v2, "latest") == 201  # the retried push
        manifest_url = f"{origin.url}/v2/{REPO}/manifests/latest"
        assert get(manifest_url, v2.manifest.media_type) == v2.manifest.data
        until_sync(
            lambda: delta_lookup(origin.url, target, base)["status"] == "ok",
            "the delta computed again after the restart",
            within=120,
            interval=0.2,
        )
        answer = delta_lookup(origin.url, target, base)
        assert store.has(Digest.parse(str(answer["delta"])))
