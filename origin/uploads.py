"""Blob upload sessions: a temp file per session, in memory, keyed by a random UUID.

A session streams into a ``BlobWriter`` (hashed as it arrives) and is
published only by the final PUT with a matching digest. Sessions are not
persisted: after a restart the UUID is unknown (``BLOB_UPLOAD_UNKNOWN``), the
client restarts its push, and the store's start-up removed the temp file.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field

from krill.blobstore import BlobStore, BlobWriter

log = logging.getLogger(__name__)


@dataclass
class UploadSession:
    id: str
    repo: str
    writer: BlobWriter
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    touched: float = field(default_factory=time.monotonic)

    @property
    def offset(self) -> int:
        """Bytes received so far; the next chunk must start here."""
        return self.writer.size

    def range_header(self) -> str:
        """The spec's ``Range`` value: inclusive end of what was received (``0-0`` if none)."""
        return f"0-{max(self.offset - 1, 0)}"


class UploadSessions:
    def __init__(self, store: BlobStore) -> None:
        self._store = store
        self._sessions: dict[str, UploadSession] = {}

    def start(self, repo: str) -> UploadSession:
        session = UploadSession(str(uuid.uuid4()), repo, self._store.writer())
        self._sessions[session.id] = session
        log.debug("upload.started repo=%s id=%s", repo, session.id)
        return session

    def get(self, repo: str, session_id: str) -> UploadSession | None:
        """The session, only if it belongs to ``repo``."""
        session = self._sessions.get(session_id)
        if session is None or session.repo != repo:
            return None
        session.touched = time.monotonic()
        return session

    def finish(self, session: UploadSession) -> None:
        """Forget a session (its writer committed or must be aborted by the caller)."""
        self._sessions.pop(session.id, None)

    def cancel(self, session: UploadSession) -> None:
        self.finish(session)
        session.writer.abort()

    def expire(self, idle_seconds: float) -> int:
        """Abort sessions idle longer than ``idle_seconds`` (not those mid-request)."""
        now = time.monotonic()
        stale = [
            s
            for s in self._sessions.values()
            if now - s.touched > idle_seconds and not s.lock.locked()
        ]
        for session in stale:
            log.info(
                "upload.expired repo=%s id=%s bytes=%d", session.repo, session.id, session.offset
            )
            self.cancel(session)
        return len(stale)

    def close(self) -> None:
        for session in list(self._sessions.values()):
            self.cancel(session)

    def __len__(self) -> int:
        return len(self._sessions)
