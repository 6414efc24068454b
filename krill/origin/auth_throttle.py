"""Back-off on password guessing: failed sign-ins per (user, client address).

bcrypt makes each guess cost the origin 0.2 s of CPU and at most two run at
once (``auth_passwords``), but that alone lets a client try a password every
0.1 s forever. ``LoginThrottle`` counts failed password checks per user and
client address: the first ``free_failures`` cost nothing extra, and each
further failure blocks that user from that address for twice as long as the
last (1 s, 2 s, 4 s, ... up to ``max_backoff``). While blocked, every
password for that user from that address, the right one included, gets 429
``TOOMANYREQUESTS`` with ``Retry-After`` (distribution spec) *before* bcrypt
runs: answering a right password during a block would tell the guesser it was
right. A successful sign-in clears the count; an entry with no failure for
``forget_after`` seconds is forgotten.

Per user *and* address, not per address alone: in a cluster many pods and
nodes reach the origin from one SNAT address, and one misconfigured client
must not lock everyone else out. Per address alone would let one guesser
lock a user out from everywhere. Memory is bounded (``max_entries``, the
least recently failed dropped first); a guesser who floods it with other
user names to push its own entry out pays a bcrypt check for each of them.

Time comes from an injected ``krill.clock.Clock``, so tests step through a
five-minute back-off without waiting.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from dataclasses import dataclass

from aiohttp import hdrs

from krill.clock import Clock
from krill.registry_errors import RegistryError

__all__ = ["LoginThrottle", "too_many_attempts"]

log = logging.getLogger(__name__)

_USER_KEY_CHARS = 128  # a user name longer than any real one still makes a bounded key


@dataclass
class _Failures:
    count: int
    last: float  # when the last failure was recorded
    blocked_until: float


class LoginThrottle:
    """``retry_after`` before a password check, ``failed``/``succeeded`` after it."""

    def __init__(
        self,
        clock: Clock,
        *,
        free_failures: int = 5,
        first_backoff: float = 1.0,
        max_backoff: float = 300.0,
        forget_after: float = 900.0,
        max_entries: int = 10_000,
    ) -> None:
        self._clock = clock
        self._free = free_failures
        self._first = first_backoff
        self._max = max_backoff
        self._forget = max(forget_after, max_backoff)
        self._max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str], _Failures] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def retry_after(self, user: str, address: str) -> float | None:
        """Seconds until ``user`` may try a password from ``address`` again; None: now."""
        entry = self._entries.get(_key(user, address))
        if entry is None:
            return None
        wait = entry.blocked_until - self._clock.monotonic()
        return wait if wait > 0 else None

    def failed(self, user: str, address: str) -> None:
        now = self._clock.monotonic()
        self._drop_stale(now)
        key = _key(user, address)
        entry = self._entries.pop(key, None)
        if entry is None or now - entry.last > self._forget:
            entry = _Failures(0, now, now)
        entry.count += 1
        entry.last = now
        beyond = entry.count - self._free
        if beyond > 0:
            backoff = min(self._first * 2 ** min(beyond - 1, 32), self._max)
            entry.blocked_until = now + backoff
            log.warning(
                "auth.login_throttled user=%r client=%s failures=%d retry_after=%.0f",
                key[0],
                address,
                entry.count,
                backoff,
            )
        self._entries[key] = entry  # the most recently failed goes last
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def succeeded(self, user: str, address: str) -> None:
        self._entries.pop(_key(user, address), None)

    def _drop_stale(self, now: float) -> None:
        """Forget entries whose last failure is ``forget_after`` old (oldest first)."""
        while self._entries:
            oldest = next(iter(self._entries.values()))
            if now - oldest.last <= self._forget:
                return
            self._entries.popitem(last=False)


def too_many_attempts(retry_after: float) -> RegistryError:
    """429 TOOMANYREQUESTS with ``Retry-After`` in whole seconds (at least 1)."""
    seconds = max(1, math.ceil(retry_after))
    return RegistryError(
        "TOOMANYREQUESTS",
        f"too many failed password attempts for this user from this address: retry in {seconds} s",
        headers={hdrs.RETRY_AFTER: str(seconds)},
    )


def _key(user: str, address: str) -> tuple[str, str]:
    return user[:_USER_KEY_CHARS], address
