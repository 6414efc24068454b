"""What the delta pipeline found for each pair, kept on disk across restarts.

Per target layer, one small JSON file maps each base digest tried to its
outcome: ``{"status": "ok", "delta", "size", "format"}`` or
``{"status": "none", "reason": <DeltaOutcome value>}``. Failures are kept too,
so a pair is not recomputed on every lookup. Files are written atomically
and fsynced, so a crash leaves the previous index, never half of one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from krill.atomicfile import write_atomic
from krill.digests import Digest

__all__ = ["DeltaIndex"]


class DeltaIndex:
    """Per target layer: base digest -> outcome, one small JSON file per target."""

    def __init__(self, root: Path) -> None:
        self.root = root
        # Told of each outcome recorded (in the recording thread): an origin on a
        # bucket shares them with the other origins (origin.storage_deltas).
        self.on_record: Callable[[Digest, Digest, dict[str, Any]], None] | None = None

    def _path(self, target: Digest) -> Path:
        return self.root / f"{target.hex}.json"

    def entries(self, target: Digest) -> dict[str, dict[str, Any]]:
        try:
            doc = json.loads(self._path(target).read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def record(
        self, target: Digest, base: Digest, entry: dict[str, Any], share: bool = True
    ) -> None:
        """Add one outcome (blocking, fsynced: call off the event loop); ``share=False``
        for one adopted from elsewhere (``on_record`` is not told)."""
        doc = self.entries(target)
        doc[str(base)] = entry
        write_atomic(self._path(target), json.dumps(doc, sort_keys=True).encode())
        if share and self.on_record is not None:
            self.on_record(target, base, entry)
