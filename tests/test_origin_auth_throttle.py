"""Password guessing (issue 19): back-off per user and client address, 429 with Retry-After.

In-process origin on a ``ManualClock``: five wrong passwords are plain 401s;
from the sixth failure on, that user from that address gets 429
``TOOMANYREQUESTS`` with ``Retry-After`` for 1 s, then 2 s, 4 s..., even with
the right password (which must not be confirmed during a block), on every
way a password comes in (Basic on ``/v2/``, the token endpoint's GET and its
OAuth2 POST). Another user from the same address is not affected; the right
password after the block signs in and clears the count. The throttle's
memory is bounded.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp

from krill.origin.auth_throttle import LoginThrottle
from tests.clocks import ManualClock
from tests.fixtures_origin import StartOrigin, error_code
from tests.origin_auth import Origin, auth_file, basic

__all__ = ["auth_file"]  # the fixture, shared with tests/test_origin_auth.py

WRONG = "wrong-guess"


async def status_of(
    session: aiohttp.ClientSession, url: str, user: str, password: str | None = None
) -> aiohttp.ClientResponse:
    resp = await session.get(url, headers=basic(user, password))
    await resp.read()
    return resp


async def test_guessing_is_slowed_down_and_the_right_password_waits_too(
    start_origin: StartOrigin, auth_file: Path
) -> None:
    clock = ManualClock()
    origin = Origin(await start_origin(auth=auth_file, clock=clock))
    probe = f"{origin.url}/v2/"
    token = f"{origin.url}/auth/token?service=krill&scope=repository:private/app:pull"
    async with aiohttp.ClientSession() as session:
        for _ in range(5):
            assert (await status_of(session, probe, "bob", WRONG)).status == 401
        resp = await status_of(session, token, "bob", WRONG)  # the sixth failure: blocked 1 s
        assert resp.status == 401
        for url in (probe, token):
            for password in (WRONG, None):  # None: bob's real password
                resp = await session.get(url, headers=basic("bob", password))
                assert resp.status == 429
                assert await error_code(resp) == "TOOMANYREQUESTS"
                assert resp.headers["Retry-After"] == "1"
        form = {"grant_type": "password", "username": "bob", "password": "bob-secret-2",
                "service": "krill", "scope": "repository:private/app:pull"}  # fmt: skip
        resp = await session.post(f"{origin.url}/auth/token", data=form)
        assert resp.status == 429 and resp.headers["Retry-After"] == "1"
        # Another user from the same address signs in as usual.
        assert (await status_of(session, probe, "alice")).status == 200
        clock.advance(1)
        assert (await status_of(session, probe, "bob", WRONG)).status == 401  # seventh: 2 s
        resp = await status_of(session, probe, "bob")
        assert resp.status == 429 and resp.headers["Retry-After"] == "2"
        clock.advance(2)
        assert (await status_of(session, probe, "bob")).status == 200  # clears the count
        for _ in range(5):
            assert (await status_of(session, probe, "bob", WRONG)).status == 401
        assert (await status_of(session, probe, "bob", WRONG)).status == 401


def test_back_off_doubles_to_its_cap_and_is_forgotten() -> None:
    clock = ManualClock()
    throttle = LoginThrottle(clock, free_failures=2, max_backoff=8, forget_after=60)
    waits = []
    for _ in range(7):
        throttle.failed("bob", "10.0.0.1")
        waits.append(throttle.retry_after("bob", "10.0.0.1"))
    assert waits == [None, None, 1, 2, 4, 8, 8]
    assert throttle.retry_after("bob", "10.0.0.2") is None
    assert throttle.retry_after("alice", "10.0.0.1") is None
    clock.advance(61)
    throttle.failed("bob", "10.0.0.1")  # a minute without failures: counted from one again
    assert throttle.retry_after("bob", "10.0.0.1") is None


def test_memory_is_bounded_and_stale_entries_go() -> None:
    clock = ManualClock()
    throttle = LoginThrottle(clock, free_failures=0, max_entries=100, forget_after=300)
    for n in range(1000):
        throttle.failed(f"user{n}" + "x" * 10_000, "10.0.0.1")
    assert len(throttle) == 100
    assert throttle.retry_after("user999" + "x" * 10_000, "10.0.0.1") is not None
    clock.advance(301)
    throttle.failed("someone", "10.0.0.9")
    assert len(throttle) == 1
