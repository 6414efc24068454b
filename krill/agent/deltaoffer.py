"""The origin's answer to a delta lookup, read strictly: what a node may rebuild from.

``GET /krill/v1/deltas/<layer>?have=<bases>`` answers JSON (``origin.deltas``):
``{"status": "ok", "target", "base", "delta", "size", ...}`` or ``{"status":
"none", ...}``. Anything else, or an answer that does not fit the question (another
target, a base not offered, a size that is not a positive integer), is a failed
lookup: the layer is fetched whole. ``origin_json`` also reads the image configs
the delta path needs (for the layer's diff_id).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from krill.digests import Digest, DigestError
from krill.oci import nesting_depth

__all__ = ["MAX_JSON_DEPTH", "DeltaMiss", "DeltaOffer", "Miss", "origin_json", "parse_offer"]

# JSON from the origin (image configs, delta offers) nests a handful of levels;
# json.loads recurses per level, so a hostile origin's 100,000 "[" would be a
# RecursionError in the agent. Depth is measured (oci.nesting_depth) first.
MAX_JSON_DEPTH = 64


class Miss(StrEnum):
    """Why no delta was tried (the ``krill_agent_delta_misses_total`` label)."""

    NOT_A_LAYER = "not_a_layer"
    NO_BASE = "no_base"
    LOOKUP_FAILED = "lookup_failed"
    NONE = "none"  # the origin has none yet (the lookup queued one)
    NO_CONFIG = "no_config"


@dataclass(frozen=True, slots=True)
class DeltaOffer:
    """The origin's answer: rebuild ``target`` from ``base`` with blob ``delta``."""

    target: Digest
    base: Digest
    delta: Digest
    size: int


class DeltaMiss(Exception):
    """No delta to try; ``reason`` labels the miss metric."""

    def __init__(self, reason: Miss, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def origin_json(body: bytes) -> Any:
    """``body`` decoded as JSON; ValueError past ``MAX_JSON_DEPTH`` levels, never RecursionError."""
    depth = nesting_depth(body)
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"JSON nests {depth} levels deep, over the limit of {MAX_JSON_DEPTH}")
    return json.loads(body)


def parse_offer(body: bytes, target: Digest, bases: list[Digest]) -> DeltaOffer:
    """Check the origin's JSON answer; anything off counts as a failed lookup."""
    try:
        doc = origin_json(body)
        status = doc["status"]
        if status == "none":
            raise DeltaMiss(Miss.NONE, f"no delta yet (queued {doc.get('queued', 0)})")
        if status != "ok":
            raise ValueError(f"status {status!r}")
        offer = DeltaOffer(
            Digest.parse(doc["target"]),
            Digest.parse(doc["base"]),
            Digest.parse(doc["delta"]),
            _json_int(doc["size"]),
        )
    except (ValueError, KeyError, TypeError, DigestError) as exc:
        raise DeltaMiss(Miss.LOOKUP_FAILED, f"unreadable delta answer: {exc!r}") from None
    if offer.target != target or offer.base not in bases or offer.size <= 0:
        unfit = f"delta answer does not fit the request: {str(doc)[:500]}"
        raise DeltaMiss(Miss.LOOKUP_FAILED, unfit)
    return offer


def _json_int(value: object) -> int:
    """A JSON integer; TypeError for anything else (int() would take "10", 1.5 and True,
    and raise OverflowError for Infinity)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r:.40}")
    return value
