"""The agent's delta path in-process: which layers it knows, which bases it offers, misses.

The full path (containerd, swarm, a real delta) is in ``test_agent_delta_e2e.py``;
these cases pin the decisions taken before any delta is fetched, against a real
HTTP server standing in for the origin's lookup endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web

from krill.agent.deltas import DeltaRebuilder
from krill.agent.layers import MAX_BASES, LayerIndex
from krill.delta import create_delta
from krill.digests import Digest
from krill.endpoints import DELTAS
from krill.originclient import OriginClient
from tests.fixtures_agent import (
    DELTA_REPO,
    CountingMetrics,
    Handler,
    fake_origin,
    learn,
    node_holding,
    rebuild_with,
    versions_with_a_delta,
)
from tests.imagebuild import Image, build_image, random_files, realistic_files

REPO = DELTA_REPO


def _image(seed: int) -> Image:
    return build_image([random_files(seed, count=1, size=512), random_files(seed + 1, 1, 512)])


def _layers(image: Image) -> list[Digest]:
    return [Digest.parse(layer.digest) for layer in image.layers]


def test_layer_index_knows_positions_and_offers_cached_bases_newest_first(tmp_path: Path) -> None:
    v1, v2, v3 = _image(1), _image(3), _image(5)
    index = LayerIndex(tmp_path / "layers.json")
    for image in (v1, v2, v3):
        learn(index, image)
    index.save()
    target = _layers(v3)[1]
    ref = index.layer(target)
    assert ref is not None and ref.position == 1 and ref.repository == REPO
    assert str(ref.config) == v3.config.digest
    assert index.layer(Digest.parse(v3.config.digest)) is None  # a config is not a layer

    cached = set(_layers(v1)) | {_layers(v2)[0]}
    # The same position first (v2's is not cached), then the rest, newest image first.
    assert index.bases(REPO, target, cached.__contains__) == [
        _layers(v1)[1],
        _layers(v2)[0],
        _layers(v1)[0],
    ]
    assert index.bases("other/repo", target, cached.__contains__) == []

    reloaded = LayerIndex(tmp_path / "layers.json")
    reloaded.load()
    assert reloaded.layer(target) == ref
    assert reloaded.bases(REPO, target, cached.__contains__) == index.bases(
        REPO, target, cached.__contains__
    )


def test_layer_index_bounds_the_bases_it_offers() -> None:
    index = LayerIndex()
    images = [build_image([random_files(3 * i + j, 1, 64) for j in range(3)]) for i in range(20)]
    for image in images:
        learn(index, image)
    bases = index.bases(REPO, _layers(images[-1])[0], lambda _d: True)
    assert len(bases) == MAX_BASES
    assert bases[0] == _layers(images[-2])[0]  # the newest earlier image comes first


@contextlib.asynccontextmanager
async def rebuilder_for(
    handler: Handler, metrics: CountingMetrics, tmp_path: Path, *, lookup_timeout: float = 5.0
) -> AsyncIterator[tuple[DeltaRebuilder, Digest]]:
    """A rebuilder holding v1's layers that has served v1 and v2, asking ``handler`` for
    deltas; yields it and v2's second layer."""
    v1, v2 = _image(1), _image(3)
    _store, cache, index = await node_holding(tmp_path, v1, v2)
    async with (
        fake_origin({DELTAS.route: handler}) as origin,
        aiohttp.ClientSession() as session,
    ):
        client = OriginClient(session, origin)
        rebuilder = DeltaRebuilder(client, cache, index, metrics, lookup_timeout=lookup_timeout)
        yield rebuilder, _layers(v2)[1]


async def _never_called(digest: Digest, repository: str) -> int:
    raise AssertionError(f"nothing should be fetched, asked for {digest}")


async def test_a_slow_lookup_is_a_miss_after_the_lookup_timeout(tmp_path: Path) -> None:
    asked: list[str] = []

    async def slow(request: web.Request) -> web.Response:
        asked.append(request.query["have"])
        await asyncio.sleep(30)
        return web.json_response({"status": "none"})

    metrics = CountingMetrics()
    # 2 s, not less: the bound covers connecting and the fake origin's own parsing, on
    # this loop; at 0.2 s a loaded CI machine missed before the request arrived.
    async with rebuilder_for(slow, metrics, tmp_path, lookup_timeout=2.0) as (rebuilder, target):
        assert not await rebuilder.rebuild(target, REPO, _never_called)
    assert metrics.misses == ["lookup_failed"]
    assert len(asked) == 1 and len(asked[0].split(",")) == 2  # v1's two cached layers offered


async def test_none_and_unfitting_answers_are_misses(tmp_path: Path) -> None:
    answers = [{"status": "none", "queued": 1}, {"status": "ok", "target": "sha256:" + "0" * 64}]

    async def answer(request: web.Request) -> web.Response:
        return web.json_response(answers.pop(0))

    metrics = CountingMetrics()
    async with rebuilder_for(answer, metrics, tmp_path) as (rebuilder, target):
        assert not await rebuilder.rebuild(target, REPO, _never_called)
        assert not await rebuilder.rebuild(target, REPO, _never_called)
        config = Digest.parse(_image(3).config.digest)
        assert not await rebuilder.rebuild(config, REPO, _never_called)
        assert not await rebuilder.rebuild(_layers(_image(1))[0], "other/repo", _never_called)
    assert metrics.misses == ["none", "lookup_failed", "not_a_layer", "no_base"]
    assert metrics.failures == [] and metrics.hits == 0


async def test_a_delta_rebuilds_the_exact_layer_into_the_cache(tmp_path: Path) -> None:
    v1, v2, delta = versions_with_a_delta(tmp_path)
    rebuilt = await rebuild_with(tmp_path, v1, v2, delta)
    target, metrics = Digest.parse(v2.layers[1].digest), rebuilt.metrics
    assert rebuilt.ok and metrics.hits == 1 and metrics.failures == []
    assert rebuilt.cache.path(target).read_bytes() == v2.layers[1].data
    assert metrics.saved == len(v2.layers[1].data) - len(delta)


async def test_a_delta_for_another_layer_fails_and_keeps_the_good_base(tmp_path: Path) -> None:
    v1, v2, _delta = versions_with_a_delta(tmp_path)
    other = build_image([random_files(30, 1, 512), realistic_files(31, count=5)])
    (tmp_path / "other").write_bytes(other.layers[1].data)
    create_delta(tmp_path / "base", tmp_path / "other", tmp_path / "wrong")
    rebuilt = await rebuild_with(tmp_path, v1, v2, (tmp_path / "wrong").read_bytes())
    metrics, cache = rebuilt.metrics, rebuilt.cache
    assert not rebuilt.ok and metrics.hits == 0
    # Its header names another layer, so it is refused before any rebuilding is done.
    assert metrics.failures == ["bad_delta"]
    assert not cache.has(Digest.parse(v2.layers[1].digest))
    assert cache.has(Digest.parse(v1.layers[1].digest))  # the base was fine and stays


async def test_garbage_instead_of_a_delta_fails_cleanly(tmp_path: Path) -> None:
    v1, v2, _delta = versions_with_a_delta(tmp_path)
    rebuilt = await rebuild_with(tmp_path, v1, v2, b"not a delta" * 100)
    assert not rebuilt.ok and rebuilt.metrics.failures == ["bad_delta"]
    assert rebuilt.cache.has(Digest.parse(v1.layers[1].digest))
    assert not list((tmp_path / "blobs" / "incoming").iterdir())  # nothing left behind


async def test_a_lookup_answer_arriving_in_pieces_is_read_whole_and_names_the_repo(
    tmp_path: Path,
) -> None:
    asked: list[str] = []
    answer = json.dumps({"status": "none", "queued": 1, "pad": " " * 20_000}).encode()

    async def trickled(request: web.Request) -> web.StreamResponse:
        asked.append(request.query.get("repo", ""))
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = len(answer)
        await response.prepare(request)
        half = len(answer) // 2
        await response.write(answer[:half])
        await asyncio.sleep(0.05)
        await response.write(answer[half:])
        await response.write_eof()
        return response

    metrics = CountingMetrics()
    async with rebuilder_for(trickled, metrics, tmp_path) as (rebuilder, target):
        assert not await rebuilder.rebuild(target, REPO, _never_called)
    assert metrics.misses == ["none"]  # not "lookup_failed": the whole answer was parsed
    assert asked == [REPO]
