"""Reads through an agent without node credentials: what anonymous may read, checked.

Such an agent fetches only as anonymous, so it used to serve whatever reached
its cache without asking. But blobs also reach it through the swarm: the
tracker hands out any blob's metainfo and peers send pieces to whoever asks,
so a private layer that another node pulled could arrive here and be served to
any client who names its digest (security review, stop 39).

So while the origin asks for credentials (``HEAD /v2/`` without any is 401),
this agent asks the origin, as anonymous, about each manifest and blob before
serving it (``agent.access``: the same decisions, kept for the same ttl), and
a private one gets the origin's 401 passed on. An origin that reads for anyone
(``/v2/`` is 200) needs no checks, and none are made: the herd's pulls cost
the origin nothing more. Whether the origin is open is asked again every
``recheck`` seconds and kept in ``<data>/origin-access``, so an agent that
restarts while its origin is down still knows; never having known, it checks
(an outage never opens a private repository).
"""

from __future__ import annotations

import enum
import logging
from pathlib import Path

import aiohttp

from krill.agent.access import AccessDecision, RepositoryAccess
from krill.atomicfile import write_atomic
from krill.clock import SYSTEM_CLOCK, Clock
from krill.clock import timeout as clock_timeout
from krill.errortext import error_text
from krill.originclient import OriginClient

__all__ = ["AnonymousReads", "OriginAccess"]

log = logging.getLogger(__name__)


class OriginAccess(enum.Enum):
    """What ``HEAD /v2/`` without credentials said about the origin."""

    OPEN = "open"  # 200 (or no 401): anyone may read
    CLOSED = "closed"  # 401: credentials are asked for, some repositories may be private


class AnonymousReads:
    """Anonymous access decisions, asked of the origin only while it is not open."""

    def __init__(
        self,
        origin: OriginClient,
        state_file: Path,
        *,
        timeout: float,
        recheck: float = 60.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._origin = origin
        self._state_file = state_file
        self._timeout = timeout
        self._recheck = recheck
        self._clock = clock
        self._decisions = RepositoryAccess(origin, timeout=timeout, clock=clock)
        self._known = _read_state(state_file)
        self._asked_at: float | None = None

    async def manifest(self, repository: str, reference: str) -> AccessDecision | None:
        """The origin's anonymous decision, or None: the origin is open, nothing to check."""
        if await self._origin_access() is OriginAccess.OPEN:
            return None
        return await self._decisions.manifest(repository, reference, None)

    async def blob(self, repository: str, digest: str) -> AccessDecision | None:
        """As ``manifest``, for a blob."""
        if await self._origin_access() is OriginAccess.OPEN:
            return None
        return await self._decisions.blob(repository, digest, None)

    async def _origin_access(self) -> OriginAccess:
        now = self._clock.monotonic()
        if self._asked_at is None or now - self._asked_at >= self._recheck:
            self._asked_at = now
            answer = await self._ask()
            if answer is not None and answer is not self._known:
                log.info("agent.origin_access origin=%s access=%s", self._origin.base_url,
                         answer.value)  # fmt: skip
                self._known = answer
                _write_state(self._state_file, answer)
        return self._known or OriginAccess.CLOSED

    async def _ask(self) -> OriginAccess | None:
        if not self._origin.configured:
            return None
        try:
            async with clock_timeout(self._clock, self._timeout):
                status, _ = await self._origin.head(f"{self._origin.base_url}/v2/")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("agent.origin_access_unknown error=%r", error_text(exc))
            return None
        # Only a 401 asks for credentials; a registry that answers /v2/ otherwise (200, or
        # a server with no such route) lets anyone read what it serves.
        return OriginAccess.CLOSED if status == 401 else OriginAccess.OPEN


def _read_state(path: Path) -> OriginAccess | None:
    try:
        return OriginAccess(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _write_state(path: Path, access: OriginAccess) -> None:
    try:
        write_atomic(path, access.value + "\n")
    except OSError as exc:  # a full disk: known in memory, asked again after a restart
        log.warning("agent.origin_access_not_saved path=%s error=%r", path, error_text(exc))
