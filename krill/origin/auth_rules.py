"""Who may do what to which repository: globs, access rules, and the decision they give.

The model is zot's access control: rules hold repository globs, the
permissions anonymous callers get, and the permissions named users get. The
*first* rule whose glob matches a repository is the one that applies (so a
specific rule goes above a broad one), and a repository no rule matches is
open to nobody. A named user also gets the rule's anonymous permissions:
signing in never leaves someone with less than an anonymous caller has.

Globs are matched against whole repository names: ``*`` stands for any run
of characters within one path segment (no ``/``), ``**`` for any run across
segments (``/`` included, possibly empty). So ``public/**`` matches
``public/a`` and ``public/a/b`` but not ``public`` itself, and
``team/*/app`` matches ``team/x/app`` but not ``team/x/y/app``. Nothing
else is special; repository names have no other characters a glob could
mean, so anything else in a glob is refused when the file is read.

``AccessPolicy.decide`` answers with a ``Decision`` rather than a bool
because the HTTP answer differs: a caller who has not signed in is asked to
(401 with a challenge), one who has and still may not is refused (403).
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from krill.config import ConfigError

__all__ = [
    "ALL_PERMISSIONS",
    "AccessPolicy",
    "AccessRule",
    "Decision",
    "Permission",
    "RepositoryGlob",
    "parse_permissions",
]


class Permission(enum.Enum):
    """What a caller may do to a repository (the names the auth file uses)."""

    READ = "read"  # pull: manifests, blobs, tags, referrers
    WRITE = "write"  # push: uploads, mounts, manifest and tag puts
    DELETE = "delete"  # delete manifests, tags and blob links


ALL_PERMISSIONS = frozenset(Permission)


class Decision(enum.Enum):
    """What to answer a request, given who asks and what it needs."""

    ALLOWED = "allowed"
    UNAUTHENTICATED = "unauthenticated"  # anonymous and not enough: 401, ask for credentials
    DENIED = "denied"  # signed in and still not allowed: 403 DENIED


_GLOB_TOKEN = re.compile(r"\*\*|\*|[^*]+")
_GLOB_LITERAL = re.compile(r"[a-z0-9._/-]+")
_ANY_DEPTH = "**"  # a token of a compiled glob; every other token is one character or "*"
_ONE_SEGMENT = "*"


@dataclass(frozen=True)
class RepositoryGlob:
    """One repository pattern from an ``[[access]]`` rule, compiled once.

    Matching walks the pattern as a set of positions (an NFA), one step per
    character of the name: time linear in the name whatever the glob. A
    regex (``.*a.*a.*b``) backtracks instead, and an attacker picks the
    name: one 255-character name took a second against ``*a*a*a*b``.
    """

    pattern: str
    _tokens: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_tokens", _glob_tokens(self.pattern))

    def matches(self, repository: str) -> bool:
        tokens = self._tokens
        positions = self._skip_wildcards({0})
        for char in repository:
            following = set()
            for i in positions:
                if i == len(tokens):
                    continue
                token = tokens[i]
                if token == _ANY_DEPTH or (token == _ONE_SEGMENT and char != "/"):
                    following.add(i)
                elif token == char:
                    following.add(i + 1)
            if not following:
                return False
            positions = self._skip_wildcards(following)
        return len(tokens) in positions

    def _skip_wildcards(self, positions: set[int]) -> set[int]:
        """Add the positions reached by letting wildcards match nothing."""
        reached = set(positions)
        for i in sorted(positions):
            while i < len(self._tokens) and self._tokens[i] in (_ANY_DEPTH, _ONE_SEGMENT):
                i += 1
                reached.add(i)
        return reached


def _glob_tokens(pattern: str) -> tuple[str, ...]:
    """``**`` and ``*`` as tokens, every other character a token of its own."""
    if not pattern:
        raise ConfigError('a repository glob cannot be empty (use "**" for every repository)')
    if "***" in pattern:
        raise ConfigError(f"repository glob {pattern!r}: use * (one segment) or ** (any depth)")
    tokens: list[str] = []
    for token in _GLOB_TOKEN.findall(pattern):
        if token in (_ANY_DEPTH, _ONE_SEGMENT):
            tokens.append(token)
        elif _GLOB_LITERAL.fullmatch(token):
            tokens.extend(token)
        else:
            raise ConfigError(
                f"repository glob {pattern!r}: only lowercase letters, digits, '._-/' and "
                "the wildcards * and ** may appear (repository names have nothing else)"
            )
    return tuple(tokens)


def parse_permissions(names: Iterable[object], where: str) -> frozenset[Permission]:
    """``["read", "write"]`` as permissions; an unknown name is a ConfigError naming ``where``."""
    known = {p.value: p for p in Permission}
    permissions = set()
    for name in names:
        if not isinstance(name, str) or name not in known:
            raise ConfigError(
                f"{where}: unknown permission {name!r} (use {', '.join(sorted(known))})"
            )
        permissions.add(known[name])
    return frozenset(permissions)


@dataclass(frozen=True)
class AccessRule:
    """One ``[[access]]`` table: globs, anonymous permissions, per-user permissions."""

    repositories: tuple[RepositoryGlob, ...]
    anonymous: frozenset[Permission] = frozenset()
    users: Mapping[str, frozenset[Permission]] = field(default_factory=dict)

    def matches(self, repository: str) -> bool:
        return any(glob.matches(repository) for glob in self.repositories)

    def permissions_of(self, user: str | None) -> frozenset[Permission]:
        """Anonymous permissions, plus the user's own when signed in."""
        if user is None:
            return self.anonymous
        return self.anonymous | self.users.get(user, frozenset())


class AccessPolicy:
    """The ordered rules of an auth file; first match decides, no match means no access."""

    def __init__(self, rules: Iterable[AccessRule]) -> None:
        self.rules = tuple(rules)
        # Repositories are few and asked about on every request: remember each one's rule.
        self._rule_for = functools.lru_cache(maxsize=4096)(self._first_matching_rule)

    def _first_matching_rule(self, repository: str) -> AccessRule | None:
        return next((rule for rule in self.rules if rule.matches(repository)), None)

    def permissions(self, repository: str, user: str | None) -> frozenset[Permission]:
        """What ``user`` (None: anonymous) may do to ``repository``."""
        rule = self._rule_for(repository)
        return frozenset() if rule is None else rule.permissions_of(user)

    def decide(self, repository: str, user: str | None, needed: Permission) -> Decision:
        """Whether ``user`` may do ``needed`` to ``repository``, as the answer to give."""
        if needed in self.permissions(repository, user):
            return Decision.ALLOWED
        return Decision.UNAUTHENTICATED if user is None else Decision.DENIED

    def readable(self, repositories: Iterable[str], user: str | None) -> list[str]:
        """The repositories ``user`` may read, in the order given (catalog filtering)."""
        return [repo for repo in repositories if Permission.READ in self.permissions(repo, user)]
