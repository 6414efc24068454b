"""A failed TLS handshake on a Krill server is logged, once per reason per minute, and counted.

Real https servers with certificates from a CA made here (``make_pki``):
an aiohttp site on ``server_ssl_context`` with ``--client-ca`` for each way a
client gets it wrong (no certificate, one from another CA, plain http to the
https port), a client that gets it right (nothing logged), the rate limit on
a clock the test moves, and a real ``krill tracker`` process whose log and
``/metrics`` show the failure.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from krill import processes
from krill.tls import ServerTls, server_ssl_context
from krill.tlslog import HandshakeFailures, Reason, handshake_failures, register_handshake_metrics
from tests.clocks import ManualClock
from tests.components import free_port, krill_command
from tests.polling import until, until_sync
from tests.test_origin_auth_tls import Pki, answers, make_pki

METRIC = "krill_test_tls_handshake_failures"


@pytest.fixture(scope="module")
def pkis(tmp_path_factory: pytest.TempPathFactory) -> tuple[Pki, Pki]:
    """The server's CA (with its server and client certificates) and another CA."""
    root = tmp_path_factory.mktemp("pki")
    return make_pki(root / "ours"), make_pki(root / "other")


@dataclass
class Server:
    port: int
    failures: HandshakeFailures
    registry: CollectorRegistry

    def counted(self, reason: Reason) -> float | None:
        return self.registry.get_sample_value(f"{METRIC}_total", {"reason": reason.value})


async def health(_: web.Request) -> web.Response:
    return web.Response(text="ok")


@pytest.fixture
async def server(pkis: tuple[Pki, Pki]) -> AsyncIterator[Server]:
    """An https site requiring a client certificate our CA signed (as ``--client-ca``)."""
    ours, _ = pkis
    context = server_ssl_context(ServerTls(ours.server_cert, ours.server_key, ours.ca))
    failures = handshake_failures(context)
    assert failures is not None
    registry = CollectorRegistry()
    register_handshake_metrics(registry, context, METRIC)
    app = web.Application()
    app.router.add_get("/health", health)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    try:
        yield Server(port, failures, registry)
    finally:
        await runner.cleanup()


def client_context(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca)
    if cert is not None and key is not None:
        context.load_cert_chain(cert, key)
    return context


async def get(port: int, context: ssl.SSLContext | None) -> bool:
    """One GET /health on one connection (no client retrying); whether an HTTP answer came."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        writer.write(b"GET /health HTTP/1.1\r\nHost: krill\r\nConnection: close\r\n\r\n")
        answer = await reader.read()
        writer.close()
    except OSError:  # ssl.SSLError included
        return False
    return answer.startswith(b"HTTP/1.1 200")


def failure_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.getMessage().startswith("tls.handshake_failed")
    ]


async def refused_once(
    server: Server, caplog: pytest.LogCaptureFixture, context: ssl.SSLContext | None,
    reason: Reason,
) -> str:  # fmt: skip
    """The client is refused; the one line logged for it, after checking the count."""
    caplog.set_level(logging.WARNING, logger="krill.tlslog")
    assert not await get(server.port, context)
    await until(lambda: server.failures.counts[reason] == 1, f"one {reason} failure counted")
    assert server.counted(reason) == 1
    assert sum(server.failures.counts.values()) == 1, server.failures.counts
    [line] = failure_lines(caplog)
    assert f"reason={reason}" in line and "suppressed=0" in line
    [record] = [r for r in caplog.records if r.getMessage() == line]
    assert record.levelno == logging.WARNING
    return line


async def test_a_client_without_a_certificate_is_told_to_present_one(
    server: Server, pkis: tuple[Pki, Pki], caplog: pytest.LogCaptureFixture
) -> None:
    ours, _ = pkis
    line = await refused_once(server, caplog, client_context(ours.ca), Reason.NO_CLIENT_CERTIFICATE)
    assert "client presented no certificate" in line
    assert "--client-cert/--client-key" in line and "--client-ca" in line


async def test_a_certificate_from_another_ca_is_named_as_such(
    server: Server, pkis: tuple[Pki, Pki], caplog: pytest.LogCaptureFixture
) -> None:
    ours, other = pkis
    context = client_context(ours.ca, other.client_cert, other.client_key)
    line = await refused_once(server, caplog, context, Reason.UNKNOWN_CA)
    assert "client certificate signed by another CA" in line


async def test_plain_http_to_the_https_port_is_not_tls(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    line = await refused_once(server, caplog, None, Reason.NOT_TLS)
    assert "plain http to an https port" in line


async def test_a_client_that_gets_it_right_leaves_nothing(
    server: Server, pkis: tuple[Pki, Pki], caplog: pytest.LogCaptureFixture
) -> None:
    ours, _ = pkis
    caplog.set_level(logging.DEBUG, logger="krill.tlslog")
    context = client_context(ours.ca, ours.client_cert, ours.client_key)
    for _ in range(3):
        assert await get(server.port, context)
    assert failure_lines(caplog) == []
    assert all(count == 0 for count in server.failures.counts.values())
    assert server.counted(Reason.NO_CLIENT_CERTIFICATE) == 0  # every reason shows, at 0


async def test_a_tcp_probe_that_sends_nothing_is_not_a_failure(
    server: Server, pkis: tuple[Pki, Pki], caplog: pytest.LogCaptureFixture
) -> None:
    """A health check connecting and closing is no misconfigured client."""
    ours, _ = pkis
    caplog.set_level(logging.DEBUG, logger="krill.tlslog")
    _, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.close()
    await writer.wait_closed()
    # Then a failure that is logged: had the probe counted, it would have been before it.
    assert not await get(server.port, client_context(ours.ca))
    await until(lambda: sum(server.failures.counts.values()) > 0, "the refused client counted")
    assert server.failures.counts == {
        reason: int(reason is Reason.NO_CLIENT_CERTIFICATE) for reason in Reason
    }
    assert len(failure_lines(caplog)) == 1


def verification_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] {message}")
    exc.reason, exc.verify_code, exc.verify_message = "CERTIFICATE_VERIFY_FAILED", code, message
    return exc


def ssl_error(reason: str) -> ssl.SSLError:
    exc = ssl.SSLError(1, f"[SSL: {reason}] {reason.lower()}")
    exc.reason = reason
    return exc


def test_one_line_per_reason_per_minute_says_how_many_it_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="krill.tlslog")
    clock = ManualClock()
    failures = HandshakeFailures(clock=clock, every=60.0)
    plain_http = ssl_error("HTTP_REQUEST")
    for _ in range(5):  # a scanner
        failures.failed(plain_http)
    failures.failed(verification_error(10, "certificate has expired"))  # not hidden by it
    lines = failure_lines(caplog)
    assert len(lines) == 2
    assert "reason=not_tls" in lines[0] and "suppressed=0" in lines[0]
    assert "reason=certificate_expired" in lines[1] and "certificate expired" in lines[1]
    clock.advance(59.0)
    failures.failed(plain_http)
    assert len(failure_lines(caplog)) == 2
    clock.advance(1.0)
    failures.failed(plain_http)
    lines = failure_lines(caplog)
    assert len(lines) == 3
    assert "reason=not_tls" in lines[2] and "suppressed=5" in lines[2]
    assert failures.counts[Reason.NOT_TLS] == 7  # the counter has every one
    assert failures.counts[Reason.CERTIFICATE_EXPIRED] == 1


@pytest.mark.parametrize(
    ("error", "reason", "words"),
    [
        (verification_error(10, "certificate has expired"), Reason.CERTIFICATE_EXPIRED,
         "client certificate expired"),
        (verification_error(9, "certificate is not yet valid"),
         Reason.CERTIFICATE_NOT_YET_VALID, "not valid yet"),
        (verification_error(26, "unsuitable certificate purpose"), Reason.CERTIFICATE_PURPOSE,
         "clientAuth"),
        (verification_error(23, "certificate revoked"), Reason.CERTIFICATE_INVALID,
         "certificate revoked"),
        (ssl_error("UNSUPPORTED_PROTOCOL"), Reason.PROTOCOL_VERSION, "older than 1.2"),
        (ssl_error("WRONG_VERSION_NUMBER"), Reason.NOT_TLS, "not TLS"),
        (ssl_error("NO_SHARED_CIPHER"), Reason.NO_SHARED_CIPHER, "no cipher in common"),
        (ssl_error("TLSV1_ALERT_UNKNOWN_CA"), Reason.CLIENT_REFUSED, "(unknown ca)"),
        (ssl.SSLEOFError(8, "EOF occurred in violation of protocol"), Reason.CLOSED,
         "closed the connection"),
        (ssl_error("SOMETHING_NEW"), Reason.OTHER, "something new"),
    ],
)  # fmt: skip
def test_each_openssl_failure_has_a_reason_in_words(
    error: ssl.SSLError, reason: Reason, words: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="krill.tlslog")
    failures = HandshakeFailures()
    failures.failed(error)
    assert failures.counts[reason] == 1
    [line] = failure_lines(caplog)
    assert f"reason={reason}" in line and words in line


def test_plain_http_servers_and_client_contexts_observe_nothing(pkis: tuple[Pki, Pki]) -> None:
    registry = CollectorRegistry()
    register_handshake_metrics(registry, None, METRIC)
    assert METRIC not in generate_latest(registry).decode()
    assert handshake_failures(ssl.create_default_context()) is None


def test_a_real_tracker_logs_the_failure_and_counts_it_on_metrics(
    tmp_path: Path, pkis: tuple[Pki, Pki]
) -> None:
    ours, _ = pkis
    port = free_port()
    base = f"https://127.0.0.1:{port}"
    log = tmp_path / "tracker.log"
    args = [
        "tracker", "--listen", f"127.0.0.1:{port}", "--tls-cert", str(ours.server_cert),
        "--tls-key", str(ours.server_key), "--client-ca", str(ours.ca),
    ]  # fmt: skip
    good = client_context(ours.ca, ours.client_cert, ours.client_key)
    with processes.logged_process(krill_command(*args), log, grace=10) as proc:
        until_sync(
            lambda: proc.poll() is not None or answers(f"{base}/health", good),
            "the https tracker to answer",
        )
        assert proc.poll() is None, log.read_text()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as plain:
            plain.sendall(b"GET /health HTTP/1.1\r\nHost: tracker\r\n\r\n")
            assert plain.recv(1024) == b""  # dropped, no HTTP answer
        until_sync(lambda: "tls.handshake_failed" in log.read_text(), "the failure logged")
        with urllib.request.urlopen(f"{base}/metrics", timeout=10, context=good) as response:
            metrics = response.read().decode()
    [line] = [line for line in log.read_text().splitlines() if "tls.handshake_failed" in line]
    assert " warning krill.tlslog tls.handshake_failed reason=not_tls " in line, line
    assert "plain http to an https port" in line
    assert 'krill_tracker_tls_handshake_failures_total{reason="not_tls"} 1.0' in metrics
    assert 'krill_tracker_tls_handshake_failures_total{reason="unknown_ca"} 0.0' in metrics


async def test_a_failure_while_logging_a_failure_leaves_the_handshake_failed_cleanly(
    server: Server, pkis: tuple[Pki, Pki], caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The SSLError, not the tracker's error, reaches asyncio: else a "Fatal error" line."""
    ours, _ = pkis
    caplog.set_level(logging.DEBUG)

    def broken(exc: ssl.SSLError) -> None:
        raise RuntimeError("tracker broke")

    monkeypatch.setattr(server.failures, "failed", broken)
    assert not await get(server.port, client_context(ours.ca))  # no client certificate
    await until(
        lambda: any("tls.handshake_log_failed" in r.getMessage() for r in caplog.records),
        "the tracker's error logged",
    )
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.name == "krill.tlslog" and record.getMessage().startswith(
        "tls.handshake_log_failed error="
    )
    assert record.exc_info is not None and str(record.exc_info[1]) == "tracker broke"
    assert "Fatal error" not in caplog.text
    good = client_context(ours.ca, ours.client_cert, ours.client_key)
    assert await get(server.port, good)  # the server serves on
