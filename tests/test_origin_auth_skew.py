"""Bearer tokens between origin replicas whose clocks differ (issue 20: clock skew).

A token is signed by one replica and checked by another, each on its own
clock. ``token_leeway`` (30 s by default) forgives that much difference on
the token's ``nbf`` (signed at) and ``exp``: a replica whose clock is behind
accepts a token signed "in its future" within the leeway and refuses one
beyond it; a replica whose clock is ahead accepts a token that has "expired"
by its clock within the leeway and refuses it beyond. In-process with clocks
stepped by hand, then with real ``krill origin`` processes under libfaketime.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import pytest

from krill.config import ConfigError
from krill.origin.auth_config import load_auth_settings
from krill.origin.auth_tokens import DEFAULT_LEEWAY, Grant, TokenIssuer, TokenKeys
from tests.clocks import ManualClock
from tests.origin_auth import AUTH_TOML, PASSWORDS, write_auth_files
from tests.test_faults_clock_skew import FAKETIME, skewed
from tests.test_origin_auth_process import basic_value
from tests.test_origin_auth_replicas import KEY, get, origin

KEYS = TokenKeys((KEY.encode(),))
GRANT = Grant("bob")
SIGNED_AT = 1_000_000.0


def checker(wall: float, leeway: float = 30) -> TokenIssuer:
    return TokenIssuer(300, ManualClock(), KEYS, wall=wall, leeway=leeway)


def signed(ttl: float = 300) -> str:
    return TokenIssuer(ttl, ManualClock(), KEYS, wall=SIGNED_AT).issue(GRANT).token


def test_a_replica_behind_accepts_fresh_tokens_within_the_leeway_only() -> None:
    token = signed()
    assert checker(SIGNED_AT - 29).verify(token) == GRANT
    assert checker(SIGNED_AT - 31).verify(token) is None
    assert checker(SIGNED_AT - 1, leeway=0).verify(token) is None  # nbf is checked at all


def test_a_replica_ahead_accepts_expired_tokens_within_the_leeway_only() -> None:
    token = signed(ttl=60)
    assert checker(SIGNED_AT + 60 + 29).verify(token) == GRANT
    assert checker(SIGNED_AT + 60 + 31).verify(token) is None


def test_leeway_is_a_bounded_setting_of_the_auth_file(tmp_path: Path) -> None:
    auth = write_auth_files(tmp_path)
    assert load_auth_settings(auth).token_leeway == DEFAULT_LEEWAY == 30
    for value, ok in (("0", True), ("12.5", True), ("300", True), ("301", False),
                      ("-1", False), ('"30"', False), ("true", False)):
        auth.write_text(f"token_leeway = {value}\n{AUTH_TOML}")
        if ok:
            assert load_auth_settings(auth).token_leeway == float(value)
        else:
            with pytest.raises(ConfigError, match="token_leeway must be 0 to 300 seconds"):
                load_auth_settings(auth)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(FAKETIME), reason="needs libfaketime (Debian faketime)")
def test_replicas_seconds_apart_share_tokens_within_the_leeway(tmp_path: Path) -> None:
    """Real replicas under libfaketime, 20 s (in the leeway) and 60 s (beyond) each way.

    Tokens live 10 s here, so a replica 20 s ahead sees each token expired
    10 s ago (accepted: leeway 30 s) and one 60 s ahead 50 s ago (refused).
    """
    auth = write_auth_files(
        tmp_path / "auth", f'token_key_file = "token-key"\n{AUTH_TOML}'.replace(
            "token_ttl = 300", "token_ttl = 10"))
    (tmp_path / "auth" / "token-key").write_text(f"{KEY}\n")
    with contextlib.ExitStack() as stack:
        signer = stack.enter_context(origin(tmp_path / "signer", auth))
        replicas = {}
        for offset in ("-20s", "-60s", "+20s", "+60s"):
            with skewed(offset):
                replicas[offset] = stack.enter_context(origin(tmp_path / offset, auth))
        basic = {"Authorization": "Basic " + basic_value("bob", PASSWORDS["bob"])}
        answers = {}
        for offset, replica in replicas.items():
            status, body, _ = get(f"{signer}/auth/token?service=krill", basic)
            assert status == 200
            bearer = {"Authorization": f"Bearer {json.loads(body)['token']}"}
            answers[offset] = get(f"{replica}/v2/", bearer)[0]
    assert answers == {"-20s": 200, "-60s": 401, "+20s": 200, "+60s": 401}
    behind = (tmp_path / "-60s" / "origin.log").read_text()
    assert "origin.token_from_the_future" in behind and "NTP" in behind
