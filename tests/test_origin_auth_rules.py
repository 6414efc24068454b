"""Origin auth without a server: repository globs, rule order, the auth file, tokens.

The glob matcher is checked against a second, deliberately naive matcher
(recursion over the pattern) on generated globs and names; the auth file's
mistakes must stop the origin at start with a message naming the key.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

import bcrypt
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from krill.config import ConfigError
from krill.origin.auth_config import load_auth_settings
from krill.origin.auth_passwords import Htpasswd
from krill.origin.auth_rules import (
    AccessPolicy,
    AccessRule,
    Decision,
    Permission,
    RepositoryGlob,
)
from krill.origin.auth_tokens import Grant, TokenIssuer, parse_scopes
from krill.origin.config import load_origin_config
from krill.origin.server import create_app
from tests.clocks import ManualClock
from tests.components import krill_command

READ, WRITE, DELETE = Permission.READ, Permission.WRITE, Permission.DELETE


def naive_match(pattern: str, name: str) -> bool:
    """``**`` any run, ``*`` any run without ``/``, the rest literal: by recursion."""

    @functools.cache
    def match(p: int, n: int) -> bool:
        if p == len(pattern):
            return n == len(name)
        if pattern.startswith("**", p):
            return any(match(p + 2, k) for k in range(n, len(name) + 1))
        if pattern[p] == "*":
            return any(match(p + 1, k) for k in range(n, len(name) + 1) if "/" not in name[n:k])
        return n < len(name) and name[n] == pattern[p] and match(p + 1, n + 1)

    return match(0, 0)


segments = st.text(alphabet="ab", min_size=1, max_size=3)
names = st.lists(segments, min_size=1, max_size=4).map("/".join)
globs = st.lists(st.sampled_from(["a", "b", "/", "*", "**"]), min_size=1, max_size=7).map("".join)


@given(globs, names)
def test_globs_match_like_the_naive_matcher(pattern: str, name: str) -> None:
    assume("***" not in pattern)
    assert RepositoryGlob(pattern).matches(name) == naive_match(pattern, name)


@given(names)
def test_double_star_matches_every_name_and_a_literal_only_itself(name: str) -> None:
    assert RepositoryGlob("**").matches(name)
    assert RepositoryGlob(name).matches(name)
    assert not RepositoryGlob(name).matches(name + "a")


@given(st.lists(segments, min_size=2, max_size=4))
def test_one_star_never_crosses_a_slash(parts: list[str]) -> None:
    assert not RepositoryGlob("*").matches("/".join(parts))
    assert RepositoryGlob("/".join("*" for _ in parts)).matches("/".join(parts))


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("public/**", "public/app", True),
        ("public/**", "public/a/b/c", True),
        ("public/**", "public", False),
        ("public/**", "publicity/app", False),
        ("team/*/app", "team/x/app", True),
        ("team/*/app", "team/x/y/app", False),
        ("**/app", "a/b/app", True),
        ("*-dev/**", "web-dev/app", True),
        ("lib.v2/app", "libxv2/app", False),  # a dot is a dot
    ],
)
def test_glob_examples(pattern: str, name: str, expected: bool) -> None:
    assert RepositoryGlob(pattern).matches(name) is expected


@pytest.mark.parametrize("pattern", ["", "a/***", "a/?", "a/[bc]", "A/b", "{a,b}/**"])
def test_globs_that_cannot_mean_anything_are_refused(pattern: str) -> None:
    with pytest.raises(ConfigError, match="glob"):
        RepositoryGlob(pattern)


def rule(
    *patterns: str, anonymous: frozenset[Permission] = frozenset(), **users: set[Permission]
) -> AccessRule:
    return AccessRule(
        tuple(RepositoryGlob(p) for p in patterns),
        anonymous,
        {user: frozenset(perms) for user, perms in users.items()},
    )


def test_the_first_matching_rule_decides_and_no_match_means_no_access() -> None:
    policy = AccessPolicy(
        [
            rule("private/special", bob={READ, WRITE}),
            rule("private/**", alice={READ, WRITE}, bob={READ}),
        ]
    )
    assert policy.decide("private/special", "bob", WRITE) is Decision.ALLOWED
    assert policy.decide("private/special", "alice", READ) is Decision.DENIED  # first rule only
    assert policy.decide("private/other", "bob", WRITE) is Decision.DENIED
    assert policy.decide("private/other", None, READ) is Decision.UNAUTHENTICATED
    assert policy.decide("elsewhere/app", "alice", READ) is Decision.DENIED
    assert policy.decide("elsewhere/app", None, READ) is Decision.UNAUTHENTICATED


def test_a_signed_in_user_has_at_least_what_anonymous_has() -> None:
    policy = AccessPolicy([rule("public/**", anonymous=frozenset({READ}), alice={WRITE})])
    assert policy.permissions("public/app", "alice") == {READ, WRITE}
    assert policy.permissions("public/app", "carol") == {READ}
    assert policy.readable(["public/app", "private/app"], None) == ["public/app"]


# --- tokens ----------------------------------------------------------------------------------


def test_scopes_parse_as_the_token_spec_writes_them() -> None:
    asked = parse_scopes(
        [
            "repository:team/app:pull,push repository:other/app:*",
            "registry:catalog:*",
            "repository:team/app:delete",
            "repository:Bad Name:pull",
            "repository:x:unknown-action",
            "nonsense",
        ]
    )
    assert asked.catalog
    assert dict(asked.repositories) == {
        "team/app": {READ, WRITE, DELETE},
        "other/app": {READ, WRITE, DELETE},
        "x": frozenset(),
    }


def test_a_token_round_trips_and_dies_at_its_ttl() -> None:
    clock = ManualClock()
    issuer = TokenIssuer(300, clock)
    grant = Grant("alice", {"team/app": frozenset({READ})}, catalog=True)
    token = issuer.issue(grant).token
    assert issuer.verify(token) == grant
    assert TokenIssuer(300, clock).verify(token) is None  # another process's key
    for forged in (token + "x", token.replace("krill.", "krill.e30"), "krill.", "", "x" * 20000):
        assert issuer.verify(forged) is None
    clock.advance(299)
    assert issuer.verify(token) == grant
    clock.advance(1)
    assert issuer.verify(token) is None


# --- the auth file ---------------------------------------------------------------------------

ISSUE_EXAMPLE = """\
htpasswd = "{htpasswd}"        # bcrypt entries, as `htpasswd -B` writes them
[[access]]
repositories = ["public/**"]            # globs: * within a path segment, ** across segments
anonymous = ["read"]
users = {{ alice = ["read", "write", "delete"] }}
[[access]]
repositories = ["private/**"]
users = {{ alice = ["read", "write"], bob = ["read"] }}
"""


def write_htpasswd(path: Path, *users: str) -> Path:
    lines = [f"{u}:{bcrypt.hashpw(b'pw', bcrypt.gensalt(4)).decode()}" for u in users]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_issue_example_loads(tmp_path: Path) -> None:
    htpasswd = write_htpasswd(tmp_path / "users", "alice", "bob")
    (tmp_path / "auth.toml").write_text(ISSUE_EXAMPLE.format(htpasswd=htpasswd))
    settings = load_auth_settings(tmp_path / "auth.toml")
    assert settings.htpasswd == htpasswd
    assert settings.token_ttl == 300 and settings.credential_cache == 60
    assert settings.policy.permissions("public/a/b", None) == {READ}
    assert settings.policy.permissions("private/x", "alice") == {READ, WRITE}
    assert settings.policy.permissions("private/x", "bob") == {READ}


def test_the_docs_example_loads_with_its_optional_keys_uncommented(tmp_path: Path) -> None:
    """docs/security.md's auth file, as an operator would copy it and switch the options on."""
    docs = (Path(__file__).parent.parent / "docs" / "security.md").read_text()
    example = docs.split("```toml\n", 1)[1].split("```", 1)[0]
    optional = ("token_ttl", "token_leeway", "credential_cache", "realm", "nodes")
    text = "\n".join(
        line.removeprefix("# ") if line.removeprefix("# ").startswith(optional) else line
        for line in example.splitlines()
    )
    write_htpasswd(tmp_path / "htpasswd", "alice", "bob", "node1", "node2", "tracker")
    (tmp_path / "auth.toml").write_text(text.replace("/etc/krill/htpasswd", "htpasswd"))
    settings = load_auth_settings(tmp_path / "auth.toml")
    assert settings.token_ttl == 300 and settings.nodes == {"node1", "node2", "tracker"}
    assert settings.policy.permissions("private/x", "bob") == {READ}


def test_a_relative_htpasswd_path_is_beside_the_auth_file(tmp_path: Path) -> None:
    (tmp_path / "auth.toml").write_text(ISSUE_EXAMPLE.format(htpasswd="users"))
    assert load_auth_settings(tmp_path / "auth.toml").htpasswd == tmp_path / "users"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'htpasswd = "u"\n[[access]]\nrepositories = ["a/**"]\nanonymous = ["admin"]\n',
            "unknown permission 'admin'",
        ),
        (
            'htpasswd = "u"\n[[access]]\nrepositories = ["a/?"]\n',
            r"access\[0\]\.repositories: .*glob",
        ),
        (
            'htpasswd = "u"\n[[access]]\nrepositories = ["a"]\ntoken_ttl = 5\n',
            r"token_ttl belong\(s\) at the top of the file, above the first \[\[access\]\]",
        ),
        ('htpasswd = "u"\n', "at least one \\[\\[access\\]\\] rule"),
        ('htpasswd = "u"\nhtpassword = "v"\n[[access]]\nrepositories = ["a"]\n', "unknown setting"),
        ('[[access]]\nrepositories = ["a"]\n', "htpasswd"),
        ('htpasswd = "u"\n[[access]]\nrepository = ["a"]\n', "unknown key"),
        (
            'htpasswd = "u"\n[[access]]\nrepositories = ["a"]\nusers = { bob = "read" }\n',
            "expected a list",
        ),
        ('htpasswd = "u"\ntoken_ttl = 0\n[[access]]\nrepositories = ["a"]\n', "token_ttl"),
        ('htpasswd = "u"\nrealm = "auth/token"\n[[access]]\nrepositories = ["a"]\n', "realm"),
        ("htpasswd = \n", "not valid TOML"),
    ],
)
def test_auth_file_mistakes_name_what_to_fix(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "auth.toml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_auth_settings(tmp_path / "auth.toml")


@pytest.mark.parametrize(
    "entry",
    [
        "alice:$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/",  # htpasswd -m (MD5)
        "alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=",  # htpasswd -s
        "alice:rl5oD/qjbTsjs",  # htpasswd -d (crypt)
        "alice",
    ],
)
def test_only_bcrypt_htpasswd_entries_are_accepted(tmp_path: Path, entry: str) -> None:
    (tmp_path / "users").write_text(f"# made by htpasswd\n{entry}\n")
    with pytest.raises(ConfigError, match="htpasswd -B"):
        Htpasswd.load(tmp_path / "users")


def test_auth_is_set_by_file_env_or_flag(tmp_path: Path) -> None:
    (tmp_path / "origin.toml").write_text('auth = "/etc/krill/auth.toml"\n')
    assert load_origin_config(tmp_path / "origin.toml").auth == Path("/etc/krill/auth.toml")
    env = {"KRILL_ORIGIN_AUTH": "/run/auth.toml"}
    assert load_origin_config(environ=env).auth == Path("/run/auth.toml")
    config = load_origin_config(environ=env, flags={"auth": "/x/auth.toml"})
    assert config.auth == Path("/x/auth.toml")
    assert load_origin_config(environ={}).auth is None


def test_an_origin_with_a_broken_auth_file_does_not_start(tmp_path: Path) -> None:
    (tmp_path / "auth.toml").write_text(ISSUE_EXAMPLE.format(htpasswd=tmp_path / "missing"))
    config = load_origin_config(
        environ={}, flags={"auth": tmp_path / "auth.toml", "data": tmp_path}
    )
    with pytest.raises(ConfigError, match="cannot read htpasswd file"):
        create_app(config)


def test_krill_origin_htpasswd_writes_an_entry_the_origin_accepts(tmp_path: Path) -> None:
    made = subprocess.run(
        krill_command("origin", "htpasswd", "alice", "--cost", "4"),
        input="correct horse\n", capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    (tmp_path / "users").write_text(made.stdout)
    hashed = Htpasswd.load(tmp_path / "users").hashes["alice"]
    assert bcrypt.checkpw(b"correct horse", hashed)
    refused = subprocess.run(
        krill_command("origin", "htpasswd", "a:b"), input="pw\n", capture_output=True, text=True
    )
    assert refused.returncode != 0 and "':'" in refused.stderr
