"""Blob upload sessions: a temp file per session, in memory, keyed by a random UUID.

A session streams into a ``BlobWriter`` (hashed as it arrives) and is
published only by the final PUT with a matching digest. Sessions are not
persisted: after a restart the UUID is unknown (``BLOB_UPLOAD_UNKNOWN``), the
client restarts its push, and the store's start-up removed the temp file.

The temp file (a file descriptor) is opened only when the first bytes
arrive, and at most ``max_sessions`` sessions exist at once (more get
``TOOMANYREQUESTS``), so a flood of POSTs cannot exhaust descriptors.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field

from krill.blobstore import BlobStore, BlobWriter
from krill.registry_errors import RegistryError

log = logging.getLogger(__name__)


@dataclass
class UploadSession:
    id: str
    repo: str
    store: BlobStore
    writer: BlobWriter | None = None  # opened with the first bytes
    user: str | None = None  # who began it (signed in), counted against their share
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    touched: float = field(default_factory=time.monotonic)

    @property
    def offset(self) -> int:
        """Bytes received so far; the next chunk must start here."""
        return self.writer.size if self.writer is not None else 0

    def open_writer(self) -> BlobWriter:
        """The session's writer, opening its temp file on first use."""
        if self.writer is None:
            self.writer = self.store.writer()
        return self.writer

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()

    def range_header(self) -> str:
        """The spec's ``Range`` value: inclusive end of what was received (``0-0`` if none)."""
        return f"0-{max(self.offset - 1, 0)}"


class UploadSessions:
    def __init__(self, store: BlobStore, max_sessions: int = 1000) -> None:
        self._store = store
        self._max_sessions = max_sessions
        self._sessions: dict[str, UploadSession] = {}

    def start(self, repo: str, user: str | None = None) -> UploadSession:
        """A new session; 429 when the origin, or this signed-in ``user``, has too many.

        One user may hold a quarter of ``max_sessions``: a writer who opened sessions
        in a loop took every one, and every other user's pushes got 429 (security
        review, stop 39). Anonymous pushers share the whole (an origin without
        --auth lets anyone push anyway, and says so at start).
        """
        if len(self._sessions) >= self._max_sessions:
            raise RegistryError(
                "TOOMANYREQUESTS",
                f"{len(self._sessions)} uploads are in progress, the most this origin allows; "
                "retry later (or raise max_upload_sessions)",
                headers={"Retry-After": "10"},
            )
        if user is not None:
            share = max(1, self._max_sessions // 4)
            held = sum(1 for s in self._sessions.values() if s.user == user)
            if held >= share:
                raise RegistryError(
                    "TOOMANYREQUESTS",
                    f"{user} has {held} uploads in progress, a user's most here (a quarter "
                    "of max_upload_sessions); finish or cancel some, or retry later",
                    headers={"Retry-After": "10"},
                )
        session = UploadSession(str(uuid.uuid4()), repo, self._store, user=user)
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

    def is_current(self, session: UploadSession) -> bool:
        """Whether ``session`` is still in progress (not finished, cancelled or expired)."""
        return self._sessions.get(session.id) is session

    def cancel(self, session: UploadSession) -> None:
        self.finish(session)
        session.abort()

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
