"""Garbage collection (``krill origin gc``, ``origin.gc``) beside a serving origin.

Files are aged with ``os.utime`` instead of waiting out a grace period: the
collector reads only mtimes (of blobs and of their repository links).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer
from pytest_aiohttp import AiohttpClient

from krill.origin.appkeys import CONFIG, METRICS
from krill.origin.cacheretention import CacheLimits
from krill.origin.gc import GarbageCollector, GcKind
from tests.clocks import ManualClock
from tests.fixtures_origin import StartOrigin, digest_of
from tests.imagebuild import Image, build_image, random_files
from tests.metrics_text import parse_metrics
from tests.polling import until
from tests.test_origin_api import push_blob, push_image

HOUR = 3600.0


def two_images() -> tuple[Image, Image]:
    """Two images sharing their first layer."""
    shared = random_files(1, count=3, size=2000)
    return (
        build_image([shared, random_files(2, count=3, size=3000)]),
        build_image([shared, random_files(3, count=3, size=4000)]),
    )


def age(data: Path, seconds: float = HOUR) -> None:
    """Make every blob and link look ``seconds`` old (as after a long enough wait)."""
    for path in data.rglob("*"):
        if path.is_file() and "incoming" not in path.parts:
            stat = path.stat()
            os.utime(path, (stat.st_atime - seconds, stat.st_mtime - seconds))


async def status(client: TestClient, repo: str, digest: str) -> int:
    return (await client.get(f"/v2/{repo}/blobs/{digest}")).status


async def client_and_data(
    start_origin: StartOrigin, aiohttp_client: AiohttpClient
) -> tuple[TestClient, Path]:
    server: TestServer = await start_origin()
    return await aiohttp_client(server), server.app[CONFIG].data


async def test_gc_cli_removes_a_deleted_manifests_layers_and_keeps_shared_ones(
    start_origin: StartOrigin, aiohttp_client: AiohttpClient
) -> None:
    client, data = await client_and_data(start_origin, aiohttp_client)
    kept, deleted = two_images()
    await push_image(client, "team/kept", "1", kept)
    await push_image(client, "team/gone", "1", deleted)
    gone = await client.delete(f"/v2/team/gone/manifests/{deleted.manifest.digest}")
    assert gone.status == 202
    age(data)
    cli = [sys.executable, "-m", "krill.cli", "origin", "gc", "--data", str(data), "--grace", "0"]
    out = await asyncio.to_thread(subprocess.run, cli, capture_output=True, text=True, check=True)
    lines = dict(line.split(": ", 1) for line in out.stdout.splitlines())
    assert set(lines) == {kind.value for kind in GcKind}
    removed = [deleted.layers[1], deleted.config]  # and the manifest's own bytes
    size = sum(len(blob.data) for blob in removed) + len(deleted.manifest.data)
    assert lines["blobs"] == f"removed 3 objects, {size} bytes"
    for blob in removed:
        assert await status(client, "team/gone", blob.digest) == 404
    assert await status(client, "team/gone", deleted.layers[0].digest) == 200  # shared with kept
    for blob in kept.blobs():
        assert await status(client, "team/kept", blob.digest) == 200
    manifest = await client.get(f"/v2/team/kept/manifests/{kept.manifest.digest}")
    assert manifest.status == 200


async def test_a_manifest_pushed_while_gc_runs_keeps_its_blobs(
    start_origin: StartOrigin, aiohttp_client: AiohttpClient
) -> None:
    """The push lands between the mark and the sweep, with blobs the mark found unreferenced."""
    client, data = await client_and_data(start_origin, aiohttp_client)
    first, second = two_images()
    await push_image(client, "team/app", "1", second)
    await client.delete(f"/v2/team/app/manifests/{second.manifest.digest}")
    await push_image(client, "team/app", "2", first)
    age(data)
    loop = asyncio.get_running_loop()

    def push_again() -> None:  # in the collector's thread: the push runs on the loop
        push = push_image(client, "team/app", "3", second)
        asyncio.run_coroutine_threadsafe(push, loop).result()
        age(data)  # its blobs were already there: nothing recent protects them

    collector = GarbageCollector(data, grace=0, between_mark_and_sweep=push_again)
    report = await asyncio.to_thread(collector.collect)
    assert report.freed[GcKind.BLOBS].objects == 0
    for blob in [*first.blobs(), *second.blobs()]:
        assert await status(client, "team/app", blob.digest) == 200


async def test_an_upload_in_progress_survives_gc(
    start_origin: StartOrigin, aiohttp_client: AiohttpClient
) -> None:
    client, data = await client_and_data(start_origin, aiohttp_client)
    blob = os.urandom(50_000)
    started = await client.post("/v2/team/app/blobs/uploads/")
    patched = await client.patch(started.headers["Location"], data=blob[:20_000])
    assert patched.status == 202
    age(data)
    await asyncio.to_thread(GarbageCollector(data, grace=0).collect)
    location = patched.headers["Location"]
    separator = "&" if "?" in location else "?"
    done = await client.put(f"{location}{separator}digest={digest_of(blob)}", data=blob[20_000:])
    assert done.status == 201, await done.text()
    assert await status(client, "team/app", digest_of(blob)) == 200


async def test_an_unreferenced_blob_within_the_grace_period_is_kept(
    start_origin: StartOrigin, aiohttp_client: AiohttpClient
) -> None:
    """Pushed, its manifest not yet: the grace period is what keeps it."""
    client, data = await client_and_data(start_origin, aiohttp_client)
    digest = await push_blob(client, "team/app", os.urandom(10_000))
    report = await asyncio.to_thread(GarbageCollector(data, grace=HOUR).collect)
    assert report.kept_recent == 1 and report.freed[GcKind.BLOBS].objects == 0
    assert await status(client, "team/app", digest) == 200


async def test_dry_run_deletes_nothing(
    start_origin: StartOrigin, aiohttp_client: AiohttpClient
) -> None:
    client, data = await client_and_data(start_origin, aiohttp_client)
    image = build_image([random_files(4, count=3, size=1000)])
    await push_image(client, "team/app", "1", image)
    await client.delete(f"/v2/team/app/manifests/{image.manifest.digest}")
    age(data)
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    report = await asyncio.to_thread(GarbageCollector(data, grace=0).collect, True)
    assert report.freed[GcKind.BLOBS].objects == 3
    assert report.lines()[0].startswith("blobs: would remove 3 objects")
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before
    for blob in image.blobs():
        assert await status(client, "team/app", blob.digest) == 200


async def test_a_dry_run_reports_what_the_real_run_then_removes(
    start_origin: StartOrigin, aiohttp_client: AiohttpClient
) -> None:
    """Delta-index entries for blobs the sweep takes are counted by the dry run too."""
    client, data = await client_and_data(start_origin, aiohttp_client)
    image = build_image([random_files(6, count=2, size=1000), random_files(7, count=2, size=1000)])
    await push_image(client, "team/app", "1", image)
    await client.delete(f"/v2/team/app/manifests/{image.manifest.digest}")
    base, target = (layer.digest for layer in image.layers)
    index = data / "deltas" / "index"
    index.mkdir(parents=True)
    (index / f"{target.removeprefix('sha256:')}.json").write_text(
        json.dumps({base: {"status": "none"}})
    )
    age(data)
    dry = await asyncio.to_thread(GarbageCollector(data, grace=0).collect, True)
    real = await asyncio.to_thread(GarbageCollector(data, grace=0).collect)
    assert dry.freed[GcKind.DELTA_INDEX].objects == 1
    assert [line.replace("would remove", "removed") for line in dry.lines()] == real.lines()
    assert not (index / f"{target.removeprefix('sha256:')}.json").exists()


async def test_tag_delete_keeps_the_manifest_and_digest_delete_drops_its_tags(
    start_origin: StartOrigin, aiohttp_client: AiohttpClient
) -> None:
    client, _data = await client_and_data(start_origin, aiohttp_client)
    image = build_image([random_files(5, count=2, size=1000)])
    await push_image(client, "team/app", "1", image)
    await push_image(client, "team/app", "2", image)
    assert (await client.delete("/v2/team/app/manifests/1")).status == 202
    assert (await client.delete("/v2/team/app/manifests/1")).status == 404
    assert (await client.get(f"/v2/team/app/manifests/{image.manifest.digest}")).status == 200
    assert (await client.delete(f"/v2/team/app/manifests/{image.manifest.digest}")).status == 202
    assert (await client.get("/v2/team/app/manifests/2")).status == 404
    tags = await (await client.get("/v2/team/app/tags/list")).json()
    assert tags["tags"] in ([], None)


async def test_a_mirrors_size_cap_forgets_the_least_recently_asked_for_manifest(
    start_origin: StartOrigin, aiohttp_client: AiohttpClient
) -> None:
    """Retention (``origin.cacheretention``) runs on any store; a mirror turns it on."""
    client, data = await client_and_data(start_origin, aiohttp_client)
    older, newer = two_images()
    await push_image(client, "team/old", "1", older)
    await push_image(client, "team/new", "1", newer)
    age(data)
    newest = data / "repositories/team/new/_manifests" / newer.manifest.digest.split(":")[1]
    os.utime(newest)  # asked for just now
    cap = sum(len(b.data) for b in newer.blobs()) + len(newer.manifest.data)
    limits = CacheLimits(max_bytes=cap)
    report = await asyncio.to_thread(GarbageCollector(data, 0, cache_limits=limits).collect)
    assert report.evicted == 1
    assert (await client.get("/v2/team/old/manifests/1")).status == 404
    assert await status(client, "team/old", older.layers[1].digest) == 404
    assert await status(client, "team/old", older.layers[0].digest) == 200  # newer uses it
    for blob in newer.blobs():
        assert await status(client, "team/new", blob.digest) == 200


async def test_the_origin_collects_every_gc_interval_and_counts_what_it_freed(
    start_origin: StartOrigin, aiohttp_client: AiohttpClient
) -> None:
    clock = ManualClock()
    server = await start_origin(clock=clock, gc_interval=600.0, gc_grace=0.0)
    client, data = await aiohttp_client(server), server.app[CONFIG].data
    image = build_image([random_files(6, count=2, size=1000)])
    await push_image(client, "team/app", "1", image)
    await client.delete(f"/v2/team/app/manifests/{image.manifest.digest}")
    age(data)
    await until(lambda: clock.sleepers > 0, "the gc loop asleep on the clock")
    clock.advance(600.0)
    freed = 'krill_origin_gc_freed_objects_total{kind="blobs"}'

    def counted() -> float:
        return parse_metrics(server.app[METRICS].render().decode()).get(freed, 0.0)

    await until(lambda: counted() == 3.0, "the periodic collection's count of freed blobs")
    assert await status(client, "team/app", image.layers[0].digest) == 404


async def test_a_manifest_pushed_as_another_repositorys_layer_keeps_its_own_layers(
    start_origin: StartOrigin, aiohttp_client: AiohttpClient
) -> None:
    """A writer of one repository pushed a public image's manifest bytes as a blob of its
    own and named it as a layer; the mark saw those bytes as a live blob first and never
    read them as a manifest, so gc deleted the public image's layers (security review)."""
    client, data = await client_and_data(start_origin, aiohttp_client)
    public, _ = two_images()
    await push_image(client, "public/app", "1", public)
    config = await push_blob(client, "aaa/evil", b"{}")  # "aaa" is marked before "public"
    smuggled = await push_blob(client, "aaa/evil", public.manifest.data)
    evil = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config,
                   "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": smuggled, "size": len(public.manifest.data)}],
    }).encode()  # fmt: skip
    put = await client.put(
        "/v2/aaa/evil/manifests/1", data=evil,
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )  # fmt: skip
    assert put.status == 201, await put.text()
    age(data)
    report = await asyncio.to_thread(GarbageCollector(data, grace=0).collect)
    assert report.freed[GcKind.BLOBS].objects == 0
    for blob in public.blobs():
        assert await status(client, "public/app", blob.digest) == 200
