"""A durable, append-only record of where each repository's tags pointed, and when.

Delta precomputation needs "the previous versions of this repository": the
manifests its tags pointed at before. Every tag move (a manifest PUT, an
upstream refresh) and deletion appends one JSON line to
``repositories/<name>/_tag_history.jsonl``::

    {"time": 1700000000.0, "tag": "1.0", "old": "sha256:..." | null, "new": "sha256:..." | null}

``new`` is null when the tag was deleted. Lines are appended with
``O_APPEND`` and fsynced; a torn last line after a crash is skipped on read.

API for other modules (the app holds one ``TagHistory`` under
``origin.appkeys.TAG_HISTORY``):

- ``history(repo) -> list[TagEvent]``: oldest first.
- ``merge(repo, events)``: add moves recorded by another origin on the same
  bucket (``origin.storage_metadata`` publishes each origin's moves there).
- ``previous_manifests(repo, k, exclude=None) -> list[Digest]``: up to ``k``
  distinct manifest digests the repository's tags have pointed at, newest
  first, skipping ``exclude`` (pass the new manifest to get its predecessors).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from krill.digests import Digest, DigestError
from krill.names import validate_name

log = logging.getLogger(__name__)

HISTORY_FILE = "_tag_history.jsonl"


@dataclass(frozen=True, slots=True)
class TagEvent:
    """Tag ``tag`` of ``repo`` moved from ``old`` to ``new`` at ``time`` (Unix seconds)."""

    repo: str
    tag: str
    old: Digest | None
    new: Digest | None
    time: float


class TagHistory:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def _path(self, repo: str) -> Path:
        return self.root / validate_name(repo) / HISTORY_FILE

    def record(
        self, repo: str, tag: str, old: Digest | None, new: Digest | None, when: float | None = None
    ) -> TagEvent:
        event = TagEvent(repo, tag, old, new, time.time() if when is None else when)
        self._append(repo, [event_line(event)])
        log.info("tag.moved repo=%s tag=%s old=%s new=%s", repo, tag, old, new)
        return event

    def merge(self, repo: str, events: list[TagEvent]) -> int:
        """Add moves recorded elsewhere (another origin on the bucket) that this history
        lacks; return how many. ``history`` orders by time, so they may arrive late."""
        known = {_identity(e) for e in self.history(repo)}
        new = [e for e in events if _identity(e) not in known]
        if new:
            self._append(repo, [event_line(e) for e in new])
        return len(new)

    def _append(self, repo: str, lines: list[str]) -> None:
        path = self._path(repo)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, "".join(line + "\n" for line in lines).encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def history(self, repo: str) -> list[TagEvent]:
        """Every recorded move of ``repo``'s tags, oldest first."""
        try:
            lines = self._path(repo).read_text().splitlines()
        except FileNotFoundError:
            return []
        events = []
        for line in lines:
            event = parse_event(repo, line)
            if event is not None:
                events.append(event)
        return sorted(events, key=lambda e: e.time)  # stable: equal times keep file order

    def last_event(self, repo: str, tag: str) -> TagEvent | None:
        """The latest recorded move of ``repo:tag`` (None if it never moved)."""
        mine = [e for e in self.history(repo) if e.tag == tag]
        return mine[-1] if mine else None

    def previous_manifests(self, repo: str, k: int, exclude: Digest | None = None) -> list[Digest]:
        """Up to ``k`` distinct manifests ``repo``'s tags pointed at, newest first."""
        seen: list[Digest] = []
        for event in reversed(self.history(repo)):
            for digest in (event.new, event.old):
                if digest is not None and digest != exclude and digest not in seen:
                    seen.append(digest)
            if len(seen) >= k:
                break
        return seen[:k]


def event_line(event: TagEvent) -> str:
    """The JSON line an event is stored as (in the history file, and in the bucket)."""
    old, new = event.old, event.new
    return json.dumps(
        {
            "time": event.time,
            "tag": event.tag,
            "old": str(old) if old else None,
            "new": str(new) if new else None,
        }
    )


def _identity(event: TagEvent) -> tuple[float, str, Digest | None, Digest | None]:
    return (event.time, event.tag, event.old, event.new)


def parse_event(repo: str, line: str) -> TagEvent | None:
    """An event from its JSON line; None (logged) for a torn or foreign line."""
    try:
        obj = json.loads(line)
        return TagEvent(
            repo,
            str(obj["tag"]),
            Digest.parse(obj["old"]) if obj.get("old") else None,
            Digest.parse(obj["new"]) if obj.get("new") else None,
            float(obj["time"]),
        )
    except (ValueError, KeyError, TypeError, DigestError):
        log.warning("tag.history_line_skipped repo=%s line=%r", repo, line[:200])
        return None
