"""Origin auth (issue 19), the token endpoint: scopes granted as the rules allow, the OAuth2
password form, anonymous tokens, expiry on the origin's clock, the probe's challenge.

Shares its origin and helpers with ``tests/test_origin_auth.py`` (``tests/origin_auth.py``).
"""

# ruff: noqa: F811

from __future__ import annotations

from pathlib import Path

import aiohttp

from krill.origin.auth_tokens import DEFAULT_LEEWAY
from tests.clocks import ManualClock
from tests.fixtures_origin import StartOrigin, error_code

# With the fixtures auth_file, layout and origin by name: pytest looks fixtures up in this
# module, and a test's parameter of that name is the fixture (so F811 is off here).
from tests.origin_auth import (  # noqa: F401
    PASSWORDS,
    Origin,
    auth_file,
    basic,
    challenge_of,
    layout,
    origin,
    push,
)

# --- the token endpoint -----------------------------------------------------------------------


async def token_for(
    origin: Origin, scopes: list[str], auth: dict[str, str] | None
) -> dict[str, object]:
    params = [("service", "krill"), *(("scope", scope) for scope in scopes)]
    async with aiohttp.ClientSession() as session:
        resp = await session.get(f"{origin.url}/auth/token", params=params, headers=auth)
        assert resp.status == 200
        assert resp.headers["Cache-Control"] == "no-store"
        body: dict[str, object] = await resp.json()
        return body


async def test_a_token_grants_only_the_permitted_subset(origin: Origin, layout: Path) -> None:
    await push(origin, layout, "private/app:v1")
    body = await token_for(origin, ["repository:private/app:pull,push"], basic("bob"))
    assert body["token"] == body["access_token"]
    assert body["expires_in"] == 300
    assert str(body["issued_at"]).endswith("Z")
    bearer = {"Authorization": f"Bearer {body['token']}"}
    async with aiohttp.ClientSession(headers=bearer) as session:
        assert (await session.get(f"{origin.url}/v2/")).status == 200
        assert (await session.head(f"{origin.url}/v2/private/app/manifests/v1")).status == 200
        resp = await session.post(f"{origin.url}/v2/private/app/blobs/uploads/")
        assert resp.status == 403  # bob may not push: no token would let him
        assert await error_code(resp) == "DENIED"


async def test_a_token_without_the_scope_is_challenged_for_it(origin: Origin) -> None:
    body = await token_for(origin, ["repository:public/app:pull"], basic("alice"))
    bearer = {"Authorization": f"Bearer {body['token']}"}
    async with aiohttp.ClientSession(headers=bearer) as session:
        resp = await session.post(f"{origin.url}/v2/public/app/blobs/uploads/")
        assert resp.status == 401  # alice may push: a token with push would work
        assert 'error="insufficient_scope"' in challenge_of(resp)
        assert 'scope="repository:public/app:pull,push"' in challenge_of(resp)
        resp = await session.get(f"{origin.url}/v2/_catalog")
        assert resp.status == 401
        assert 'scope="registry:catalog:*"' in challenge_of(resp)


async def test_an_anonymous_token_carries_only_anonymous_access(origin: Origin) -> None:
    body = await token_for(
        origin, ["repository:public/app:pull,push", "repository:private/app:pull"], None
    )
    bearer = {"Authorization": f"Bearer {body['token']}"}
    async with aiohttp.ClientSession(headers=bearer) as session:
        resp = await session.get(f"{origin.url}/v2/private/app/tags/list")
        assert resp.status == 401
        resp = await session.post(f"{origin.url}/v2/public/app/blobs/uploads/")
        assert resp.status == 401
        assert "insufficient_scope" not in challenge_of(resp)  # no token would let anonymous


async def test_the_oauth2_password_form_gets_a_token_too(origin: Origin) -> None:
    """containerd POSTs ``grant_type=password`` first when it has a password."""
    form = {
        "grant_type": "password",
        "service": "krill",
        "client_id": "containerd-client",
        "username": "bob",
        "password": PASSWORDS["bob"],
        "scope": "repository:private/app:pull,push registry:catalog:*",
    }
    url = f"{origin.url}/auth/token"
    async with aiohttp.ClientSession() as session:
        resp = await session.post(url, data=form)
        assert resp.status == 200
        body = await resp.json()
        assert body["scope"] == "repository:private/app:pull registry:catalog:*"
        bearer = {"Authorization": f"Bearer {body['access_token']}"}
        resp = await session.get(f"{origin.url}/v2/_catalog", headers=bearer)
        assert resp.status == 200
        resp = await session.post(url, data={**form, "password": "wrong"})
        assert resp.status == 401
        resp = await session.post(url, data={**form, "grant_type": "refresh_token"})
        assert resp.status == 400
        resp = await session.get(url, params={"service": "elsewhere"})
        assert resp.status == 400


async def test_tokens_expire_on_the_origin_clock(
    start_origin: StartOrigin, auth_file: Path
) -> None:
    clock = ManualClock()
    origin = Origin(await start_origin(auth=auth_file, clock=clock))
    body = await token_for(origin, ["repository:public/app:pull,push"], basic("alice"))
    bearer = {"Authorization": f"Bearer {body['token']}"}
    async with aiohttp.ClientSession(headers=bearer) as session:
        assert (await session.get(f"{origin.url}/v2/")).status == 200
        clock.advance(300 + DEFAULT_LEEWAY + 1)  # token_ttl, and the replicas' clock leeway
        resp = await session.get(f"{origin.url}/v2/")
        assert resp.status == 401
        assert 'error="invalid_token"' in challenge_of(resp)
        forged = str(body["token"])[:-4] + "AAAA"
        resp = await session.get(f"{origin.url}/v2/", headers={"Authorization": f"Bearer {forged}"})
        assert resp.status == 401


async def test_the_probe_challenges_a_caller_without_credentials(origin: Origin) -> None:
    """containers/image sends credentials only to a registry whose /v2/ probe challenged it."""
    async with aiohttp.ClientSession() as session:
        resp = await session.get(f"{origin.url}/v2/")
        assert resp.status == 401
        assert challenge_of(resp) == f'Bearer realm="{origin.url}/auth/token",service="krill"'
        assert (await session.get(f"{origin.url}/v2/", headers=basic("bob"))).status == 200
        assert (await session.get(f"{origin.url}/v2/", headers=basic("dave"))).status == 200
        resp = await session.head(f"{origin.url}/v2/private/app/manifests/v1")
        assert resp.status == 401 and challenge_of(resp).startswith("Bearer ")
        for path in ("/health", "/metrics"):
            assert (await session.get(f"{origin.url}{path}")).status == 200
