"""Properties of the agent's reading of the origin's JSON (krill/agent/deltas.py).

A hostile or broken origin must not crash the agent: any bytes as a delta
lookup answer give a ``DeltaOffer`` that fits the request or a ``DeltaMiss``
(the agent then fetches the layer whole), never another exception; JSON that
nests past ``MAX_JSON_DEPTH`` is refused before ``json.loads`` could recurse
into a RecursionError.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from krill.agent.deltas import MAX_JSON_DEPTH, DeltaMiss, DeltaOffer, Miss, origin_json, parse_offer
from krill.digests import Digest

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TARGET = Digest.parse("sha256:" + "1" * 64)
BASE = Digest.parse("sha256:" + "2" * 64)
DELTA = Digest.parse("sha256:" + "3" * 64)
OFFER = {"status": "ok", "target": str(TARGET), "base": str(BASE), "delta": str(DELTA),
         "size": 10}

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
offer_fields = st.sampled_from(sorted(OFFER))


def offer_or_miss(body: bytes) -> DeltaOffer | None:
    """The contract: an offer that fits the request, or DeltaMiss (anything else fails)."""
    try:
        offer = parse_offer(body, TARGET, [BASE])
    except DeltaMiss as miss:
        assert miss.reason in (Miss.LOOKUP_FAILED, Miss.NONE)
        return None
    assert (offer.target, offer.base) == (TARGET, BASE)
    assert offer.size > 0
    return offer


@PROPERTY
@given(st.binary(max_size=300))
def test_any_bytes_are_an_offer_or_a_miss(body: bytes) -> None:
    offer_or_miss(body)


@PROPERTY
@given(json_values)
def test_any_json_value_is_an_offer_or_a_miss(value: Any) -> None:
    offer_or_miss(json.dumps(value).encode())


@PROPERTY
@given(offer_fields, json_values)
def test_an_offer_with_one_field_replaced_is_an_offer_or_a_miss(field: str, value: Any) -> None:
    offer_or_miss(json.dumps({**OFFER, field: value}).encode())


def test_the_real_offer_is_taken() -> None:
    assert offer_or_miss(json.dumps(OFFER).encode()) == DeltaOffer(TARGET, BASE, DELTA, 10)


@pytest.mark.parametrize("opener", [b"[", b'{"a":'])
@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 5_000, 100_000])
def test_deep_nesting_is_a_miss_not_a_recursion_error(opener: bytes, depth: int) -> None:
    closer = b"]" if opener == b"[" else b"}"
    assert offer_or_miss(opener * depth + b"1" + closer * depth) is None
    assert offer_or_miss(b'{"status": "ok", "x": ' + b"[" * depth + b"]" * depth + b"}") is None


def test_nesting_up_to_the_limit_is_decoded() -> None:
    body = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    assert origin_json(body) is not None
    with pytest.raises(ValueError, match="over the limit"):
        origin_json(b"[" + body + b"]")
