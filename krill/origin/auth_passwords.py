"""Checking a user's password against an htpasswd file, without paying bcrypt per request.

The file is what ``htpasswd -B`` writes: ``user:$2y$10$...`` lines. Only
bcrypt entries are accepted; the other schemes htpasswd knows (MD5
``$apr1$``, ``{SHA}``, crypt) are fast to brute-force and are refused when
the file is read, with the command that makes a good entry.

bcrypt is slow on purpose (cost 10 measured 0.22 s of CPU per check on the
shared 2-core development machine, and the origin has one event loop), and
clients that send Basic send it on every request: a skopeo push of a
10-layer image makes ~40. So ``PasswordChecker`` remembers
each outcome for ``credential_cache`` seconds, keyed by an HMAC of user and
password under a key made at start (the cache never holds a password, nor a
fast hash one could be brute-forced from), runs bcrypt in a thread so the
loop keeps serving, lets concurrent checks of the same credentials share one
run (``SingleFlight``), and runs at most two at once so a flood of guesses
cannot take every core. An unknown user is checked against a dummy hash of
the file's cost, so response time does not tell which users exist.

The file is read again when it changes (its mtime or size), checked on a
cache miss: rotating a Kubernetes Secret needs no restart. A file that no
longer parses is logged and the previous entries stay in use.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import bcrypt

from krill.clock import Clock
from krill.config import ConfigError
from krill.linefile import colon_lines
from krill.singleflight import SingleFlight

__all__ = ["Htpasswd", "PasswordChecker"]

log = logging.getLogger(__name__)

_BCRYPT_PREFIXES = (b"$2y$", b"$2b$", b"$2a$")
_BCRYPT_LENGTH = 60
_BCRYPT_MAX_PASSWORD = 72  # bcrypt reads no further; htpasswd -B truncates the same way
_CACHE_ENTRIES = 4096
_CONCURRENT_CHECKS = 2


@dataclass(frozen=True)
class Htpasswd:
    """The users of an htpasswd file and their bcrypt hashes."""

    hashes: dict[str, bytes]

    @classmethod
    def load(cls, path: Path) -> Htpasswd:
        """Parse ``path``; ConfigError naming the line for anything but bcrypt entries."""
        hashes: dict[str, bytes] = {}
        expected = "'user:hash' (as htpasswd -B writes)"
        for where, user, hashed in colon_lines(path, "htpasswd file", expected):
            hashes[user] = _bcrypt_hash(hashed.encode(), f"{where} (user {user})")
        return cls(hashes)

    def cost(self) -> int:
        """The highest bcrypt cost in the file (for the unknown-user dummy check)."""
        return max((int(h[4:6]) for h in self.hashes.values()), default=10)


def _bcrypt_hash(hashed: bytes, where: str) -> bytes:
    if not hashed.startswith(_BCRYPT_PREFIXES) or len(hashed) != _BCRYPT_LENGTH:
        raise ConfigError(
            f"{where}: not a bcrypt entry; only bcrypt is accepted (make one with "
            "`htpasswd -B -n USER`, or Python's bcrypt.hashpw)"
        )
    if not hashed[4:6].isdigit():
        raise ConfigError(f"{where}: malformed bcrypt cost {hashed[4:6]!r}")
    return hashed


@dataclass(frozen=True)
class _FileStamp:
    mtime_ns: int
    size: int


def _stamp(path: Path) -> _FileStamp | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return _FileStamp(st.st_mtime_ns, st.st_size)


class PasswordChecker:
    """``await check(user, password)``: True when the htpasswd entry accepts it."""

    def __init__(self, path: Path, *, cache_seconds: float, clock: Clock) -> None:
        self._path = path
        self._stamp = _stamp(path)
        self._htpasswd = Htpasswd.load(path)
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._key = secrets.token_bytes(32)
        self._cache: dict[bytes, tuple[bool, float]] = {}
        self._flights: SingleFlight[bool] = SingleFlight()
        self._slots = asyncio.Semaphore(_CONCURRENT_CHECKS)
        self._dummy: bytes | None = None

    @property
    def users(self) -> frozenset[str]:
        return frozenset(self._htpasswd.hashes)

    async def check(self, user: str, password: str) -> bool:
        """Whether ``password`` is ``user``'s; bcrypt runs at most once per cache period."""
        message = f"{user}\0{password}".encode(errors="surrogateescape")
        key = hmac.new(self._key, message, hashlib.sha256).digest()
        cached = self._cache.get(key)
        now = self._clock.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        return await self._flights.run(key, lambda: self._check_and_remember(key, user, password))

    async def _check_and_remember(self, key: bytes, user: str, password: str) -> bool:
        self._reload_if_changed()
        async with self._slots:
            secret = password.encode(errors="surrogateescape")
            valid = await asyncio.to_thread(self._verify, user, secret)
        if len(self._cache) >= _CACHE_ENTRIES:
            del self._cache[next(iter(self._cache))]  # the oldest: dicts keep insertion order
        self._cache[key] = (valid, self._clock.monotonic() + self._cache_seconds)
        log.log(
            logging.DEBUG if valid else logging.INFO,
            "auth.password_checked user=%r valid=%s",
            user[:64],
            valid,
        )
        return valid

    def _verify(self, user: str, password: bytes) -> bool:
        """bcrypt itself (in a worker thread); unknown users cost the same as known ones."""
        password = password[:_BCRYPT_MAX_PASSWORD]
        hashed = self._htpasswd.hashes.get(user)
        if hashed is None:
            if self._dummy is None:
                self._dummy = bcrypt.hashpw(b"", bcrypt.gensalt(self._htpasswd.cost()))
            bcrypt.checkpw(password, self._dummy)
            return False
        return bcrypt.checkpw(password, hashed)

    def _reload_if_changed(self) -> None:
        stamp = _stamp(self._path)
        if stamp is None or stamp == self._stamp:
            return
        try:
            htpasswd = Htpasswd.load(self._path)
        except ConfigError as exc:
            log.warning("auth.htpasswd_unreadable keeping=previous error=%s", exc)
            return
        self._stamp, self._htpasswd, self._dummy = stamp, htpasswd, None
        self._cache.clear()
        log.info("auth.htpasswd_reloaded users=%d", len(htpasswd.hashes))
