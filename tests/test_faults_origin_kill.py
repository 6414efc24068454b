"""The origin killed (SIGKILL) while it serves a blob: nobody gets a partial blob as whole.

``tests/test_origin_crash.py`` kills it mid-upload. Here it dies mid-download:

* a client reading straight from the origin sees a body shorter than its
  Content-Length (an error, never a complete-looking blob), and the restarted
  origin serves the blob whole: nothing it held was touched;
* an agent fetching the blob over HTTP resumes with ``Range`` once the origin
  is back, so the client streaming through the agent gets exactly the blob
  and the agent's cache holds it verified;
* with the origin staying down past the agent's resume attempts, the client's
  transfer is cut short, the agent keeps no partial file and no index entry,
  and the next pull succeeds once the origin returns.

Between agent and origin sits a ``GatedProxy`` (tests/faults.py): it stops
the response after 1 MiB, so the origin is provably mid-transfer when it is
killed, and it holds the agent's reconnection until the restarted origin
answers, so the outcome does not depend on how long a restart takes.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from krill.blobstore import BlobStore
from krill.digests import Digest
from tests.agent_cluster import Agent, agent_process, wait_until
from tests.components import free_port
from tests.faults import (
    GatedProxy,
    RestartableOrigin,
    gated_proxy,
    get_body,
    incoming_files,
    push_blob,
    stored_blobs,
)

pytestmark = pytest.mark.slow

MiB = 1024 * 1024
REPO = "team/app"
# Far more than loopback's socket buffers hold (tcp_rmem's 32 MiB ceiling among them):
# a sender stopped by a reader that stopped is surely still mid-blob.
BLOB_SIZE = 64 * MiB
# What urllib raises for a body cut short, a reset connection or a refused request.
CUT_SHORT = (http.client.IncompleteRead, urllib.error.URLError, ConnectionError)
# HTTP only (no tracker, no deltas): the path under test. The agent waits for the
# restarted origin as long as the proxy holds it, and a loaded machine may take
# seconds to restart a Python process.
AGENT_SETTINGS = {"deltas": False, "origin_timeout": 120.0, "stall_timeout": 120.0}


def read_until_closed(url: str, first: int) -> tuple[int, bytes, socket.socket]:
    """GET ``url`` on a raw socket, reading only ``first`` body bytes (the sender then
    blocks on a full socket). Returns (Content-Length, the body so far, the socket)."""
    host, port = url.removeprefix("http://").split("/", 1)[0].split(":")
    path = "/" + url.removeprefix("http://").split("/", 1)[1]
    sock = socket.create_connection((host, int(port)))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    received = b""
    while b"\r\n\r\n" not in received:
        received += sock.recv(65536)
    head, body = received.split(b"\r\n\r\n", 1)
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < first:
        body += sock.recv(first - len(body))
    return length, body, sock


def read_rest(sock: socket.socket) -> bytes:
    rest = b""
    with sock:
        while chunk := sock.recv(1 << 20):
            rest += chunk
    return rest


def test_a_client_of_a_killed_origin_gets_a_short_body_and_the_restart_serves_it_whole(
    tmp_path: Path,
) -> None:
    data = (b"krill" * (BLOB_SIZE // 5 + 1))[:BLOB_SIZE]
    origin = RestartableOrigin(free_port(), tmp_path / "origin" / "data", tmp_path)
    with origin.running("origin-1"):
        digest = push_blob(origin.url, data)
        length, body, sock = read_until_closed(f"{origin.url}/v2/{REPO}/blobs/{digest}", MiB)
        origin.kill()
        body += read_rest(sock)
    assert length == len(data)
    assert len(body) < length  # cut short: the client knows it has no blob
    assert data.startswith(body)
    with origin.running("origin-2"):
        assert stored_blobs(origin.data) == {digest}
        assert get_body(f"{origin.url}/v2/{REPO}/blobs/{digest}") == data


@contextlib.contextmanager
def agent_behind_proxy(
    tmp_path: Path, origin: RestartableOrigin, **settings: object
) -> Iterator[tuple[Agent, GatedProxy]]:
    with (
        gated_proxy(origin.port) as proxy,
        agent_process(
            tmp_path / "agent", proxy.url, settings={**AGENT_SETTINGS, **settings}
        ) as agent,
    ):
        yield agent, proxy


def start_pull(pool: ThreadPoolExecutor, agent: Agent, digest: str) -> Future[bytes]:
    return pool.submit(get_body, f"{agent.registry}/v2/{REPO}/blobs/{digest}")


def test_an_agent_resumes_from_a_restarted_origin_and_serves_exactly_the_blob(
    tmp_path: Path,
) -> None:
    data = bytes(range(256)) * (BLOB_SIZE // 256)
    origin = RestartableOrigin(free_port(), tmp_path / "origin" / "data", tmp_path)
    with (
        origin.running("origin-1"),
        agent_behind_proxy(tmp_path, origin) as (agent, proxy),
        ThreadPoolExecutor(1) as pool,
    ):
        digest = push_blob(origin.url, data)
        proxy.stop_responses_after(MiB)
        pull = start_pull(pool, agent, digest)
        wait_until(lambda: proxy.waiting_at_gate, "the origin to be mid-blob")
        proxy.hold_connections()
        origin.kill()
        proxy.open_gate()
        wait_until(lambda: proxy.held > 0, "the agent to reconnect to resume")
        assert not pull.done()
        with origin.running("origin-2"):
            proxy.let_connections_through()
            assert pull.result(timeout=300) == data
            assert b"Range: bytes=" in proxy.requests  # resumed, not started over
            store = agent.data / "blobs"
            wait_until(lambda: stored_blobs(store) == {digest}, "the blob in the agent's store")
            assert incoming_files(store) == []
            assert BlobStore(store).path(Digest.parse(digest)).read_bytes() == data


def test_with_the_origin_down_past_the_resumes_the_pull_fails_and_the_agent_keeps_nothing(
    tmp_path: Path,
) -> None:
    data = bytes(range(256)) * (BLOB_SIZE // 256)
    origin = RestartableOrigin(free_port(), tmp_path / "origin" / "data", tmp_path)
    with (
        agent_behind_proxy(tmp_path, origin, origin_resume_attempts=2) as (agent, proxy),
        ThreadPoolExecutor(1) as pool,
    ):
        with origin.running("origin-1"):
            digest = push_blob(origin.url, data)
            proxy.stop_responses_after(MiB)
            pull = start_pull(pool, agent, digest)
            wait_until(lambda: proxy.waiting_at_gate, "the origin to be mid-blob")
            origin.kill()
        proxy.open_gate()  # the agent's resumes meet a closed port
        with pytest.raises(CUT_SHORT):
            pull.result(timeout=300)
        store = agent.data / "blobs"
        wait_until(lambda: incoming_files(store) == [], "the agent to drop its partial file")
        assert stored_blobs(store) == set()
        assert '"' + digest + '"' not in (store / "index.json").read_text()
        with origin.running("origin-2"):
            assert get_body(f"{agent.registry}/v2/{REPO}/blobs/{digest}") == data
