"""A tag re-pointed on the origin while agents hold its old manifest.

Real processes: one origin, three agents that differ only in ``tag_ttl`` (the
seconds an agent reuses a tag's answer, docs/agent.md): ``held`` keeps it an
hour, ``short`` one second, ``fresh`` not at all (0). Image one is pushed as
``team/move:1``; ``held`` and ``short`` pull it by tag, with its config and
layers. Then image two is pushed to the same tag.

What the test proves:

* ``held``, inside its TTL, still answers the tag with image one's manifest,
  and that image is whole: its config and every layer are served byte-exact
  (a node never gets a manifest whose blobs it cannot have);
* ``fresh`` (TTL 0) answers the tag with image two's manifest at once, and
  ``short`` does once its TTL is over (waited on, not timed);
* the new manifest by digest, and its blobs, come through ``held`` too;
* image one by its old digest still works after the move, through an agent
  that never saw it (``fresh``: from the origin) as well as one that cached it.

Every comparison is against the bytes that were pushed, so nothing
unverified or mixed (image one's manifest with image two's blobs) passes.
"""

from __future__ import annotations

import contextlib
import urllib.request
from pathlib import Path

import pytest

from tests.agent_cluster import (
    Agent,
    PushedImage,
    agent_process,
    build_layout,
    origin_process,
    push,
    wait_until,
)

pytestmark = pytest.mark.slow

REPO, TAG = "team/move", "1"
TTLS = {"held": 3600.0, "short": 1.0, "fresh": 0.0}


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=120) as response:
        return bytes(response.read())


def by_tag(agent: Agent) -> bytes:
    return get(f"{agent.registry}/v2/{REPO}/manifests/{TAG}")


def assert_whole(agent: Agent, image: PushedImage) -> None:
    """The image by its manifest digest, its config and every layer: byte-exact."""
    assert get(f"{agent.registry}/v2/{REPO}/manifests/{image.top.digest}") == image.top.data
    for single in image.images:
        for blob in (single.config, *single.layers):
            assert get(f"{agent.registry}/v2/{REPO}/blobs/{blob.digest}") == blob.data


def test_agents_holding_a_moved_tag_serve_a_whole_image_and_the_new_one_after_their_ttl(
    tmp_path: Path,
) -> None:
    one = build_layout(tmp_path / "one", seed=61)
    two = build_layout(tmp_path / "two", seed=62)
    with contextlib.ExitStack() as stack:
        origin = stack.enter_context(origin_process(tmp_path / "origin"))
        agents = {
            name: stack.enter_context(
                agent_process(tmp_path / name, origin, settings={"tag_ttl": ttl})
            )
            for name, ttl in TTLS.items()
        }
        held, short, fresh = agents["held"], agents["short"], agents["fresh"]
        push(one, origin, f"{REPO}:{TAG}")
        for agent in (held, short):
            assert by_tag(agent) == one.top.data
            assert_whole(agent, one)

        push(two, origin, f"{REPO}:{TAG}")  # the tag moves on the origin

        assert by_tag(held) == one.top.data  # an hour's TTL: the old answer, consistent
        assert_whole(held, one)
        assert by_tag(fresh) == two.top.data  # no TTL: the move is seen at once
        assert_whole(fresh, two)
        wait_until(lambda: by_tag(short) == two.top.data, "short's TTL to end")
        assert_whole(short, two)
        assert_whole(held, two)  # by digest, the new image is there for the agent still
        assert by_tag(held) == one.top.data  # ...that answers the tag from its cache

        assert_whole(fresh, one)  # the old digest, never seen by this agent: from the origin
