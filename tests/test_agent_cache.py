"""The node cache: watermarks, LRU, pins, age limit, restart and damaged files."""

from __future__ import annotations

import json
import os
import threading
import urllib.request
from pathlib import Path

import pytest

from krill.agent.cache import CacheLimits, NodeCache
from krill.blobstore import BlobStore
from krill.digests import Digest
from tests.agent_cluster import agent_process, build_layout, origin_process, push

KiB = 1024


class FakeClock:
    """A settable clock, so LRU order and ages do not depend on how fast the test runs."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def put(cache: NodeCache, clock: FakeClock, seed: int, size: int = 10 * KiB) -> Digest:
    clock.now += 1
    digest = cache.store.put_bytes(bytes([seed]) * size)
    await cache.add(digest)
    return digest


def flip_first_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF
    path.write_bytes(bytes(data))


def overwrite_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"X")


def make_cache(root: Path, clock: FakeClock, budget: int = 100 * KiB) -> NodeCache:
    cache = NodeCache(
        BlobStore(root), CacheLimits(budget=budget, high=0.9, low=0.6, max_age=3600), clock=clock
    )
    cache.load()
    return cache


async def test_filling_past_high_watermark_evicts_lru_unpinned_down_to_low(tmp_path: Path) -> None:
    clock = FakeClock()
    cache = make_cache(tmp_path, clock)
    blobs = [await put(cache, clock, seed) for seed in range(9)]  # 90 KiB: at, not past, the mark
    assert all(cache.has(d) for d in blobs)
    clock.now += 1
    cache.touch(blobs[0])  # recently used: must survive
    with cache.pinned(blobs[1]):  # being served: must survive although it is LRU
        newest = await put(cache, clock, 100)  # 100 KiB > 90 KiB high watermark
        assert cache.usage <= 60 * KiB
    survivors = {d for d in [*blobs, newest] if cache.has(d)}
    assert {blobs[0], blobs[1], newest} <= survivors
    evicted = [d for d in blobs if d not in survivors]
    # The least recently used unpinned ones went first, and their files are gone.
    assert evicted == blobs[2 : 2 + len(evicted)]
    assert all(not cache.store.has(d) for d in evicted)


async def test_blobs_past_the_age_limit_are_evicted_unless_pinned(tmp_path: Path) -> None:
    clock = FakeClock()
    cache = make_cache(tmp_path, clock)
    old, pinned_old = await put(cache, clock, 1), await put(cache, clock, 2)
    clock.now += 7200
    with cache.pinned(pinned_old):
        fresh = await put(cache, clock, 3)  # adding runs the limits
        await cache.trim()
    assert not cache.has(old) and cache.has(pinned_old) and cache.has(fresh)


async def test_seeding_pin_expires(tmp_path: Path) -> None:
    clock = FakeClock()
    cache = make_cache(tmp_path, clock, budget=20 * KiB)
    clock.now += 1
    seeding = cache.store.put_bytes(b"s" * 10 * KiB)
    await cache.add(seeding, pin_for=60)
    await put(cache, clock, 1)  # 20 KiB > 18 KiB: something must go, but the seed is pinned
    assert cache.has(seeding)
    clock.now += 120
    await put(cache, clock, 2)
    assert not cache.has(seeding)


async def test_index_survives_restart_and_damaged_files_are_dropped(tmp_path: Path) -> None:
    clock = FakeClock()
    cache = make_cache(tmp_path, clock)
    good, flipped, truncated = [await put(cache, clock, seed) for seed in (1, 2, 3)]
    cache.touch(good)
    cache.save()
    index = json.loads((tmp_path / "index.json").read_text())
    assert set(index["blobs"]) == {str(good), str(flipped), str(truncated)}

    overwrite_byte(cache.store.path(flipped), 5)  # same size, different bytes
    os.truncate(cache.store.path(truncated), 100)

    restarted = make_cache(tmp_path, clock)
    assert not restarted.has(truncated)  # size check at load
    assert restarted.has(flipped) and not restarted.entry(flipped).verified
    assert await restarted.verify_all() == [flipped]
    assert restarted.has(good) and restarted.entry(good).verified
    assert not restarted.has(flipped) and not restarted.store.has(flipped)
    assert restarted.entry(good).last_used == cache.entry(good).last_used


async def test_unverified_blob_is_hashed_before_it_counts_as_cached(tmp_path: Path) -> None:
    clock = FakeClock()
    cache = make_cache(tmp_path, clock)
    digest = await put(cache, clock, 9)
    cache.save()
    flip_first_byte(cache.store.path(digest))
    restarted = make_cache(tmp_path, clock)
    assert restarted.has(digest)
    assert await restarted.ensure_verified(digest) is False
    assert not restarted.has(digest)


async def test_a_verified_blob_written_to_since_is_hashed_again_before_it_is_served(
    tmp_path: Path,
) -> None:
    """A review flipped a byte of a cached layer: it was served, 200 with the digest
    header, to every client, because it had been verified once."""
    clock = FakeClock()
    cache = make_cache(tmp_path, clock)
    intact, damaged = await put(cache, clock, 1), await put(cache, clock, 2)
    assert await cache.ensure_verified(damaged)  # verified: one stat from now on
    path = cache.store.path(damaged)
    overwrite_byte(path, 100)
    # The write's own time can fall in the clock tick of the commit's on a fast machine;
    # a real one (a disk error, a stray process) comes later.
    later = path.stat().st_mtime_ns + 1_000_000_000
    os.utime(path, ns=(later, later))
    assert await cache.ensure_verified(intact)
    assert await cache.ensure_verified(damaged) is False
    assert not cache.has(damaged) and not cache.store.has(damaged)
    replaced = cache.store.path(intact)
    copy = replaced.with_name("copy")
    copy.write_bytes(replaced.read_bytes())
    copy.replace(replaced)  # same bytes, a new inode: hashed again, and still good
    assert await cache.ensure_verified(intact)


@pytest.mark.slow
def test_agent_refetches_a_blob_damaged_while_it_was_down(tmp_path: Path) -> None:
    with origin_process(tmp_path / "origin") as origin:
        image = build_layout(tmp_path / "layout", seed=11)
        push(image, origin, "team/cache:1")
        layer = image.images[0].layers[0]
        url_path = f"/v2/team/cache/blobs/{layer.digest}"
        with agent_process(tmp_path / "agent", origin) as agent:
            assert urllib.request.urlopen(agent.registry + url_path).read() == layer.data
        stored = BlobStore(agent.data / "blobs").path(Digest.parse(layer.digest))
        assert stored.read_bytes() == layer.data
        damaged = bytearray(layer.data)
        damaged[len(damaged) // 2] ^= 0xFF
        stored.write_bytes(bytes(damaged))
        with agent_process(tmp_path / "agent", origin) as agent:
            assert urllib.request.urlopen(agent.registry + url_path).read() == layer.data
        assert stored.read_bytes() == layer.data
        assert "cache.damaged" in (tmp_path / "agent" / "agent.log").read_text()


async def test_a_damaged_blob_leaves_the_index_on_the_event_loop_thread(tmp_path: Path) -> None:
    """Hashing runs in a worker thread, but the index (which eviction iterates on the
    loop) is only changed on the loop: a drop from the thread raced ``enforce_limits``."""
    clock = FakeClock()
    cache = make_cache(tmp_path, clock)
    digests = [await put(cache, clock, seed) for seed in range(3)]
    cache.save()
    flip_first_byte(cache.store.path(digests[1]))
    evicted_on: list[tuple[Digest, int]] = []
    restarted = NodeCache(
        BlobStore(tmp_path),
        CacheLimits(budget=100 * KiB),
        clock=clock,
        on_evict=lambda digest, reason: evicted_on.append((digest, threading.get_ident())),
    )
    restarted.load()
    assert await restarted.verify_all() == [digests[1]]
    assert await restarted.recheck(digests[0])
    assert evicted_on == [(digests[1], threading.get_ident())]
    assert not restarted.store.has(digests[1])
