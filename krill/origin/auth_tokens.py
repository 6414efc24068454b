"""Bearer tokens for the distribution token flow: scopes asked for, access granted, signed.

Clients (skopeo, containerd, docker) that meet ``WWW-Authenticate: Bearer
realm=...,service=...,scope=...`` ask the realm for a token with the scopes
they need, ``repository:NAME:pull,push`` (and ``registry:catalog:*`` for the
catalog), sending Basic credentials if they have any, and then send
``Authorization: Bearer TOKEN`` instead of a password. Per the token spec
the server grants the subset of the asked-for actions the caller may have;
a client that gets less than it asked for finds out from the 401/403 on use.

A token here is ``krill.<payload>.<signature>``: the payload (subject, the
granted access, an expiry) as base64url JSON, signed with HMAC-SHA256. The
token is opaque to clients (the spec does not ask them to read it), so it
needs no JWT machinery: only origins read it. The key is either made when
the process starts (a restart invalidates every token; clients fetch a new
one on the 401) or read from the auth file's ``token_key_file``, which
origin replicas behind one address share so that a token one issued is
accepted by the others (``TokenKeys``: the first key signs, every key in the
file verifies, so a key can be rotated without a flag day).

The times in a token (``nbf``, not before, and ``iat``, issued at: the
moment it was signed; ``exp``, its expiry) are Unix times, since replicas
compare them on their own clocks, but they are read from the origin's
monotonic clock (``krill.clock``) anchored to the wall clock once at start:
a wall-clock step after start neither revives nor kills tokens, and tests
move time with a clock they step by hand.

Replicas' clocks differ. A replica checks ``nbf`` and ``exp`` with a bounded
``leeway`` (``token_leeway`` in the auth file, 30 s by default, at most
``MAX_LEEWAY``): a token signed by a replica whose clock runs up to that far
ahead is accepted at once, not refused as "not yet valid" (nor, without the
``nbf`` check, accepted for as long as the skew), and one that expired up to
that long ago by this replica's clock is still accepted. Beyond the leeway a
token is refused (401 ``invalid_token``; a token from too far in the future
is logged with the skew), so a replica hours off shows up at once rather than
as tokens living hours longer
(tests/test_origin_auth_skew.py runs replicas under libfaketime). Tokens
from before ``nbf`` existed carry only ``exp`` and are checked on it alone.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from krill.clock import Clock
from krill.config import ConfigError
from krill.names import is_valid_name
from krill.origin.auth_rules import ALL_PERMISSIONS, AccessPolicy, Permission

__all__ = [
    "CATALOG_SCOPE",
    "DEFAULT_LEEWAY",
    "MAX_LEEWAY",
    "SERVICE",
    "TOKEN_PATH",
    "Grant",
    "IssuedToken",
    "RequestedScopes",
    "TokenIssuer",
    "TokenKeys",
    "actions_of",
    "parse_scopes",
]

SERVICE = "krill"  # the challenge's service=, which clients send back to the token endpoint
TOKEN_PATH = "/auth/token"
CATALOG_SCOPE = "registry:catalog:*"
_ACTION_PERMISSIONS: dict[str, frozenset[Permission]] = {
    "pull": frozenset({Permission.READ}),
    "push": frozenset({Permission.WRITE}),
    "delete": frozenset({Permission.DELETE}),
    "*": ALL_PERMISSIONS,
}
_PERMISSION_ACTIONS = {
    Permission.READ: "pull",
    Permission.WRITE: "push",
    Permission.DELETE: "delete",
}
log = logging.getLogger(__name__)

_TOKEN_PREFIX = "krill."
_MAX_TOKEN_CHARS = 16 * 1024
# A shared key is a line of text; 32 characters of `openssl rand -hex 32` is 128 bits at least.
_MIN_KEY_CHARS = 32
_MAX_KEYS = 16
# Seconds of clock difference between replicas a token check forgives (token_leeway).
DEFAULT_LEEWAY = 30.0
MAX_LEEWAY = 300.0


def actions_of(permissions: Iterable[Permission]) -> list[str]:
    """Permissions as the token spec's action names, in a stable order."""
    return sorted(_PERMISSION_ACTIONS[p] for p in permissions)


@dataclass(frozen=True)
class RequestedScopes:
    """What a token request asked for: permissions per repository, and the catalog."""

    repositories: Mapping[str, frozenset[Permission]] = field(default_factory=dict)
    catalog: bool = False


def parse_scopes(values: Iterable[str]) -> RequestedScopes:
    """The ``scope`` parameters of a token request (each may hold several, space-separated).

    A scope is ``TYPE:NAME:ACTIONS``; NAME is what lies between the first and
    the last colon. Scopes that are malformed, of another type, or that name
    an invalid repository are skipped: the spec says to grant what can be
    granted, and nothing can be granted on those.
    """
    repositories: dict[str, frozenset[Permission]] = {}
    catalog = False
    for value in values:
        for scope in value.split():
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if scope == CATALOG_SCOPE:
                catalog = True
            elif kind == "repository" and is_valid_name(name):
                wanted = frozenset().union(
                    *(_ACTION_PERMISSIONS.get(a, frozenset()) for a in actions.split(","))
                )
                repositories[name] = repositories.get(name, frozenset()) | wanted
    return RequestedScopes(repositories, catalog)


@dataclass(frozen=True)
class Grant:
    """Who a token speaks for and what it lets them do."""

    subject: str | None  # None: an anonymous token
    access: Mapping[str, frozenset[Permission]] = field(default_factory=dict)
    catalog: bool = False

    @classmethod
    def for_request(cls, policy: AccessPolicy, user: str | None, asked: RequestedScopes) -> Grant:
        """The subset of ``asked`` that ``policy`` lets ``user`` have (the spec's rule)."""
        access = {
            repo: wanted & policy.permissions(repo, user)
            for repo, wanted in asked.repositories.items()
        }
        # The catalog is filtered to what the subject may read, so anyone may ask for it.
        return cls(user, {r: p for r, p in access.items() if p}, asked.catalog)

    def allows(self, repository: str, needed: Permission) -> bool:
        return needed in self.access.get(repository, frozenset())

    def as_claims(self) -> list[dict[str, object]]:
        """The token spec's ``access`` list (what ``/auth/token`` logs and tests read)."""
        claims: list[dict[str, object]] = [
            {"type": "repository", "name": repo, "actions": actions_of(perms)}
            for repo, perms in sorted(self.access.items())
        ]
        if self.catalog:
            claims.append({"type": "registry", "name": "catalog", "actions": ["*"]})
        return claims


@dataclass(frozen=True)
class IssuedToken:
    token: str
    expires_in: int


@dataclass(frozen=True)
class TokenKeys:
    """HMAC keys: the first signs new tokens, any of them verifies a token."""

    keys: tuple[bytes, ...] = field(repr=False)  # secrets: never in a log line or a repr

    @classmethod
    def random(cls) -> TokenKeys:
        """A key for this process alone (no ``token_key_file``)."""
        return cls((secrets.token_bytes(32),))

    @classmethod
    def load(cls, path: Path) -> TokenKeys:
        """The keys in ``path``: one per line, ``#`` comments; ConfigError naming the line."""
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError(f"cannot read token_key_file {path}: {reason}") from None
        keys: list[bytes] = []
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if len(line) < _MIN_KEY_CHARS:
                # Never quote the line: it is (a piece of) a secret.
                raise ConfigError(
                    f"{path}:{number}: a token key needs at least {_MIN_KEY_CHARS} characters "
                    "(make one with `openssl rand -hex 32`)"
                )
            keys.append(line.encode())
        if not keys or len(keys) > _MAX_KEYS:
            raise ConfigError(
                f"{path}: expected 1 to {_MAX_KEYS} keys, one per line (the first signs new "
                "tokens; the others are still accepted while a new key rolls out)"
            )
        return cls(tuple(keys))


class TokenIssuer:
    """Signs grants into tokens and reads them back, with ``keys``."""

    def __init__(
        self,
        ttl: float,
        clock: Clock,
        keys: TokenKeys | None = None,
        *,
        wall: float | None = None,
        leeway: float = 0.0,
    ) -> None:
        """``wall``: the Unix time at ``clock``'s present reading (now, unless a test says);
        ``leeway``: seconds of clock difference forgiven on ``nbf`` and ``exp``."""
        if not 0 <= leeway <= MAX_LEEWAY:
            raise ValueError(f"token leeway must be 0-{MAX_LEEWAY:g} s, got {leeway!r}")
        self._ttl = ttl
        self._leeway = leeway
        self._clock = clock
        self._keys: Sequence[bytes] = (keys or TokenKeys.random()).keys
        start = time.time() if wall is None else wall
        self._wall_offset = start - clock.monotonic()

    def now(self) -> float:
        """Unix time, as the monotonic clock has advanced since start."""
        return self._clock.monotonic() + self._wall_offset

    def issue(self, grant: Grant) -> IssuedToken:
        now = self.now()
        payload = {
            "sub": grant.subject,
            "nbf": now,
            "iat": now,
            "exp": now + self._ttl,  # a float: JSON carries it exactly
            "access": {repo: actions_of(perms) for repo, perms in grant.access.items()},
            "catalog": grant.catalog,
        }
        body = _b64encode(json.dumps(payload, separators=(",", ":")).encode())
        token = f"{_TOKEN_PREFIX}{body}.{_b64encode(_sign(self._keys[0], body))}"
        return IssuedToken(token, int(self._ttl))

    def verify(self, token: str) -> Grant | None:
        """The grant a token carries; None if it is forged, malformed, expired or not yet valid
        (by this replica's clock, give or take the leeway)."""
        if len(token) > _MAX_TOKEN_CHARS or not token.startswith(_TOKEN_PREFIX):
            return None
        body, _, signature = token.removeprefix(_TOKEN_PREFIX).partition(".")
        try:
            mac = _b64decode(signature)
            # Every key is tried (no early exit), so timing tells nothing about which matched.
            matches = [hmac.compare_digest(mac, _sign(key, body)) for key in self._keys]
            if not any(matches):
                return None
            payload = json.loads(_b64decode(body))
        except (ValueError, binascii.Error):
            return None
        now = self.now()
        if payload["exp"] + self._leeway <= now:
            return None
        not_before = payload.get("nbf")
        if not_before is not None and not_before - self._leeway > now:
            # Signed with a shared key, so by a replica: whose clock is ahead of this one's.
            log.warning(
                "origin.token_from_the_future ahead_s=%.1f leeway_s=%g: a replica sharing "
                "token_key_file signs with a clock this far ahead of ours; sync the replicas' "
                "clocks (NTP) or raise token_leeway",
                not_before - now, self._leeway,
            )  # fmt: skip
            return None
        access = {
            repo: frozenset().union(*(_ACTION_PERMISSIONS[a] for a in actions))
            for repo, actions in payload["access"].items()
        }
        return Grant(payload["sub"], access, payload["catalog"])


def _sign(key: bytes, body: str) -> bytes:
    return hmac.new(key, body.encode(), hashlib.sha256).digest()


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
