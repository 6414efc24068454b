"""The ``--auth FILE`` of ``krill origin``: users file, access rules, token settings.

The file's shape is fixed by issue 19 (and zot's, which it follows)::

    htpasswd = "/etc/krill/htpasswd"        # bcrypt entries, as `htpasswd -B` writes them
    [[access]]
    repositories = ["public/**"]
    anonymous = ["read"]
    users = { alice = ["read", "write", "delete"] }

Krill adds optional keys with defaults, never changes these: ``token_ttl``
(seconds a Bearer token from ``/auth/token`` is good for), ``token_leeway``
(seconds of clock difference between origin replicas forgiven when a token's
``nbf`` and ``exp`` are checked, 0-300, default 30), ``credential_cache``
(seconds a checked password is remembered, so bcrypt runs once per client
session rather than once per request), ``realm`` (the token endpoint's URL
as clients must see it, when a proxy in front changes the host or scheme)
and ``nodes`` (users of the htpasswd file that are Krill nodes: agents and
trackers, who may use ``/krill/v1/*`` and read any blob by digest; see
docs/security.md for what that lets a node learn).

A relative ``htpasswd`` path is taken from the auth file's directory, so a
Kubernetes Secret mounted as one directory works without absolute paths.
Every mistake is a ``ConfigError`` naming the file and the key, raised at
start-up: an origin that misread its access rules must not start serving.

``token_key_file`` (optional) names a file of HMAC keys for Bearer tokens,
shared by origin replicas so each accepts the others' tokens
(``auth_tokens.TokenKeys``; relative to the auth file like ``htpasswd``).
Without it each process signs with a key of its own.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from krill.config import ConfigError
from krill.origin.auth_rules import AccessPolicy, AccessRule, RepositoryGlob, parse_permissions
from krill.origin.auth_tokens import DEFAULT_LEEWAY, MAX_LEEWAY, TokenKeys

__all__ = ["AuthSettings", "load_auth_settings"]

_TOP_KEYS = {
    "htpasswd",
    "access",
    "token_ttl",
    "token_leeway",
    "credential_cache",
    "realm",
    "nodes",
    "token_key_file",
}
_RULE_KEYS = {"repositories", "anonymous", "users"}


@dataclass(frozen=True)
class AuthSettings:
    """An auth file, read and checked."""

    htpasswd: Path
    policy: AccessPolicy
    # Docker's token server hands out 5-minute tokens; clients fetch a new one on expiry.
    token_ttl: float = 300.0
    # Replicas' clocks may differ by this much (NTP keeps them within milliseconds; a VM resumed
    # from a snapshot or a node without NTP drifts by seconds) without refusing fresh tokens.
    token_leeway: float = DEFAULT_LEEWAY
    # A password change or removed user takes effect within this many seconds.
    credential_cache: float = 60.0
    realm: str | None = None
    # Users that are Krill nodes (agents, trackers): /krill/v1/* and blobs by digest.
    nodes: frozenset[str] = frozenset()
    # Keys shared by origin replicas (token_key_file); None: a key of this process's own.
    token_keys: TokenKeys | None = None


def load_auth_settings(path: Path) -> AuthSettings:
    """Read ``path`` (TOML); ConfigError with the file and key on any mistake."""
    data = _read_toml(path)
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise ConfigError(
            f"{path}: unknown setting(s) {sorted(unknown)} (known: {sorted(_TOP_KEYS)})"
        )
    if not isinstance(data.get("htpasswd"), str):
        raise ConfigError(f'{path}: htpasswd = "FILE" is required (bcrypt entries, htpasswd -B)')
    rules = data.get("access", [])
    if not isinstance(rules, list) or not rules:
        raise ConfigError(
            f"{path}: at least one [[access]] rule is needed (no rule means nobody may do anything)"
        )
    policy = AccessPolicy(_rule(rule, f"{path}: access[{i}]") for i, rule in enumerate(rules))
    return AuthSettings(
        # Absolute, so a message about it names the file read, whatever the working directory.
        htpasswd=(path.parent / data["htpasswd"]).absolute(),
        policy=policy,
        token_ttl=_positive_seconds(data, "token_ttl", 300.0, path),
        token_leeway=_leeway(data.get("token_leeway", DEFAULT_LEEWAY), path),
        credential_cache=_positive_seconds(data, "credential_cache", 60.0, path),
        realm=_optional_url(data.get("realm"), path),
        nodes=_nodes(data.get("nodes", []), path),
        token_keys=_token_keys(data.get("token_key_file"), path),
    )


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read auth file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"auth file {path} is not valid TOML: {exc}") from None


def _rule(table: object, where: str) -> AccessRule:
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where}: expected a table ([[access]])")
    unknown = set(table) - _RULE_KEYS
    if unknown:
        misplaced = sorted(unknown & _TOP_KEYS)
        hint = (
            f"; {', '.join(misplaced)} belong(s) at the top of the file, above the first "
            "[[access]] (TOML puts a key after a table header into that table)"
            if misplaced else ""
        )
        raise ConfigError(
            f"{where}: unknown key(s) {sorted(unknown)} (known: {sorted(_RULE_KEYS)}){hint}"
        )
    patterns = table.get("repositories")
    if not isinstance(patterns, list) or not patterns:
        raise ConfigError(f'{where}: repositories = ["glob", ...] is required')
    names = [_string(p, f"{where}.repositories") for p in patterns]
    try:
        globs = tuple(RepositoryGlob(name) for name in names)
    except ConfigError as exc:
        raise ConfigError(f"{where}.repositories: {exc}") from None
    users = table.get("users", {})
    if not isinstance(users, Mapping):
        raise ConfigError(f'{where}: users must be a table, e.g. users = {{ alice = ["read"] }}')
    return AccessRule(
        repositories=globs,
        anonymous=parse_permissions(
            _list(table.get("anonymous", []), f"{where}.anonymous"), f"{where}.anonymous"
        ),
        users={
            name: parse_permissions(_list(perms, f"{where}.users.{name}"), f"{where}.users.{name}")
            for name, perms in users.items()
        },
    )


def _nodes(value: object, path: Path) -> frozenset[str]:
    where = f"{path}: nodes"
    names = frozenset(_string(name, where) for name in _list(value, where))
    if any(not name or ":" in name for name in names):
        raise ConfigError(f'{where}: node names are htpasswd users, e.g. nodes = ["node1"]')
    return names


def _token_keys(value: object, path: Path) -> TokenKeys | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f'{path}: token_key_file must be a file name, e.g. "token-key"')
    return TokenKeys.load(path.parent / value)


def _string(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def _list(value: object, where: str) -> list[object]:
    if not isinstance(value, list):
        raise ConfigError(f'{where}: expected a list like ["read", "write"], got {value!r}')
    return value


def _positive_seconds(data: Mapping[str, Any], key: str, default: float, path: Path) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"{path}: {key} must be a positive number of seconds, got {value!r}")
    return float(value)


def _leeway(value: object, path: Path) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
        0 <= value <= MAX_LEEWAY
    ):
        raise ConfigError(
            f"{path}: token_leeway must be 0 to {MAX_LEEWAY:g} seconds (the clock difference "
            f"between origin replicas to forgive; keep their clocks in sync with NTP), "
            f"got {value!r}"
        )
    return float(value)


def _optional_url(value: object, path: Path) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise ConfigError(f"{path}: realm must be the token endpoint's http(s) URL, got {value!r}")
    return value
