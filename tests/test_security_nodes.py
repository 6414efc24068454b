"""Node credentials and announce keys (issue 19): who may use ``/krill/v1/*`` and the tracker.

With ``--auth``, the origin's node endpoints answer only users its auth file
lists under ``nodes``: 401 with a Basic challenge without credentials, 403
for a user who is not a node. A tracker with ``--announce-keys`` answers
only announces that carry a listed key in the path. The last test runs the
whole swarm as real processes (origin seeding with its key, tracker
fetching metainfo with its credentials, two agents with theirs) and checks
the pull came through the swarm, and that no secret reached any log.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
import bcrypt
import pytest
from pytest_aiohttp import AiohttpServer

from krill.config import ConfigError
from krill.nodeauth import keyed_announce_url, load_node_credentials, node_middlewares
from krill.tracker.config import TrackerConfig
from krill.tracker.server import create_app as create_tracker_app
from tests import imagebuild
from tests.agent_cluster import (
    Agent,
    agent_process,
    build_layout,
    origin_process,
    push,
    ready,
    tracker_process,
)
from tests.components import SKOPEO_FLAGS, free_port, skopeo
from tests.fixtures_origin import StartOrigin, digest_of
from tests.origin_auth import AUTH_TOML, PASSWORDS, basic, write_auth_files
from tests.polling import until_sync

NODE_PASSWORDS = {"node1": "node1-secret-77", "node2": "node2-secret-88", "tracker": "trk-99"}
ANNOUNCE_KEYS = {
    "node1": "k1-aaaaaaaaaaaaaaaaaaaa",
    "node2": "k2-bbbbbbbbbbbbbbbbbbbb",
    "origin": "ko-cccccccccccccccccccc",
}
NODES_TOML = 'nodes = ["node1", "node2", "tracker"]\n' + AUTH_TOML


def write_node_auth(directory: Path) -> Path:
    """The tests' auth file with ``nodes``, and the nodes' bcrypt entries in its htpasswd."""
    auth = write_auth_files(directory, NODES_TOML)
    with (directory / "htpasswd").open("a") as htpasswd:
        for user, password in NODE_PASSWORDS.items():
            hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()
            htpasswd.write(f"{user}:{hashed}\n")
    return auth


def write_credentials(path: Path, user: str, *, key: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f'user = "{user}"', f'password = "{NODE_PASSWORDS[user]}"']
    if key and user in ANNOUNCE_KEYS:
        lines.append(f'announce_key = "{ANNOUNCE_KEYS[user]}"')
    path.write_text("\n".join(lines) + "\n")
    return path


def write_announce_keys(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# node:key\n" + "".join(f"{n}:{k}\n" for n, k in ANNOUNCE_KEYS.items()))
    return path


def node_basic(user: str) -> dict[str, str]:
    value = base64.b64encode(f"{user}:{NODE_PASSWORDS[user]}".encode()).decode()
    return {"Authorization": f"Basic {value}"}


async def test_node_endpoints_need_a_node_credential(
    tmp_path: Path, start_origin: StartOrigin
) -> None:
    server = await start_origin(auth=write_node_auth(tmp_path / "auth"))
    base = f"http://{server.host}:{server.port}"
    layer = b"a private layer" * 100
    digest = digest_of(layer)
    async with aiohttp.ClientSession() as session:
        upload = f"{base}/v2/private/app/blobs/uploads/?digest={digest}"
        async with session.post(upload, data=layer, headers=basic("alice")) as resp:
            assert resp.status == 201
        for path in (
            f"/krill/v1/metainfo/{digest}",
            f"/krill/v1/blobs/{digest}",
            f"/krill/v1/deltas/{digest}?have={digest}&repo=private/app",
        ):
            async with session.get(base + path) as resp:
                assert resp.status == 401, path
                assert resp.headers["WWW-Authenticate"].startswith('Basic realm="krill nodes"')
            wrong = {"Authorization": "Basic " + base64.b64encode(b"node1:wrong").decode()}
            async with session.get(base + path, headers=wrong) as resp:
                assert resp.status == 401, path  # and the nodes' challenge, not a token's
                assert resp.headers["WWW-Authenticate"].startswith('Basic realm="krill nodes"')
            async with session.get(base + path, headers=basic("alice")) as resp:
                assert resp.status == 403, path  # a user, but not a node
            async with session.get(base + path, headers=node_basic("node1")) as resp:
                assert resp.status != 401 and resp.status != 403, path
        async with session.post(f"{base}/krill/v1/claims/{digest}") as resp:
            assert resp.status == 401
        # A node reads blobs by digest in any repository (its HTTP fallback asks there) ...
        blob_url = f"{base}/v2/private/app/blobs/{digest}"
        async with session.get(blob_url, headers=node_basic("node2")) as resp:
            assert resp.status == 200
        async with session.get(blob_url) as resp:
            assert resp.status == 401
        # ... but not a private repository's tags or manifests.
        async with session.get(
            f"{base}/v2/private/app/tags/list", headers=node_basic("node1")
        ) as r:
            assert r.status == 403
        wrong = {"Authorization": "Basic " + base64.b64encode(b"node1:wrong").decode()}
        async with session.get(f"{base}/krill/v1/metainfo/{digest}", headers=wrong) as resp:
            assert resp.status == 401


async def test_a_tracker_with_announce_keys_answers_only_listed_keys(
    tmp_path: Path, aiohttp_server: AiohttpServer
) -> None:
    config = TrackerConfig(announce_keys=write_announce_keys(tmp_path / "keys"))
    server = await aiohttp_server(create_tracker_app(config))
    base = f"http://{server.host}:{server.port}"
    query = urllib.parse.urlencode(
        {"info_hash": b"h" * 20, "peer_id": b"p" * 20, "port": 6881, "left": 0}
    )
    async with aiohttp.ClientSession() as session:

        async def announce(url: str) -> bytes:
            async with session.get(f"{url}?{query}") as resp:
                assert resp.status == 200
                return await resp.read()

        assert b"needs a node's announce key" in await announce(f"{base}/announce")
        assert b"not accepted" in await announce(f"{base}/announce/k9-zzzzzzzzzzzzzzzzzzzz")
        keyed = keyed_announce_url(f"{base}/announce", ANNOUNCE_KEYS["node1"])
        answer = await announce(keyed)
        assert b"failure reason" not in answer and b"interval" in answer


def test_node_credentials_files_are_checked_and_never_shown(tmp_path: Path) -> None:
    good = write_credentials(tmp_path / "node1.toml", "node1")
    credentials = load_node_credentials(good)
    assert credentials.user == "node1" and credentials.announce_key == ANNOUNCE_KEYS["node1"]
    assert NODE_PASSWORDS["node1"] not in repr(credentials)
    assert ANNOUNCE_KEYS["node1"] not in repr(credentials)
    broken = tmp_path / "broken.toml"
    broken.write_text(f'user = "node1"\npassword = {NODE_PASSWORDS["node1"]}\n')  # unquoted
    with pytest.raises(ConfigError) as error:
        load_node_credentials(broken)
    assert NODE_PASSWORDS["node1"] not in str(error.value)
    short = tmp_path / "short.toml"
    short.write_text('user = "node1"\npassword = "x"\nannounce_key = "short"\n')
    with pytest.raises(ConfigError, match="announce_key must be 16-128"):
        load_node_credentials(short)


@contextlib.contextmanager
def secured_swarm(root: Path) -> Iterator[tuple[str, str]]:
    """Origin (--auth with nodes, seeding with its key), tracker (keys, credentials)."""
    auth = write_node_auth(root / "auth")
    origin_key = root / "origin-key"
    origin_key.write_text(ANNOUNCE_KEYS["origin"] + "\n")
    keys = write_announce_keys(root / "announce-keys")
    tracker_port = free_port()
    tracker = f"http://127.0.0.1:{tracker_port}"
    with (
        origin_process(
            root / "origin",
            "--auth",
            str(auth),
            "--tracker",
            tracker,
            "--announce-key",
            str(origin_key),
            "--log-level",
            "debug",
        ) as origin,  # fmt: skip
        tracker_process(
            root / "tracker",
            origin,
            port=tracker_port,
            extra=(
                "--announce-keys",
                str(keys),
                "--log-level",
                "debug",
                "--origin-credentials",
                str(write_credentials(root / "tracker.toml", "tracker")),
            ),
        ),  # fmt: skip
    ):
        yield origin, tracker


def node_settings(root: Path, name: str) -> dict[str, object]:
    credentials = write_credentials(root / f"{name}.toml", name)
    return {"swarm_deadline": 20.0, "origin_credentials": str(credentials)}


def pull(agent: Agent, reference: str, out: Path) -> set[str]:
    skopeo(
        "copy", *SKOPEO_FLAGS, f"docker://{agent.registry_hostport}/{reference}", f"oci:{out}:v1"
    )
    return imagebuild.read_oci_layout_digests(out)


@pytest.mark.slow
def test_a_swarm_with_node_credentials_and_announce_keys_pulls_peer_to_peer(
    tmp_path: Path,
) -> None:
    with contextlib.ExitStack() as stack:
        origin, tracker = stack.enter_context(secured_swarm(tmp_path))
        image = build_layout(tmp_path / "layout", seed=41, layer_size=2 * 1024 * 1024)
        push(image, origin, "public/big:1", creds=f"alice:{PASSWORDS['alice']}")
        agents = [
            stack.enter_context(
                agent_process(
                    tmp_path / name, origin, tracker, settings=node_settings(tmp_path, name)
                )
            )
            for name in ("node1", "node2")
        ]
        with ThreadPoolExecutor(2) as pool:
            outs = [tmp_path / f"out-{a.data.parent.name}" for a in agents]
            results = list(pool.map(pull, agents, ["public/big:1"] * 2, outs))
        assert results == [image.digests, image.digests]
        for agent in agents:
            metrics = agent.metrics()
            assert metrics.get('krill_agent_served_bytes_total{source="swarm"}', 0) > 0
            assert metrics.get("krill_agent_origin_http_bytes_total", 0) == 0
            assert metrics.get('krill_agent_swarm_announces{result="ok"}', 0) > 0
    logs = [
        tmp_path / "origin" / "origin.log",
        tmp_path / "tracker" / "tracker.log",
        tmp_path / "node1" / "agent.log",
        tmp_path / "node2" / "agent.log",
    ]
    text = "".join(path.read_text() for path in logs)
    assert "tracker.announce_unauthorized" not in text
    for password in NODE_PASSWORDS.values():
        assert password not in text
        assert base64.b64encode(password.encode()).decode() not in text
    assert "/announce/<redacted>" in text  # the swarm engine's tracker URL, key redacted
    for key in ANNOUNCE_KEYS.values():
        assert key not in text


@pytest.mark.slow
def test_an_agent_without_credentials_gets_no_swarm_from_an_auth_origin(tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        origin, tracker = stack.enter_context(secured_swarm(tmp_path))
        image = build_layout(tmp_path / "layout", seed=43, layer_size=256 * 1024)
        push(image, origin, "public/small:1", creds=f"alice:{PASSWORDS['alice']}")
        agent = stack.enter_context(
            agent_process(tmp_path / "anon", origin, tracker, settings={"swarm_deadline": 2.0})
        )
        assert pull(agent, "public/small:1", tmp_path / "out") == image.digests
        until_sync(
            lambda: agent.metrics().get("krill_agent_origin_http_bytes_total", 0) > 0,
            "the anonymous agent's layers to come over plain HTTP from the origin",
        )
        assert agent.metrics().get('krill_agent_served_bytes_total{source="swarm"}', 0) == 0
        # The tracker refused its announces: counted, and /ready says so and why.
        refused = 'krill_agent_swarm_announces{result="failed"}'
        until_sync(lambda: agent.metrics().get(refused, 0) > 0, "the refused announce counted")
        until_sync(lambda: ready(agent.api)[0] == 503, "the agent unready while refused")
        tracker_check = ready(agent.api)[1]["tracker"]
        assert tracker_check["outcome"] == "fail", tracker_check
        assert "refused this node's last announce" in tracker_check["detail"], tracker_check
        assert "announce key" in tracker_check["detail"], tracker_check
    assert "tracker.announce_unauthorized" in (tmp_path / "tracker" / "tracker.log").read_text()


def test_node_credentials_sent_over_plain_http_off_this_host_are_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The origin warns that its passwords cross the network in the clear; an agent or
    tracker sending the node's password to an http origin said nothing (security review)."""
    credentials = write_credentials(tmp_path / "node1.toml", "node1")
    with caplog.at_level(logging.WARNING, logger="krill.nodeauth"):
        node_middlewares(credentials, ["http://127.0.0.1:5000", "https://origin:5000"])
        assert not caplog.records, "loopback and https carry it safely"
        node_middlewares(credentials, ["http://origin.krill:5000", "http://[::1]:5000"])
    [record] = caplog.records
    message = record.getMessage()
    assert "node.credentials_over_http origins=http://origin.krill:5000 " in message
    assert "in the clear" in message
