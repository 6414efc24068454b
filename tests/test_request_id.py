"""``X-Request-Id`` and ``--log-format json``: one id from the client via the agent to the origin.

Every service accepts a client's id (or makes one), echoes it in the
response and puts it on each log line it logs for the request; the agent
sends it on to the origin. Checked on real processes logging JSON (the
origin told so by ``krill --log-format json``, the agent by
``KRILL_LOG_FORMAT``), and on the origin app and the log formatter in-process.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from krill.cli import main
from krill.logs import LogFormat, setup_logging
from krill.requestcontext import HEADER, bound_request_id, current_request_id
from tests.agent_cluster import agent_process, build_layout, push
from tests.components import free_port, krill_process
from tests.fixtures_origin import StartOrigin
from tests.polling import until_sync

GENERATED = re.compile(r"^[0-9a-f]{32}$")

# ---- the formatter ------------------------------------------------------------


@pytest.fixture
def restored_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def test_json_lines_carry_time_level_logger_message_and_request_id(
    restored_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    setup_logging("info", LogFormat.JSON)
    logging.getLogger("krill.test").info("fetch.done digest=%s bytes=%d", "sha256:ab", 3)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("krill.test").exception("request.crashed")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert set(first) == {"time", "level", "logger", "message", "request_id"}
    assert first["level"] == "info" and first["logger"] == "krill.test"
    assert first["message"] == "fetch.done digest=sha256:ab bytes=3"
    assert first["request_id"] is None  # logged outside any request
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", first["time"])
    assert second["level"] == "error" and "ValueError: boom" in second["exc"]


def test_text_lines_end_with_the_request_id_inside_a_request(
    restored_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    monkeypatch.delenv("KRILL_LOG_FORMAT", raising=False)
    setup_logging("info")
    with bound_request_id("abc-123"):  # what the middleware does per request
        assert current_request_id() == "abc-123"
        logging.getLogger("krill.test").info("blob.unavailable digest=x")
    assert current_request_id() is None
    assert stream.getvalue().rstrip().endswith("blob.unavailable digest=x request_id=abc-123")


def test_an_unknown_log_format_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SystemExit) as flag:
        main(["--log-format", "yaml", "origin", "--help"])
    assert flag.value.code == 2
    monkeypatch.setenv("KRILL_LOG_FORMAT", "yaml")
    with pytest.raises(SystemExit) as env:
        main(["tracker", "--listen", "127.0.0.1:0"])
    assert env.value.code == 2


# ---- the origin app ------------------------------------------------------------


@pytest.fixture
async def origin(start_origin: StartOrigin, aiohttp_client: AiohttpClient) -> TestClient:
    return await aiohttp_client(await start_origin())


async def test_a_client_id_is_echoed_and_a_missing_or_unfit_one_replaced(
    origin: TestClient,
) -> None:
    async with origin.get("/v2/", headers={HEADER: "client-id.42"}) as answer:
        assert answer.headers[HEADER] == "client-id.42"
    async with origin.get("/v2/") as answer:
        assert GENERATED.match(answer.headers[HEADER])
    for unfit in ("has space", "x" * 200, 'quote"d'):
        async with origin.get("/v2/", headers={HEADER: unfit}) as answer:
            assert GENERATED.match(answer.headers[HEADER]), unfit


async def test_errors_and_unmatched_paths_echo_the_id_too(origin: TestClient) -> None:
    digest = "sha256:" + "0" * 64
    async with origin.get(f"/v2/a/blobs/{digest}", headers={HEADER: "r1"}) as answer:
        assert answer.status == 404 and answer.headers[HEADER] == "r1"
    async with origin.get("/nowhere", headers={HEADER: "r2"}) as answer:
        assert answer.status == 404 and answer.headers[HEADER] == "r2"


# ---- real processes: agent to origin --------------------------------------------


def json_lines(log: Path) -> list[dict[str, object]]:
    """Every line of a service's log, parsed (a line that is not JSON fails the test)."""
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def logged_with(log: Path, request_id: str) -> list[dict[str, object]]:
    return [entry for entry in json_lines(log) if entry["request_id"] == request_id]


@contextlib.contextmanager
def json_origin(root: Path) -> Iterator[str]:
    """An origin started as ``krill --log-format json origin ... --log-level debug``."""
    root.mkdir(parents=True)
    url = f"http://127.0.0.1:{free_port()}"
    args = [
        "--log-format", "json", "origin", "--listen", url.removeprefix("http://"),
        "--data", str(root / "data"), "--log-level", "debug",
    ]  # fmt: skip
    with krill_process(args, root / "origin.log", f"{url}/v2/"):
        yield url


def test_the_agent_forwards_the_request_id_and_both_log_it_as_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = build_layout(tmp_path / "layout", seed=51)
    layer = image.images[0].layers[0]
    with json_origin(tmp_path / "origin") as origin:
        push(image, origin, "team/ids:1")
        monkeypatch.setenv("KRILL_LOG_FORMAT", "json")  # the agent process inherits it
        with agent_process(tmp_path / "agent", origin) as agent:
            monkeypatch.delenv("KRILL_LOG_FORMAT")
            url = f"{agent.registry}/v2/team/ids/blobs/{layer.digest}"
            request = urllib.request.Request(url, headers={HEADER: "pull-7f3a"})
            with urllib.request.urlopen(request, timeout=60) as answer:
                assert answer.headers[HEADER] == "pull-7f3a"
                assert answer.read() == layer.data
            with urllib.request.urlopen(url, timeout=60) as answer:
                assert GENERATED.match(answer.headers[HEADER])
            agent_log = tmp_path / "agent" / "agent.log"
            origin_log = tmp_path / "origin" / "origin.log"
            until_sync(
                lambda: any(
                    str(e["message"]).startswith("fetch.done")
                    for e in logged_with(agent_log, "pull-7f3a")
                ),
                "the agent's fetch.done line carrying the client's id",
            )
            at_origin = logged_with(origin_log, "pull-7f3a")
            assert any(
                str(e["message"]).startswith("http.request method=GET")
                and layer.digest in str(e["message"])
                for e in at_origin
            ), at_origin
    assert "KRILL_LOG_FORMAT" not in os.environ
