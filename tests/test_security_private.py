"""Private images stay private on the node (issue 19).

Real processes: an origin with ``--auth``, an agent with node credentials,
and two containerd clients on the same node pulling through it, one with the
pull secret (bob may read ``private/**``) and one without. The first gets
the image through the agent, which follows the origin's challenge via the
agent's own ``/auth/token``; the second is refused with 401 although every
layer is on the agent's disk by then. Plain HTTP requests check the exact
answers: the challenge's realm, 403 for a user the rules do not let read,
and the public repository open to anonymous as before.
"""

from __future__ import annotations

import base64
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from krill.agent.access import Access, RepositoryAccess, agent_realm_challenge
from krill.blobstore import BlobStore
from krill.digests import Digest
from krill.originclient import OriginClient
from tests import containerd
from tests.agent_cluster import agent_process, build_layout, origin_process, push
from tests.clocks import ManualClock
from tests.origin_auth import PASSWORDS, creds
from tests.test_agent_containerd import write_hosts
from tests.test_security_nodes import write_credentials, write_node_auth

ALICE = f"alice:{PASSWORDS['alice']}"


def get(url: str, user: str | None = None) -> tuple[int, dict[str, str], bytes]:
    headers = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
    if user is not None:
        value = base64.b64encode(f"{user}:{PASSWORDS[user]}".encode()).decode()
        headers["Authorization"] = f"Basic {value}"
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.mark.skipif(not containerd.available(), reason="containerd and ctr are not installed")
def test_of_two_containerd_clients_on_one_node_only_the_one_with_the_secret_pulls(
    tmp_path: Path,
) -> None:
    auth = write_node_auth(tmp_path / "auth")
    credentials = write_credentials(tmp_path / "node1.toml", "node1")
    with origin_process(tmp_path / "origin", "--auth", str(auth)) as origin:
        host = origin.removeprefix("http://")
        image = build_layout(tmp_path / "layout", seed=53)
        push(image, origin, "private/app:1", creds=ALICE)
        push(image, origin, "public/app:1", creds=ALICE)
        settings = {"origin_credentials": str(credentials)}
        with (
            agent_process(tmp_path / "agent", origin, settings=settings) as agent,
            containerd.running_containerd(tmp_path / "with-secret") as with_secret,
            containerd.running_containerd(tmp_path / "without") as without,
        ):
            hosts = tmp_path / "hosts"
            write_hosts(hosts, agent.registry_hostport, f"{host}=http://{host}")
            reference = f"{host}/private/app:1"
            with_secret.ctr(
                "images", "pull", "--hosts-dir", str(hosts), "--user", creds("bob"),
                "--snapshotter", "native", reference,
            )  # fmt: skip
            assert with_secret.image_digest(reference) == image.top.digest
            blobs = [b for img in image.images for b in img.blobs()]
            store = BlobStore(agent.data / "blobs")
            assert all(store.has(Digest.parse(b.digest)) for b in blobs)  # via the agent
            with pytest.raises(AssertionError, match=r"401|nauthorized"):
                without.pull(reference, hosts)

            layer = f"{agent.registry}/v2/private/app/blobs/{blobs[-1].digest}"
            status, headers, _ = get(layer)
            assert status == 401  # on disk, and still not for a client without credentials
            assert headers["WWW-Authenticate"].startswith(
                f'Bearer realm="{agent.registry}/auth/token",service="krill",'
                'scope="repository:private/app:pull"'
            )
            status, _, body = get(layer, "bob")
            assert status == 200 and body == blobs[-1].data
            assert get(layer, "carol")[0] == 403  # signed in, not allowed by the rules
            manifest = f"{agent.registry}/v2/private/app/manifests/{image.top.digest}"
            assert get(manifest)[0] == 401  # a cached manifest too
            assert get(manifest, "bob")[0] == 200
            public = f"{agent.registry}/v2/public/app/blobs/{blobs[-1].digest}"
            assert get(public)[0] == 200  # what anonymous may read stays open
    log = (tmp_path / "agent" / "agent.log").read_text()
    for secret in (PASSWORDS["bob"], base64.b64encode(creds("bob").encode()).decode()):
        assert secret not in log


async def test_access_decisions_are_kept_briefly_per_credential_and_outlive_an_outage(
    aiohttp_server: AiohttpServer,
) -> None:
    """``RepositoryAccess`` on a ManualClock against a stand-in origin that counts HEADs."""
    heads: list[str | None] = []
    down = False

    async def head(request: web.Request) -> web.Response:
        if down:
            return web.Response(status=503)
        authorization = request.headers.get("Authorization")
        heads.append(authorization)
        if authorization == "Bearer good":
            return web.Response(status=200)
        return web.Response(status=401, headers={"WWW-Authenticate": 'Bearer realm="x"'})

    app = web.Application()
    app.router.add_route("HEAD", "/v2/{name:.+}/blobs/{digest}", head)
    server = await aiohttp_server(app)
    clock = ManualClock()
    async with aiohttp.ClientSession() as session:
        origin = OriginClient(session, f"http://{server.host}:{server.port}")
        access = RepositoryAccess(origin, ttl=30.0, clock=clock)
        digest = "sha256:" + "a" * 64
        assert (await access.blob("private/app", digest, None)).access is Access.UNAUTHORIZED
        allowed = await access.blob("private/app", digest, "Bearer good")
        assert allowed.access is Access.ALLOWED
        assert (await access.blob("private/app", digest, "Bearer good")).access is Access.ALLOWED
        assert heads == [None, "Bearer good"]  # the second answer came from memory
        clock.advance(31)
        down = True  # expired, and the origin cannot be asked: the last answer stands
        assert (await access.blob("private/app", digest, "Bearer good")).access is Access.ALLOWED
        unknown = await access.blob("private/app", digest, "Bearer never-seen")
        assert unknown.access is Access.UNAVAILABLE  # never opened by an outage
        down = False
        assert (await access.blob("private/app", digest, "Bearer good")).access is Access.ALLOWED
        assert heads == [None, "Bearer good", "Bearer good"]


def test_the_challenge_names_the_agents_token_endpoint() -> None:
    origin_challenge = 'Bearer realm="http://origin:5000/auth/token",service="krill",scope="s"'
    rewritten = agent_realm_challenge(origin_challenge, "http://127.0.0.1:7401/auth/token")
    assert rewritten == 'Bearer realm="http://127.0.0.1:7401/auth/token",service="krill",scope="s"'
    bare = agent_realm_challenge(None, "http://a/auth/token")
    assert bare == 'Bearer realm="http://a/auth/token",service="krill"'
