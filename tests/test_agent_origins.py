"""An agent given several origin replicas asks each blob's owner first, the others when it fails.

Two ``krill origin`` processes on one SeaweedFS bucket prefix, ranking their
blobs by rendezvous hashing (``--replicas``), and an agent given both
(``--origin A,B``, HTTP fallback only: no tracker). Origin B is reached
through a gated proxy, which is also B's ``--replica-url``, so the agent and
the origins rank the same two URLs. Blobs pulled through the agent come
each from its owner: each origin's ``krill_origin_bytes_served`` is exactly
the bytes of the blobs it owns. Then a large blob owned by B: its response is
held after its first MiB, B is SIGKILLed, and the rest (what the sockets
held, then a Range request to A) completes the blob, verified; a blob owned
by B asked for afterwards comes from A without waiting on B.

The agent's config parsing of the list and the ``dns+`` form is checked too, and
a Service's IPv6 (AAAA) answers as bracketed URLs that connect.
"""

from __future__ import annotations

import asyncio
import hashlib
import signal
import socket
import urllib.request
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer
from yarl import URL

from krill.agent.config import AgentConfig
from krill.agent.origins import FailoverOriginClient, OriginSet, ask_origin, origin_set
from krill.config import ConfigError
from krill.digests import Digest
from krill.registry_errors import RegistryError
from krill.rendezvous import owner, rank
from krill.s3backend import S3Location
from tests.agent_cluster import agent_process
from tests.clocks import ManualClock
from tests.components import free_port, krill_process
from tests.faults import gated_proxy
from tests.metrics_text import read_metrics
from tests.polling import until
from tests.s3_fixtures import SeaweedFS, s3_location, seaweedfs
from tests.test_origin_s3 import credentials_file, payload, storage_url

__all__ = ["s3_location", "seaweedfs"]  # fixtures used here

SERVED = "krill_origin_bytes_served_total"


def test_the_origin_setting_takes_a_list_or_a_service_name() -> None:
    one = AgentConfig(origin="http://a:8000/")
    assert (one.origin, one.origins, one.origin_dns) == ("http://a:8000", ["http://a:8000"], "")
    two = AgentConfig(origin="http://a:8000, http://b:8000/")
    assert (two.origin, two.origins) == ("http://a:8000", ["http://a:8000", "http://b:8000"])
    service = AgentConfig(origin="dns+http://krill-origin-replicas:5000")
    assert service.origin == "http://krill-origin-replicas:5000"
    assert service.origin_dns == "http://krill-origin-replicas:5000" and service.origins == []
    with pytest.raises(ConfigError, match="--origin"):
        AgentConfig(origin="http://a:8000,ftp://b")
    with pytest.raises(ConfigError, match="dns"):
        AgentConfig(origin="dns+ftp://replicas:21")


def test_a_failed_origin_goes_last_for_a_while_then_is_tried_first_again() -> None:
    clock = ManualClock()
    members = ["http://a:5000", "http://b:5000", "http://c:5000"]
    origins = OriginSet(members, retry_after=10.0, clock=clock)
    digest = Digest.parse(_digest(b"layer"))
    ranked = origins.ranking(digest)
    assert ranked == rank(str(digest), members)  # the origins' own order
    origins.failed(ranked[0])
    assert origins.ranking(digest) == [*ranked[1:], ranked[0]]
    clock.advance(10.0)
    assert origins.ranking(digest) == ranked
    origins.failed(ranked[1])
    origins.answered(ranked[1])  # it answered another request meanwhile
    assert origins.ranking(digest) == ranked


async def test_manifests_go_to_the_next_replica_when_the_first_listed_is_gone(
    aiohttp_server: AiohttpServer,
) -> None:
    asked: list[str] = []

    async def manifest(request: web.Request) -> web.Response:
        asked.append(request.path)
        return web.Response(body=b"{}", content_type="application/json")

    app = web.Application()
    app.router.add_get("/v2/{repo:.+}/manifests/{ref}", manifest)
    server = await aiohttp_server(app)
    gone = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    alive = str(server.make_url("")).rstrip("/")
    origins = OriginSet([gone, alive])
    async with aiohttp.ClientSession() as session:
        client = FailoverOriginClient(session, origins)
        url = client.manifest_url("team/app", "v1")
        assert url.startswith(gone)  # the first listed
        for _ in range(2):  # the second time, the gone one is not asked first
            answer = await client.get_bytes(url, limit=1024, what="manifest", ok=200)
            assert answer.status == 200 and answer.body == b"{}"
            assert origins.failing() == {gone}
        assert asked == ["/v2/team/app/manifests/v1"] * 2
        assert client.manifest_url("team/app", "v1").startswith(alive)


async def test_a_hung_first_replica_times_out_and_the_next_answers_the_client(
    aiohttp_server: AiohttpServer,
) -> None:
    """The bound is per replica: one bound on the whole was spent on the hung one,
    and the client got a 503 naming the healthy replica (ops review, 2026-12-07)."""
    never = asyncio.Event()

    async def hung(request: web.Request) -> web.Response:
        await never.wait()  # accepted the connection, never answers (SIGSTOPped)
        raise AssertionError("unreachable")

    async def tags(request: web.Request) -> web.Response:
        return web.json_response({"name": "team/app", "tags": ["v1"]})

    hung_app, alive_app = web.Application(), web.Application()
    hung_app.router.add_get("/v2/{repo:.+}/tags/list", hung)
    alive_app.router.add_get("/v2/{repo:.+}/tags/list", tags)
    first = str((await aiohttp_server(hung_app)).make_url("")).rstrip("/")
    second = str((await aiohttp_server(alive_app)).make_url("")).rstrip("/")
    origins = OriginSet([first, second])
    too_large = RegistryError("UNSUPPORTED", "too large")
    async with aiohttp.ClientSession() as session:
        client = FailoverOriginClient(session, origins)
        url = f"{client.base_url}/v2/team/app/tags/list"
        answer = await ask_origin(
            client, url, what="tag list", limit=1024, seconds=0.2, headers={},
            too_large=too_large,
        )
        assert answer.status == 200 and b"v1" in answer.body
        assert origins.failing() == {first}
        gone = f"http://127.0.0.1:{free_port()}"  # with no replica answering, the
        neither = FailoverOriginClient(session, OriginSet([first, gone]))  # 503 names both
        with pytest.raises(RegistryError) as refused:
            await ask_origin(
                neither, f"{first}/v2/team/app/tags/list", what="tag list", limit=1024,
                seconds=0.2, headers={}, too_large=too_large,
            )
    assert refused.value.code == "UNAVAILABLE"
    assert first in refused.value.message and gone in refused.value.message


async def test_a_service_name_resolves_to_one_url_per_address() -> None:
    origins = OriginSet([], URL("http://localhost:5000"))
    await origins.refresh()
    assert "http://127.0.0.1:5000" in origins.members


async def test_a_services_ipv6_addresses_become_bracketed_urls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """AAAA answers are IPv6 literals: in a URL they need brackets, or the port reads
    as part of the address."""

    async def answers(host: str, port: int, **_kwargs: object) -> list[tuple[object, ...]]:
        assert (host, port) == ("krill-origin-replicas", 5000)
        return [
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("fd00::5", port, 0, 0)),
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("fd00::6", port, 0, 0)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.7", port)),
        ]

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", answers)
    origins = OriginSet([], URL("http://krill-origin-replicas:5000"))
    await origins.refresh()
    assert origins.members == [
        "http://10.0.0.7:5000", "http://[fd00::5]:5000", "http://[fd00::6]:5000"
    ]
    digest = Digest.parse(_digest(b"layer"))
    assert origins.ranking(digest) == rank(str(digest), origins.members)


async def test_a_replica_found_at_an_ipv6_address_answers_at_its_url(
    aiohttp_server: AiohttpServer,
) -> None:
    async def ready(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/ready", ready)
    server = await aiohttp_server(app, host="::1")
    origins = origin_set(AgentConfig(origin=f"dns+http://[::1]:{server.port}"))
    assert origins is not None
    await origins.refresh()
    assert origins.members == [f"http://[::1]:{server.port}"]
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{origins.members[0]}/ready") as resp,
    ):
        assert resp.status == 200


def blob_via(agent_registry: str, digest: str) -> bytes:
    url = f"{agent_registry}/v2/team/app/blobs/{digest}"
    with urllib.request.urlopen(url, timeout=120) as resp:
        return bytes(resp.read())


def push_blob(origin: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    url = f"{origin}/v2/team/app/blobs/uploads/?digest={digest}"
    request = urllib.request.Request(url, data=data, method="POST")
    with urllib.request.urlopen(request, timeout=120) as resp:
        assert resp.status == 201
    return digest


def served(origin: str) -> float:
    return read_metrics(origin).get(SERVED, 0.0)


@pytest.mark.slow
async def test_an_agent_asks_each_blobs_owner_and_finishes_from_the_other_when_it_dies(
    seaweedfs: SeaweedFS, s3_location: S3Location, tmp_path: Path
) -> None:
    config = tmp_path / "origin.toml"
    config.write_text(f's3_credentials = "{credentials_file(seaweedfs, tmp_path)}"\n')
    port_a, port_b = free_port(), free_port()
    a_url, b_direct = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"
    with gated_proxy(port_b) as proxy:
        b_url = proxy.url  # how the agent and A reach B
        members = [a_url, b_url]

        def args(name: str, port: int, me: str) -> list[str]:
            root = tmp_path / name
            root.mkdir()
            return [
                *("origin", "--config", str(config), "--listen", f"127.0.0.1:{port}"),
                *("--data", str(root / "data"), "--storage", storage_url(s3_location)),
                *("--replicas", ",".join(members), "--replica-url", me),
            ]

        small = [payload(seed, 200_000) for seed in range(300, 340)]
        by_owner = {m: [d for d in small if owner(_digest(d), members) == m] for m in members}
        first = by_owner[a_url][:3] + by_owner[b_url][:3]
        later = by_owner[b_url][3]
        big = next(
            d
            for d in (payload(seed, 32 << 20) for seed in range(400, 420))
            if owner(_digest(d), members) == b_url
        )
        b_log, a_log = tmp_path / "b" / "origin.log", tmp_path / "a" / "origin.log"
        with (
            krill_process(args("b", port_b, b_url), b_log, f"{b_direct}/v2/") as b,
            krill_process(args("a", port_a, a_url), a_log, f"{a_url}/v2/"),
        ):
            for data in [*first, later, big]:
                await asyncio.to_thread(push_blob, a_url, data)
            before = {a_url: served(a_url), b_url: served(b_direct)}
            settings = {"origin_timeout": 10.0}  # a loaded machine is not a dead origin
            with agent_process(tmp_path / "agent", f"{a_url},{b_url}", settings=settings) as agent:
                for data in first:
                    assert await asyncio.to_thread(blob_via, agent.registry, _digest(data)) == data
                owned = {m: sum(len(d) for d in first if d in by_owner[m]) for m in members}
                assert served(a_url) - before[a_url] == owned[a_url]
                assert served(b_direct) - before[b_url] == owned[b_url]

                # B dies while sending the big blob: the agent resumes it from A.
                proxy.stop_responses_after(1 << 20)
                pull = asyncio.create_task(
                    asyncio.to_thread(blob_via, agent.registry, _digest(big))
                )
                await until(lambda: proxy.waiting_at_gate, "the big blob at the gate", within=60)
                b.send_signal(signal.SIGKILL)
                b.wait(timeout=30)
                proxy.open_gate()
                assert hashlib.sha256(await pull).hexdigest() == _digest(big)[7:]
                agent_log = (tmp_path / "agent" / "agent.log").read_text()
                assert f"origin_fetch.resume digest={_digest(big)}" in agent_log
                assert f"agent.origin_down origin={b_url}" in agent_log

                # B's next blob comes from A, which now owns it (B is out of A's ranking).
                assert await asyncio.to_thread(blob_via, agent.registry, _digest(later)) == later
                agent_log = (tmp_path / "agent" / "agent.log").read_text()
                line = f"origin_fetch.replica digest={_digest(later)} origin={a_url} rank=0"
                assert line in agent_log


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
