"""The bucket's delta index objects: their names, their format, and the deltas they keep.

``deltas/index/<target hex>.json`` holds, like the local ``DeltaIndex`` file,
base digest -> outcome for one target layer (``origin.storage_deltas``
writes and reads them). The bucket's collection (``origin.storage_gc``)
keeps a delta whose target and base it keeps, as the local collection does.
"""

from __future__ import annotations

import json
from typing import Any

from krill.digests import Digest, DigestError
from krill.s3backend import S3Backend

__all__ = ["INDEX_PREFIX", "delta_of", "index_key", "live_deltas", "parse_index"]

INDEX_PREFIX = "deltas/index/"


def index_key(target: Digest) -> str:
    return f"{INDEX_PREFIX}{target.hex}.json"


def parse_index(data: bytes | None) -> dict[str, dict[str, Any]]:
    try:
        doc = json.loads(data or b"{}")
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def delta_of(entry: dict[str, Any]) -> Digest | None:
    if entry.get("status") != "ok":
        return None
    try:
        return Digest.parse(str(entry.get("delta")))
    except DigestError:
        return None


async def live_deltas(backend: S3Backend, live: set[Digest]) -> set[Digest]:
    """The deltas the bucket's index keeps: target and base both live (for its collection)."""
    kept: set[Digest] = set()
    async for listed in backend.list_objects(INDEX_PREFIX):
        name = listed.key.rsplit("/", 1)[-1].removesuffix(".json")
        try:
            target = Digest.parse("sha256:" + name)
        except DigestError:
            continue
        if target not in live:
            continue
        doc = parse_index(await backend.get_object(index_key(target)))
        for base, entry in doc.items():
            delta = delta_of(entry)
            try:
                base_live = Digest.parse(base) in live
            except DigestError:
                continue
            if delta is not None and base_live:
                kept.add(delta)
    return kept
