"""``/ready`` on the agent, origin and tracker: named checks, 200 when all pass, 503 otherwise.

The checks themselves (``krill.readiness``) run against probes the test
controls; the services run for real: a tracker whose Redis goes away, and an
origin, tracker and agent as processes, where stopping the tracker makes the
agent and the origin unready and starting it again makes them ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from pytest_aiohttp import AiohttpServer
from yarl import URL

from krill.origin.config import OriginConfig
from krill.origin.readiness import bucket_reachable
from krill.origin.server import create_app
from krill.origin.storage import ObjectStore, install_object_storage
from krill.readiness import (
    Check,
    CheckFailed,
    Outcome,
    Skipped,
    ready_response,
    run_checks,
    writable,
)
from krill.s3backend import S3Backend
from krill.s3client import S3Location
from krill.s3sign import Credentials
from tests.agent_cluster import agent_process, origin_process, ready, tracker_process
from tests.clocks import ManualClock
from tests.components import free_port, redis_server
from tests.fixtures_origin import StartOrigin
from tests.polling import until, until_sync
from tests.s3_fixtures import SeaweedFS, s3_location, seaweedfs
from tests.swarm_helpers import running_tracker
from tests.test_origin_s3 import credentials_file, storage_url

__all__ = ["s3_location", "seaweedfs"]  # fixtures used here

# ---- the checks, run and rendered ---------------------------------------------


async def test_each_check_is_named_with_its_outcome() -> None:
    async def fine() -> str:
        return "all good"

    async def broken() -> str:
        raise CheckFailed("the disk is full")

    async def unused() -> str:
        raise Skipped("not configured")

    async def crashing() -> str:
        raise ConnectionResetError("peer reset")

    checks = [
        Check("a", fine),
        Check("b", broken),
        Check("c", unused),
        Check("d", crashing),
    ]
    results = await run_checks(checks)
    assert [(r.name, r.outcome) for r in results] == [
        ("a", Outcome.PASS),
        ("b", Outcome.FAIL),
        ("c", Outcome.SKIPPED),
        ("d", Outcome.FAIL),
    ]
    assert results[0].detail == "all good"
    assert results[1].detail == "the disk is full"
    assert "peer reset" in results[3].detail


async def test_a_hanging_check_times_out_by_name_while_the_others_answer() -> None:
    clock = ManualClock()
    never = asyncio.Event()

    async def hangs() -> str:
        await never.wait()
        return "unreachable"

    async def fine() -> str:
        return "ok"

    running = asyncio.create_task(
        run_checks([Check("hung", hangs), Check("fine", fine)], seconds=2.0, clock=clock)
    )
    await until(lambda: clock.sleepers == 1, "the hung check's timeout armed")
    clock.advance(2.0)
    results = await running
    assert [(r.name, r.outcome) for r in results] == [
        ("hung", Outcome.TIMEOUT),
        ("fine", Outcome.PASS),
    ]
    assert results[0].seconds == 2.0


async def test_ready_is_200_when_all_pass_or_are_skipped_and_503_otherwise() -> None:
    async def fine() -> str:
        return "ok"

    async def unused() -> str:
        raise Skipped("off")

    async def broken() -> str:
        raise CheckFailed("down")

    ready = ready_response(await run_checks([Check("a", fine), Check("b", unused)]))
    assert ready.status == 200
    assert ready.body is not None and isinstance(ready.body, bytes)
    body = json.loads(ready.body)
    assert body["status"] == "ready"
    assert body["checks"]["b"]["outcome"] == "skipped"
    unready = ready_response(await run_checks([Check("a", fine), Check("c", broken)]))
    assert unready.status == 503
    assert isinstance(unready.body, bytes)
    assert json.loads(unready.body)["checks"]["c"] == {
        "outcome": "fail",
        "detail": "down",
        "seconds": pytest.approx(0, abs=5),
    }
    degraded = ready_response(await run_checks([Check("a", fine), Check("c", broken, False)]))
    assert degraded.status == 200 and isinstance(degraded.body, bytes)
    assert json.loads(degraded.body)["status"] == "degraded"


async def test_a_read_only_directory_is_not_writable(tmp_path: Path) -> None:
    assert "writable" in await writable(tmp_path)
    assert not any(tmp_path.iterdir())  # noqa: ASYNC240 (the probe file is gone again)
    with pytest.raises(OSError):
        await writable(tmp_path / "missing")


# ---- the tracker: its peer store ------------------------------------------------


async def ready_of(http: aiohttp.ClientSession, base: str) -> tuple[int, dict[str, object]]:
    async with http.get(f"{base}/ready") as response:
        return response.status, await response.json()


async def test_tracker_is_ready_with_its_memory_store(http: aiohttp.ClientSession) -> None:
    async with running_tracker() as tracker:
        status, body = await ready_of(http, tracker)
    assert status == 200 and body["status"] == "ready"
    assert body["checks"]["peer_store"]["outcome"] == "pass"  # type: ignore[index]
    assert body["checks"]["peer_store"]["detail"] == "in memory"  # type: ignore[index]


async def test_tracker_turns_unready_when_its_redis_stops(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    with contextlib.ExitStack() as redis:
        redis_url = redis.enter_context(redis_server(tmp_path / "redis"))
        async with running_tracker(redis=redis_url) as tracker:
            status, body = await ready_of(http, tracker)
            assert status == 200, body
            assert body["checks"]["peer_store"]["detail"] == "redis answered PING"  # type: ignore[index]
            redis.close()  # redis-server is stopped
            status, body = await ready_of(http, tracker)
            assert status == 503, body
            assert body["status"] == "not_ready"
            assert body["checks"]["peer_store"]["outcome"] in ("fail", "timeout")  # type: ignore[index]


# ---- the origin: its bucket, when its storage is one --------------------------------


async def test_an_origin_on_a_bucket_checks_it(
    tmp_path: Path,
    seaweedfs: SeaweedFS,
    s3_location: S3Location,
    aiohttp_server: AiohttpServer,
    http: aiohttp.ClientSession,
) -> None:
    config = OriginConfig(
        data=tmp_path / "origin",
        storage=storage_url(s3_location),
        s3_credentials=credentials_file(seaweedfs, tmp_path),
        deltas=False,
    )
    app = create_app(config)
    install_object_storage(app, config)
    server = await aiohttp_server(app)
    status, body = await ready_of(http, str(server.make_url("")).rstrip("/"))
    assert status == 200, body
    assert body["checks"]["bucket"]["outcome"] == "pass"  # type: ignore[index]
    assert s3_location.bucket in body["checks"]["bucket"]["detail"]  # type: ignore[index]


async def test_a_bucket_that_does_not_answer_fails_the_check() -> None:
    endpoint = URL(f"http://127.0.0.1:{free_port()}")
    backend = S3Backend(S3Location(endpoint, "b"), Credentials("a", "s"), retry_delays=(0, 0))
    try:
        checks = [Check("bucket", lambda: bucket_reachable(ObjectStore(backend)))]
        [result] = await run_checks(checks)
    finally:
        await backend.close()
    assert result.outcome in (Outcome.FAIL, Outcome.TIMEOUT)
    assert result.outcome is Outcome.TIMEOUT or str(endpoint.port) in result.detail


async def test_a_directory_origin_skips_the_bucket(
    start_origin: StartOrigin, http: aiohttp.ClientSession
) -> None:
    server = await start_origin()
    status, body = await ready_of(http, str(server.make_url("")).rstrip("/"))
    assert status == 200
    assert body["checks"]["bucket"]["outcome"] == "skipped"  # type: ignore[index]
    assert body["checks"]["tracker"]["outcome"] == "skipped"  # type: ignore[index]


# ---- real processes: the tracker stops and comes back ----------------------------


def health(base: str) -> dict[str, object]:
    with urllib.request.urlopen(f"{base}/health", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("application/json")
        return dict(json.loads(response.read()))


@dataclass
class Cluster:
    origin: str
    tracker: str
    agent: str
    root: Path
    tracker_running: contextlib.ExitStack

    def stop_tracker(self) -> None:
        self.tracker_running.close()

    def start_tracker(self) -> None:
        port = int(self.tracker.rsplit(":", 1)[1])
        self.tracker_running.enter_context(
            tracker_process(self.root / "tracker", NO_ORIGIN, port=port)
        )


NO_ORIGIN = "http://127.0.0.1:1"  # the tracker's metainfo source; nothing here asks for any


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A seeding origin, a tracker on a known port and an agent using both."""
    root = tmp_path_factory.mktemp("readiness")
    tracker = f"http://127.0.0.1:{free_port()}"
    with contextlib.ExitStack() as tracker_running:
        cluster = Cluster("", tracker, "", root, tracker_running)
        cluster.start_tracker()
        with origin_process(root / "origin", "--tracker", tracker) as origin:
            with agent_process(root / "agent", origin, tracker) as agent:
                cluster.origin, cluster.agent = origin, agent.api
                yield cluster


def test_health_answers_json_on_every_service(cluster: Cluster) -> None:
    for base in (cluster.origin, cluster.tracker, cluster.agent):
        assert health(base)["status"] == "ok"


def test_ready_names_each_check_of_each_service(cluster: Cluster) -> None:
    status, checks = ready(cluster.agent)
    assert status == 200, checks
    assert list(checks) == ["origin", "tracker", "cache", "swarm"]
    assert all(check["outcome"] == "pass" for check in checks.values()), checks
    status, checks = ready(cluster.origin)
    assert status == 200, checks
    assert {name: c["outcome"] for name, c in checks.items()} == {
        "store": "pass",
        "bucket": "skipped",
        "tracker": "pass",
    }
    status, checks = ready(cluster.tracker)
    assert status == 200 and checks["peer_store"]["outcome"] == "pass"


def test_while_the_tracker_is_stopped_the_agent_is_unready_and_the_origin_degraded(
    cluster: Cluster,
) -> None:
    agent, origin = cluster.agent, cluster.origin
    assert ready(agent)[0] == 200 and ready(origin)[0] == 200
    cluster.stop_tracker()
    until_sync(lambda: ready(agent)[0] == 503, "the agent turns unready")
    checks = ready(agent)[1]
    assert checks["tracker"]["outcome"] == "fail", checks
    assert checks["origin"]["outcome"] == "pass" and checks["cache"]["outcome"] == "pass"
    # The origin still serves the registry: it reports the tracker, and stays ready.
    until_sync(lambda: ready(origin)[1]["tracker"]["outcome"] == "fail", "the origin sees it")
    with urllib.request.urlopen(f"{origin}/ready", timeout=10) as response:
        assert response.status == 200 and json.loads(response.read())["status"] == "degraded"
    cluster.start_tracker()
    until_sync(lambda: ready(agent)[0] == 200, "the agent is ready again")
    until_sync(lambda: ready(origin)[1]["tracker"]["outcome"] == "pass", "the origin sees it back")
