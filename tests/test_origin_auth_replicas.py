"""Bearer tokens across origin replicas (issue 19): one shared ``token_key_file``.

Two origins behind one address (on one S3 bucket, tests/test_origin_s3_replicas.py)
get a client's requests in turn: a token one of them issued must be accepted
by the other. Here two real ``krill origin --auth`` processes share the key
file (their storage does not matter for that; each has its own directory): a
token from the first opens the second, with exactly the granted scope, while
a third origin with another key, and a fourth with none (a key of its own),
answer it with 401 ``invalid_token``. The key file's own rules (rotation,
length, never quoted in errors) are checked in-process below.
"""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from krill.config import ConfigError
from krill.origin.auth_config import load_auth_settings
from krill.origin.auth_rules import Permission
from krill.origin.auth_tokens import Grant, TokenIssuer, TokenKeys
from tests.clocks import ManualClock
from tests.components import free_port, krill_process
from tests.origin_auth import AUTH_TOML, PASSWORDS, write_auth_files
from tests.test_origin_auth_process import basic_value

KEY = "3f1c0a9d2b7e4c8a1f6d5e0b9a8c7d6e5f4a3b2c1d0e9f8a"
OTHER_KEY = "aa11bb22cc33dd44ee55ff6600778899aabbccddeeff0011"


def get(url: str, headers: dict[str, str]) -> tuple[int, bytes, str]:
    """Status, body and ``WWW-Authenticate`` of a GET."""
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, resp.read(), ""
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("WWW-Authenticate", "")


def auth_dir(root: Path, key: str | None) -> Path:
    """An auth file (the tests' users and rules), with ``token_key_file`` when ``key``."""
    toml = AUTH_TOML if key is None else f'token_key_file = "token-key"\n{AUTH_TOML}'
    auth = write_auth_files(root, toml)
    if key is not None:
        (root / "token-key").write_text(f"# shared by every replica\n{key}\n")
    return auth


@contextlib.contextmanager
def origin(root: Path, auth: Path) -> Iterator[str]:
    root.mkdir(parents=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = [
        "origin", "--listen", f"127.0.0.1:{port}", "--data", str(root / "data"),
        "--auth", str(auth), "--log-level", "debug",
    ]  # fmt: skip
    with krill_process(args, root / "origin.log", f"{base}/health"):
        yield base


def test_a_token_from_one_replica_opens_the_other(tmp_path: Path) -> None:
    shared = auth_dir(tmp_path / "auth-shared", KEY)
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(origin(tmp_path / "a", shared))
        second = stack.enter_context(origin(tmp_path / "b", shared))
        other = stack.enter_context(
            origin(tmp_path / "c", auth_dir(tmp_path / "auth-c", OTHER_KEY))
        )
        own = stack.enter_context(origin(tmp_path / "d", auth_dir(tmp_path / "auth-d", None)))
        scope = "repository:private/app:pull"
        status, body, _ = get(
            f"{first}/auth/token?service=krill&scope={scope}",
            {"Authorization": "Basic " + basic_value("bob", PASSWORDS["bob"])},
        )
        assert status == 200
        bearer = {"Authorization": f"Bearer {json.loads(body)['token']}"}
        for replica in (first, second):
            assert get(f"{replica}/v2/", bearer)[0] == 200
            # Past the auth check: the repository just is not there (each has its own data).
            status, body, _ = get(f"{replica}/v2/private/app/tags/list", bearer)
            assert status == 404 and b"NAME_UNKNOWN" in body
            # The scope travels with the token: bob's token was not granted public/app.
            status, _, challenge = get(f"{replica}/v2/public/app/tags/list", bearer)
            assert status == 401 and 'error="insufficient_scope"' in challenge
        for stranger in (other, own):
            status, _, challenge = get(f"{stranger}/v2/", bearer)
            assert status == 401 and 'error="invalid_token"' in challenge
    for name in "abcd":
        log = (tmp_path / name / "origin.log").read_text()
        assert KEY not in log and OTHER_KEY not in log
    assert "token_keys=1" in (tmp_path / "b" / "origin.log").read_text()


def test_the_first_key_signs_and_every_key_verifies(tmp_path: Path) -> None:
    """Rotation: add the new key as the second line everywhere, then move it first, then drop
    the old one; tokens keep working at each step."""
    clock = ManualClock()
    old, new = TokenKeys((KEY.encode(),)), TokenKeys((OTHER_KEY.encode(), KEY.encode()))
    grant = Grant("bob", {"private/app": frozenset({Permission.READ})})
    by_old = TokenIssuer(300, clock, old, wall=1_000_000).issue(grant).token
    by_new = TokenIssuer(300, clock, new, wall=1_000_000).issue(grant).token
    assert TokenIssuer(300, clock, new, wall=1_000_000).verify(by_old) == grant
    assert TokenIssuer(300, clock, old, wall=1_000_000).verify(by_new) is None
    newest = TokenKeys((OTHER_KEY.encode(),))
    assert TokenIssuer(300, clock, newest, wall=1_000_000).verify(by_new) == grant


def test_expiry_is_unix_time_so_replicas_agree(tmp_path: Path) -> None:
    """A replica that started later (another monotonic origin) sees the same expiry."""
    keys = TokenKeys((KEY.encode(),))
    grant = Grant(None)
    token = TokenIssuer(300, ManualClock(start=5.0), keys, wall=1_000_000).issue(grant).token
    later = ManualClock(start=90_000.0)
    replica = TokenIssuer(300, later, keys, wall=1_000_299)
    assert replica.verify(token) == grant
    later.advance(1)
    assert replica.verify(token) is None


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("", "expected 1 to 16 keys"),
        ("# only a comment\n", "expected 1 to 16 keys"),
        ("short-secret-value\n", ":1: a token key needs at least 32 characters"),
        (f"{KEY}\nshort-secret-value\n", ":2: a token key needs at least 32"),
    ],
)
def test_a_bad_key_file_stops_the_origin_without_quoting_it(
    tmp_path: Path, content: str, expected: str
) -> None:
    auth = auth_dir(tmp_path, KEY)
    (tmp_path / "token-key").write_text(content)
    with pytest.raises(ConfigError, match=expected) as raised:
        load_auth_settings(auth)
    assert "short-secret-value" not in str(raised.value)


def test_a_missing_key_file_names_the_file(tmp_path: Path) -> None:
    auth = auth_dir(tmp_path, KEY)
    (tmp_path / "token-key").unlink()
    with pytest.raises(ConfigError, match=r"cannot read token_key_file .*token-key"):
        load_auth_settings(auth)
    assert KEY not in repr(TokenKeys((KEY.encode(),)))
