"""A response cut short after its headers is logged and counted as such, not as a success.

A real aiohttp app behind ``latency_middleware`` (and the request ids, as every
service has them): a body aborted halfway, one whose abort says why, a client
that goes away mid-body (from a streamed body and from a sendfile'd file), and
complete answers for comparison.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from krill.httpmetrics import CutReason, latency_middleware, mark_cut, request_histogram
from krill.requestcontext import HEADER, current_request_id
from krill.requestid import install_request_ids
from krill.sendfile import ThreadedFileResponse
from tests.polling import until

PROMISED = 1000
BIG = 64 << 20  # far more than the socket buffers hold: the client leaves mid-body


class Lines(logging.Handler):
    """``krill.httpmetrics``'s records, each with the request id bound when it was logged."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen: list[tuple[int, str, str | None]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append((record.levelno, record.getMessage(), current_request_id()))

    def about(self, path: str) -> list[tuple[int, str, str | None]]:
        return [line for line in self.seen if f" path={path} " in line[1]]

    async def only(self, path: str) -> tuple[int, str, str | None]:
        """The one line of ``path``'s request, once it is written."""
        await until(lambda: self.about(path), f"the line of {path}")
        [found] = self.about(path)
        return found


@pytest.fixture
def lines() -> Iterator[Lines]:
    logger = logging.getLogger("krill.httpmetrics")
    handler, level = Lines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


async def _half_then_abort(request: web.Request, reason: CutReason | None) -> web.StreamResponse:
    response = web.StreamResponse()
    response.content_length = PROMISED
    await response.prepare(request)
    await response.write(b"x" * (PROMISED // 2))
    if reason is not None:
        mark_cut(request, reason, PROMISED // 2)
    assert request.transport is not None
    request.transport.abort()
    return response


async def half(request: web.Request) -> web.StreamResponse:
    return await _half_then_abort(request, None)


async def half_marked(request: web.Request) -> web.StreamResponse:
    return await _half_then_abort(request, CutReason.TRANSFER_FAILED)


async def whole(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    response.content_length = PROMISED
    await response.prepare(request)
    await response.write(b"x" * PROMISED)
    await response.write_eof()
    return response


async def endless(request: web.Request) -> web.StreamResponse:
    """Writes until the client's disconnect surfaces (and lets it escape, as aiohttp allows)."""
    response = web.StreamResponse()
    response.content_length = BIG
    await response.prepare(request)
    chunk = b"x" * (1 << 16)
    for _ in range(BIG // len(chunk)):
        await response.write(chunk)
    await response.write_eof()
    return response


async def cut_before_prepare(request: web.Request) -> web.StreamResponse:
    """The agent's range wait: the transfer fails before any header went out."""
    mark_cut(request, CutReason.TRANSFER_FAILED, 0)
    assert request.transport is not None
    request.transport.abort()
    response = web.StreamResponse()
    response.content_length = PROMISED
    return response


async def raise_after_headers(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    response.content_length = PROMISED
    await response.prepare(request)
    await response.write(b"x" * 10)
    raise RuntimeError("the upstream's bytes did not match their digest")


async def upstream_reset(request: web.Request) -> web.StreamResponse:
    """An outgoing connection's reset, before any header: the client is still there."""
    raise ConnectionResetError("upstream closed the connection")


async def head_without_eof(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    response.content_length = PROMISED
    await response.prepare(request)
    return response


class StuckPeerFile(ThreadedFileResponse):
    """A file whose send fails as on a peer that stopped acknowledging."""

    async def _send_body(self, *args: object) -> None:
        raise TimeoutError(110, "Connection timed out")


@pytest.fixture
def big_file(tmp_path: Path) -> Path:
    path = tmp_path / "blob"
    with path.open("wb") as out:
        out.truncate(BIG)
    return path


@pytest.fixture
def answers() -> list[tuple[str, int]]:
    """(path, status) as ``on_answer`` received them."""
    return []


@pytest.fixture
async def served(
    aiohttp_client: object, big_file: Path, answers: list[tuple[str, int]]
) -> tuple[aiohttp.test_utils.TestClient, CollectorRegistry]:
    registry = CollectorRegistry()
    histogram = request_histogram("t_request_seconds", registry, aborted="t_aborted_responses")

    def on_answer(request: web.Request, status: int) -> None:
        answers.append((request.path, status))

    app = web.Application(middlewares=[latency_middleware(histogram, on_answer=on_answer)])
    install_request_ids(app)

    async def file(request: web.Request) -> web.StreamResponse:
        return ThreadedFileResponse(big_file)

    async def stuck_file(request: web.Request) -> web.StreamResponse:
        return StuckPeerFile(big_file)

    app.router.add_head("/head_without_eof", head_without_eof)

    for path, handler in (
        ("/half", half),
        ("/half_marked", half_marked),
        ("/whole", whole),
        ("/endless", endless),
        ("/file", file),
        ("/stuck_file", stuck_file),
        ("/cut_before_prepare", cut_before_prepare),
        ("/raise_after_headers", raise_after_headers),
        ("/upstream_reset", upstream_reset),
    ):
        app.router.add_get(path, handler)
    client = await aiohttp_client(app)  # type: ignore[operator]
    return client, registry


def aborted(registry: CollectorRegistry, route: str, reason: str) -> float:
    found = registry.get_sample_value(
        "t_aborted_responses_total", {"route": route, "reason": reason}
    )
    return found or 0.0


async def cut_short(client: aiohttp.test_utils.TestClient, path: str) -> None:
    """GET ``path``, whose answer the server cuts before its end."""
    with pytest.raises(aiohttp.ClientError):
        async with client.get(path) as response:
            await response.read()


async def leave_mid_body(port: int, path: str) -> None:
    """GET ``path``, read a little of the body, and reset the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    await reader.readuntil(b"\r\n\r\n")
    await reader.readexactly(1024)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    writer.close()


async def test_a_body_aborted_halfway_is_a_warning_and_counted_not_a_success(
    served: tuple[aiohttp.test_utils.TestClient, CollectorRegistry], lines: Lines
) -> None:
    client, registry = served
    with pytest.raises(aiohttp.ClientPayloadError):
        async with client.get("/half") as response:
            assert response.status == 200  # the headers went out before the abort
            request_id = response.headers[HEADER]
            await response.read()
    level, line, logged_id = await lines.only("/half")
    assert level == logging.WARNING
    assert "status=200 outcome=aborted reason=unspecified sent=500 promised=1000" in line
    assert logged_id == request_id
    assert aborted(registry, "/half", "unspecified") == 1


async def test_a_complete_stream_is_complete_and_not_counted(
    served: tuple[aiohttp.test_utils.TestClient, CollectorRegistry], lines: Lines
) -> None:
    client, registry = served
    for path in ("/whole", "/file"):
        async with client.get(path) as response:
            body = await response.read()
            request_id = response.headers[HEADER]
        assert len(body) == (PROMISED if path == "/whole" else BIG)
        level, line, logged_id = await lines.only(path)
        assert level == logging.DEBUG
        assert f"status=200 outcome=complete sent={len(body)} promised={len(body)}" in line
        assert logged_id == request_id  # the file's line too, written after its handler
    assert not [r for r in registry.collect() if r.name == "t_aborted_responses" and r.samples]


@pytest.mark.parametrize("path", ["/endless", "/file"])
async def test_a_client_that_leaves_mid_body_is_client_gone_at_debug(
    served: tuple[aiohttp.test_utils.TestClient, CollectorRegistry], lines: Lines, path: str
) -> None:
    client, registry = served
    assert client.port is not None
    await leave_mid_body(client.port, path)
    level, line, logged_id = await lines.only(path)
    assert level == logging.DEBUG  # a client that goes away is nothing to warn about
    assert "outcome=client_gone reason=client_gone" in line
    if path == "/file":  # the streamed one's escaping disconnect leaves no response to read
        assert f"sent=- promised={BIG}" in line  # sendfile's bytes are not counted
    assert logged_id is not None
    assert aborted(registry, path, "client_gone") == 1


async def test_an_outgoing_connections_reset_is_a_500_not_a_client_gone(
    served: tuple[aiohttp.test_utils.TestClient, CollectorRegistry],
    lines: Lines,
    answers: list[tuple[str, int]],
) -> None:
    client, registry = served
    async with client.get("/upstream_reset") as response:
        assert response.status == 500  # the client was there to be answered
    level, line, _ = await lines.only("/upstream_reset")
    assert level == logging.DEBUG
    assert "status=500 outcome=complete" in line
    assert aborted(registry, "/upstream_reset", "client_gone") == 0
    assert ("/upstream_reset", 500) in answers


async def test_a_head_answer_without_an_eof_owes_no_body(
    served: tuple[aiohttp.test_utils.TestClient, CollectorRegistry], lines: Lines
) -> None:
    client, registry = served
    async with client.head("/head_without_eof") as response:
        assert response.status == 200
    level, line, _ = await lines.only("/head_without_eof")
    assert level == logging.DEBUG
    assert "outcome=complete sent=0 promised=1000" in line
    assert aborted(registry, "/head_without_eof", "unspecified") == 0


async def test_a_file_answer_is_counted_under_the_status_it_sent(
    served: tuple[aiohttp.test_utils.TestClient, CollectorRegistry],
    lines: Lines,
    answers: list[tuple[str, int]],
) -> None:
    client, _ = served
    async with client.get("/file", headers={"Range": "bytes=0-99"}) as response:
        assert response.status == 206
        assert len(await response.read()) == 100
    _, line, _ = await lines.only("/file")
    assert "status=206 outcome=complete sent=100 promised=100" in line
    assert answers == [("/file", 206)]  # not the 200 its handler returned


@pytest.mark.parametrize(
    ("path", "reason", "told"),
    [
        ("/half_marked", "transfer_failed", "sent=500 promised=1000"),  # the abort says why
        ("/cut_before_prepare", "transfer_failed", "sent=0 promised=1000"),
        ("/raise_after_headers", "handler_failed", "sent=- promised=-"),  # response lost
        ("/stuck_file", "unspecified", f"sent=- promised={BIG}"),  # a file send that fails
    ],
)
async def test_an_answer_cut_short_is_a_warning_with_its_reason_and_counted(
    served: tuple[aiohttp.test_utils.TestClient, CollectorRegistry],
    lines: Lines,
    path: str,
    reason: str,
    told: str,
) -> None:
    client, registry = served
    await cut_short(client, path)
    level, line, _ = await lines.only(path)
    assert level == logging.WARNING
    assert f"outcome=aborted reason={reason} " in line
    assert told in line
    assert aborted(registry, path, reason) == 1
