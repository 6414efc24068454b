"""Origin auth (issue 19): users from htpasswd, access rules per repository glob, tokens.

The origin runs in-process (``start_origin(auth=...)``) and real skopeo
pushes and pulls through the Bearer token flow it is challenged with; plain
aiohttp requests check the exact answers (status, spec error code,
``WWW-Authenticate``). ``tests/test_origin_auth_process.py`` runs the real
``krill origin --auth`` process and reads its log.
"""

# ruff: noqa: F811

from __future__ import annotations

import asyncio
import base64
import logging
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from krill.origin.config import OriginConfig
from krill.origin.server import create_app
from tests import containerd, imagebuild
from tests.clocks import ManualClock
from tests.fixtures_origin import StartOrigin, digest_of, error_code
from tests.metrics_text import parse_metrics

# With the fixtures auth_file, layout and origin by name: pytest looks fixtures up in this
# module, and a test's parameter of that name is the fixture (so F811 is off here).
from tests.origin_auth import (  # noqa: F401
    TLS_OFF,
    Origin,
    auth_file,
    basic,
    challenge_of,
    creds,
    first_layer,
    layout,
    origin,
    push,
    pushed_manifest,
    run_skopeo,
    skopeo_refused,
)

# --- the checks issue 19 lists ---------------------------------------------------------------


async def test_anonymous_push_gets_401_with_a_bearer_challenge(origin: Origin) -> None:
    async with aiohttp.ClientSession() as session:
        resp = await session.post(f"{origin.url}/v2/public/app/blobs/uploads/")
        assert resp.status == 401
        assert await error_code(resp) == "UNAUTHORIZED"
        assert challenge_of(resp) == (
            f'Bearer realm="{origin.url}/auth/token",service="krill",'
            'scope="repository:public/app:pull,push"'
        )


async def test_alice_pushes_to_public_and_private_with_skopeo(origin: Origin, layout: Path) -> None:
    await push(origin, layout, "public/app:v1")
    await push(origin, layout, "private/app:v1")
    async with aiohttp.ClientSession(headers=basic("alice")) as session:
        for repo in ("public/app", "private/app"):
            resp = await session.get(f"{origin.url}/v2/{repo}/tags/list")
            assert (await resp.json())["tags"] == ["v1"]


async def test_anonymous_pull_of_public_works_and_of_private_gets_401(
    origin: Origin, layout: Path, tmp_path: Path
) -> None:
    await push(origin, layout, "public/app:v1")
    await push(origin, layout, "private/app:v1")
    out = tmp_path / "pulled"
    await run_skopeo(
        "copy", *TLS_OFF, "--src-no-creds", origin.ref("public/app:v1"), f"oci:{out}:v1"
    )
    assert imagebuild.read_oci_layout_digests(out) >= imagebuild.read_oci_layout_digests(layout)
    refused = await skopeo_refused(
        "copy", *TLS_OFF, "--src-no-creds", origin.ref("private/app:v1"), f"oci:{out}:p"
    )
    assert "unauthorized" in refused.lower() or "authentication required" in refused
    async with aiohttp.ClientSession() as session:
        resp = await session.get(f"{origin.url}/v2/private/app/manifests/v1")
        assert resp.status == 401
        assert await error_code(resp) == "UNAUTHORIZED"
        assert 'scope="repository:private/app:pull"' in challenge_of(resp)


async def test_bob_pulls_private_but_his_push_is_refused(
    origin: Origin, layout: Path, tmp_path: Path
) -> None:
    await push(origin, layout, "private/app:v1")
    out = tmp_path / "bob"
    await run_skopeo(
        "copy", *TLS_OFF, "--src-creds", creds("bob"), origin.ref("private/app:v1"), f"oci:{out}:v1"
    )
    assert imagebuild.read_oci_layout_digests(out) >= imagebuild.read_oci_layout_digests(layout)
    refused = await skopeo_refused(
        "copy",
        *TLS_OFF,
        "--dest-creds",
        creds("bob"),
        f"oci:{layout}:v1",
        origin.ref("private/app:v2"),
    )
    assert "denied" in refused.lower()
    async with aiohttp.ClientSession(headers=basic("bob")) as session:
        resp = await session.post(f"{origin.url}/v2/private/app/blobs/uploads/")
        assert resp.status == 403
        assert await error_code(resp) == "DENIED"


async def test_a_wrong_password_gets_401(origin: Origin, layout: Path) -> None:
    refused = await skopeo_refused(
        "copy",
        *TLS_OFF,
        "--dest-creds",
        creds("alice", "not-her-password"),
        f"oci:{layout}:v1",
        origin.ref("public/app:v1"),
    )
    assert "401" in refused or "unauthorized" in refused.lower()
    async with aiohttp.ClientSession() as session:
        for user, password in (("alice", "wrong"), ("mallory", "anything")):
            resp = await session.get(
                f"{origin.url}/v2/public/app/tags/list", headers=basic(user, password)
            )
            assert resp.status == 401  # never served as anonymous, though anonymous may read
            assert await error_code(resp) == "UNAUTHORIZED"
        resp = await session.get(
            f"{origin.url}/auth/token",
            params={"service": "krill"},
            headers=basic("alice", "wrong"),
        )
        assert resp.status == 401


# --- listings ---------------------------------------------------------------------------------


async def test_catalog_shows_only_what_the_caller_may_read(origin: Origin, layout: Path) -> None:
    for reference in ("public/app:v1", "private/app:v1", "team/x/app:v1"):
        await push(origin, layout, reference)
    expected = {
        None: ["public/app"],
        "alice": ["private/app", "public/app", "team/x/app"],
        "bob": ["private/app", "public/app"],
        "carol": ["public/app", "team/x/app"],
    }
    async with aiohttp.ClientSession() as session:
        for user, names in expected.items():
            auth = None if user is None else basic(user)
            resp = await session.get(f"{origin.url}/v2/_catalog", headers=auth)
            assert resp.status == 200
            assert (await resp.json())["repositories"] == names, user
        resp = await session.get(f"{origin.url}/v2/_catalog?n=1", headers=basic("bob"))
        assert (await resp.json())["repositories"] == ["private/app"]
        assert resp.headers["Link"] == '</v2/_catalog?n=1&last=private%2Fapp>; rel="next"'


async def test_tags_list_needs_read_on_its_repository(origin: Origin, layout: Path) -> None:
    await push(origin, layout, "team/x/app:v1")
    async with aiohttp.ClientSession() as session:
        url = f"{origin.url}/v2/team/x/app/tags/list"
        assert (await session.get(url, headers=basic("carol"))).status == 200
        resp = await session.get(url, headers=basic("bob"))
        assert resp.status == 403
        assert await error_code(resp) == "DENIED"


async def test_a_repository_no_rule_matches_is_open_to_nobody(origin: Origin) -> None:
    async with aiohttp.ClientSession(headers=basic("alice")) as session:
        resp = await session.post(f"{origin.url}/v2/elsewhere/app/blobs/uploads/")
        assert resp.status == 403
        resp = await session.get(f"{origin.url}/v2/team/x/y/app/tags/list")  # * is one segment
        assert resp.status == 403


# --- delete, mounts, bcrypt caching -----------------------------------------------------------


async def test_delete_needs_the_delete_permission(origin: Origin, layout: Path) -> None:
    public = await pushed_manifest(origin, layout, "public/app:v1")
    private = await pushed_manifest(origin, layout, "private/app:v1")
    async with aiohttp.ClientSession() as session:
        resp = await session.delete(
            f"{origin.url}/v2/private/app/manifests/{private}", headers=basic("alice")
        )
        assert resp.status == 403  # alice has read and write on private/**, not delete
        resp = await session.delete(
            f"{origin.url}/v2/public/app/manifests/{public}", headers=basic("alice")
        )
        assert resp.status == 202


async def test_a_mount_from_an_unreadable_repository_becomes_an_upload(
    origin: Origin, layout: Path
) -> None:
    await push(origin, layout, "private/app:v1")
    blob = first_layer(layout)
    query = f"?mount={blob}&from=private/app"
    async with aiohttp.ClientSession() as session:
        url = f"{origin.url}/v2/team/x/app/blobs/uploads/{query}"
        resp = await session.post(url, headers=basic("carol"))
        assert resp.status == 202  # an upload session, not the private blob
        assert resp.headers["Location"].startswith("/v2/team/x/app/blobs/uploads/")
        resp = await session.head(
            f"{origin.url}/v2/team/x/app/blobs/{blob}", headers=basic("carol")
        )
        assert resp.status == 404
        resp = await session.post(url, headers=basic("alice"))
        assert resp.status == 201  # alice may read private/app: mounted


async def test_one_writer_cannot_hold_every_upload_session(
    start_origin: StartOrigin, auth_file: Path
) -> None:
    """carol opening sessions in a loop took all of max_upload_sessions, and alice's push
    got 429 (security review, stop 39). A user holds at most a quarter now."""
    origin = Origin(await start_origin(auth=auth_file, max_upload_sessions=8))
    async with aiohttp.ClientSession() as session:
        start = f"{origin.url}/v2/team/x/app/blobs/uploads/"
        statuses = [(await session.post(start, headers=basic("carol"))).status for _ in range(3)]
        assert statuses == [202, 202, 429]
        refused = await session.post(start, headers=basic("carol"))
        assert "carol has 2 uploads in progress" in (await refused.text())
        alice = await session.post(f"{origin.url}/v2/private/app/blobs/uploads/",
                                   headers=basic("alice"))  # fmt: skip
        assert alice.status == 202, "another user still pushes"


async def test_bcrypt_runs_once_per_credential_not_per_request(
    origin: Origin, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="krill.origin.auth_passwords")
    async with aiohttp.ClientSession(headers=basic("carol")) as session:
        statuses = await asyncio.gather(*(session.get(f"{origin.url}/v2/") for _ in range(20)))
        assert {resp.status for resp in statuses} == {200}
    checks = [r for r in caplog.records if r.getMessage().startswith("auth.password_checked")]
    assert len(checks) == 1


# --- without --auth ---------------------------------------------------------------------------


def test_without_auth_the_origin_is_open_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    create_app(OriginConfig(data=tmp_path / "origin"))
    warnings = [r for r in caplog.records if "origin.auth_disabled" in r.getMessage()]
    assert len(warnings) == 1


async def test_without_auth_anonymous_push_works(origin_server: TestServer) -> None:
    data = b"open origin"
    url = f"http://{origin_server.host}:{origin_server.port}/v2/any/repo/blobs/uploads/"
    async with aiohttp.ClientSession() as session:
        resp = await session.post(f"{url}?digest={digest_of(data)}", data=data)
        assert resp.status == 201


# --- containerd -------------------------------------------------------------------------------


@pytest.mark.skipif(not containerd.available(), reason="containerd and ctr are not installed")
async def test_containerd_pulls_with_credentials_and_is_refused_without(
    origin: Origin, layout: Path, tmp_path: Path
) -> None:
    await push(origin, layout, "private/app:v1")
    await push(origin, layout, "public/app:v1")
    with containerd.running_containerd(tmp_path / "ctrd") as ctrd:

        def pull(reference: str, *user: str) -> None:
            ctrd.ctr("images", "pull", "--plain-http", *user, "--snapshotter", "native",
                     f"{origin.host}/{reference}")  # fmt: skip

        await asyncio.to_thread(pull, "public/app:v1")
        with pytest.raises(AssertionError, match=r"401|nauthorized"):
            await asyncio.to_thread(pull, "private/app:v1")
        await asyncio.to_thread(pull, "private/app:v1", "--user", creds("bob"))
    async with aiohttp.ClientSession() as session:
        metrics = parse_metrics(await (await session.get(f"{origin.url}/metrics")).text())
    oauth = 'krill_origin_requests_total{method="POST",route="auth_token_oauth",status="200"}'
    assert metrics.get(oauth, 0) >= 1  # containerd used the OAuth2 form it tries first


@pytest.mark.parametrize("name", ["a%22b", "UPPER/case", "a//b", "a%0d%0aSet-Cookie:%20x"])
async def test_a_hostile_repository_name_never_reaches_the_challenge(
    origin: Origin, name: str
) -> None:
    async with aiohttp.ClientSession() as session:
        resp = await session.get(f"{origin.url}/v2/{name}/manifests/v1")
        if "%0d" in name:  # no route matches a name with a line break: the bare challenge
            assert resp.status == 401
            assert challenge_of(resp) == f'Bearer realm="{origin.url}/auth/token",service="krill"'
            assert "Set-Cookie" not in resp.headers
        else:
            assert resp.status == 400
            assert await error_code(resp) == "NAME_INVALID"
            assert "WWW-Authenticate" not in resp.headers


async def test_a_changed_htpasswd_file_is_read_again_without_a_restart(
    start_origin: StartOrigin, auth_file: Path
) -> None:
    clock = ManualClock()
    origin = Origin(await start_origin(auth=auth_file, clock=clock))
    htpasswd = auth_file.parent / "htpasswd"
    url = f"{origin.url}/v2/"
    async with aiohttp.ClientSession() as session:
        assert (await session.get(url, headers=basic("bob"))).status == 200
        lines = htpasswd.read_text().splitlines()
        htpasswd.write_text("\n".join(line for line in lines if not line.startswith("bob:")))
        assert (await session.get(url, headers=basic("bob"))).status == 200  # still cached
        clock.advance(61)  # credential_cache (60 s) later, bob's check misses the cache
        assert (await session.get(url, headers=basic("bob"))).status == 401
        htpasswd.write_text("this is not an htpasswd file\n")  # a bad edit keeps the users
        assert (await session.get(url, headers=basic("alice"))).status == 200


HOSTILE_AUTHORIZATION = [
    "",
    "Basic",
    "Basic !!!not-base64!!!",
    "Basic " + base64.b64encode(b"no-colon").decode(),
    "Basic " + base64.b64encode(b":empty-user").decode(),
    "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode(),
    "Basic " + base64.b64encode(b"alice:" + b"x" * 5000).decode(),
    "Bearer",
    "Bearer krill.",
    "Bearer krill.e30.AAAA",
    "Bearer krill." + "A" * 8000,  # aiohttp itself refuses headers over 8190 bytes
    "Digest username=alice",
    "basic " + base64.b64encode(b"alice:wrong").decode(),
]


@pytest.mark.parametrize("header", HOSTILE_AUTHORIZATION)
async def test_a_malformed_authorization_header_is_a_401_never_a_crash(
    origin: Origin, header: str
) -> None:
    async with aiohttp.ClientSession() as session:
        for path in ("/v2/", "/v2/public/app/tags/list", "/v2/_catalog", "/auth/token"):
            resp = await session.get(f"{origin.url}{path}", headers={"Authorization": header})
            assert resp.status == 401, path
            assert await error_code(resp) == "UNAUTHORIZED"
