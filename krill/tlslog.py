"""Failed TLS handshakes on a Krill server: one warning per reason, a counter by reason.

asyncio drops a connection whose handshake fails and logs it only in debug
mode, so "my agent cannot reach the origin" left nothing on the server. Each
server context (``krill.tls.server_ssl_context``) gets its own
``HandshakeFailures``, hooked in through ``SSLContext.sslobject_class`` (the
documented way to choose what ``wrap_bio``, and so asyncio, makes): a
subclass of ``ssl.SSLObject`` whose ``do_handshake`` sees the ``SSLError``
that ends a handshake. A handshake that succeeds pays one more Python call
per ``do_handshake`` step and nothing else.

What it cannot say: the peer's address. The ``SSLObject`` is made from two
memory buffers; the socket, its address and the asyncio protocol are out of
its reach, and asyncio's ``SSLProtocol`` offers no hook of its own.
Getting the address would mean running the handshake ourselves
(``loop.start_tls`` from a protocol factory), which aiohttp's ``run_app``,
used by origin and tracker, has no place for. The reason is what an operator
acts on; the failing client is found by its reason (and, for certificates,
its own log, which names the same failure).

What it does not see, on purpose: a connection closed before or during the
handshake without a TLS error (a TCP probe of the port, a load balancer's
health check) and a handshake that times out; neither is a client with a
wrong setting.

Rate: at most one line per reason per ``every`` seconds (60), each saying
how many failures of that reason were not logged since the previous one
(``suppressed=``). Per reason, so a flood of one kind (a scanner's plain
http) cannot hide another (an agent whose certificate just expired); the
counter, ``<service>_tls_handshake_failures_total{reason}``, counts every
one. Reasons are a fixed set (``Reason``), so the label stays bounded.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterator
from enum import StrEnum
from typing import ClassVar

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from krill.clock import SYSTEM_CLOCK, Clock
from krill.errortext import error_text

__all__ = [
    "HandshakeFailureMetrics",
    "HandshakeFailures",
    "Reason",
    "classify",
    "handshake_failures",
    "observe_handshakes",
    "register_handshake_metrics",
]

log = logging.getLogger(__name__)

LOG_EVERY = 60.0  # seconds between two lines of one reason


class Reason(StrEnum):
    """Why a handshake failed (the ``reason`` label and the log's ``reason=``)."""

    NO_CLIENT_CERTIFICATE = "no_client_certificate"
    UNKNOWN_CA = "unknown_ca"
    CERTIFICATE_EXPIRED = "certificate_expired"
    CERTIFICATE_NOT_YET_VALID = "certificate_not_yet_valid"
    CERTIFICATE_PURPOSE = "certificate_purpose"
    CERTIFICATE_INVALID = "certificate_invalid"
    NOT_TLS = "not_tls"
    PROTOCOL_VERSION = "protocol_version"
    NO_SHARED_CIPHER = "no_shared_cipher"
    CLIENT_REFUSED = "client_refused"
    CLOSED = "closed"
    OTHER = "other"


# OpenSSL's X509_V_ERR_* codes (``SSLCertVerificationError.verify_code``).
_UNTRUSTED_ISSUER = {
    2,  # unable to get issuer certificate
    18,  # self-signed certificate
    19,  # self-signed certificate in certificate chain
    20,  # unable to get local issuer certificate
    21,  # unable to verify the first certificate
}
_CERT_NOT_YET_VALID, _CERT_HAS_EXPIRED, _INVALID_PURPOSE = 9, 10, 26

_NOT_TLS = {"HTTP_REQUEST", "HTTPS_PROXY_REQUEST", "WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL",
            "PACKET_LENGTH_TOO_LONG", "RECORD_LENGTH_MISMATCH"}  # fmt: skip
_OLD_VERSION = {"UNSUPPORTED_PROTOCOL", "VERSION_TOO_LOW", "TLSV1_ALERT_PROTOCOL_VERSION"}
_NO_CIPHER = {"NO_SHARED_CIPHER", "NO_SUITABLE_SIGNATURE_ALGORITHM", "NO_SHARED_GROUP"}


def classify(exc: ssl.SSLError) -> tuple[Reason, str]:
    """The reason a handshake failed and what to do about it, in words."""
    code = str(getattr(exc, "reason", None) or "")
    if isinstance(exc, ssl.SSLCertVerificationError):
        verify = exc.verify_code
        if verify in _UNTRUSTED_ISSUER:
            return Reason.UNKNOWN_CA, (
                "client certificate signed by another CA than this server's --client-ca"
            )
        if verify == _CERT_HAS_EXPIRED:
            return Reason.CERTIFICATE_EXPIRED, "client certificate expired: issue it a new one"
        if verify == _CERT_NOT_YET_VALID:
            return Reason.CERTIFICATE_NOT_YET_VALID, (
                "client certificate not valid yet: check the clocks of client and CA"
            )
        if verify == _INVALID_PURPOSE:
            return Reason.CERTIFICATE_PURPOSE, (
                "client certificate is not for client authentication "
                "(extendedKeyUsage needs clientAuth)"
            )
        return Reason.CERTIFICATE_INVALID, f"client certificate refused: {exc.verify_message}"
    if code == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
        return Reason.NO_CLIENT_CERTIFICATE, (
            "client presented no certificate; it needs --client-cert/--client-key "
            "signed by this server's --client-ca"
        )
    if code in ("HTTP_REQUEST", "HTTPS_PROXY_REQUEST"):
        return Reason.NOT_TLS, "not TLS: plain http to an https port (the client needs https://)"
    if code in _NOT_TLS:
        return Reason.NOT_TLS, "not TLS (plain http or another protocol to an https port?)"
    if code in _OLD_VERSION:
        return Reason.PROTOCOL_VERSION, "client offers only TLS older than 1.2, which is refused"
    if code in _NO_CIPHER:
        return Reason.NO_SHARED_CIPHER, "client and server have no cipher in common"
    if "_ALERT_" in code:
        alert = code.partition("_ALERT_")[2].lower().replace("_", " ")
        return Reason.CLIENT_REFUSED, (
            f"client ended the handshake ({alert}): does it trust this server's "
            "certificate (its --ca) and the name it connects to?"
        )
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return Reason.CLOSED, "client closed the connection during the handshake"
    return Reason.OTHER, f"handshake failed: {code.lower().replace('_', ' ') or exc}"


class HandshakeFailures:
    """One server context's failed handshakes: counted by reason, logged at a bounded rate."""

    def __init__(self, *, clock: Clock = SYSTEM_CLOCK, every: float = LOG_EVERY) -> None:
        self.counts = dict.fromkeys(Reason, 0)
        self._clock = clock
        self._every = every
        self._logged_at: dict[Reason, float] = {}
        self._suppressed = dict.fromkeys(Reason, 0)

    def failed(self, exc: ssl.SSLError) -> None:
        reason, detail = classify(exc)
        self.counts[reason] += 1
        now = self._clock.monotonic()
        last = self._logged_at.get(reason)
        if last is not None and now - last < self._every:
            self._suppressed[reason] += 1
            return
        self._logged_at[reason] = now
        suppressed, self._suppressed[reason] = self._suppressed[reason], 0
        log.warning(
            "tls.handshake_failed reason=%s detail=%r error=%r suppressed=%d",
            reason, detail, error_text(exc), suppressed,
        )  # fmt: skip


class _ObservedSSLObject(ssl.SSLObject):
    """``ssl.SSLObject`` telling ``failures`` why a handshake failed (one subclass per context)."""

    failures: ClassVar[HandshakeFailures]

    def do_handshake(self) -> None:
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise  # waiting for the peer: asyncio calls again
        except ssl.SSLError as exc:
            # asyncio's SSLProtocol expects only an SSLError here: anything else would end
            # the connection as "Fatal error: protocol.buffer_updated()", not a failed handshake.
            try:
                self.failures.failed(exc)
            except Exception:
                log.exception("tls.handshake_log_failed error=%r", error_text(exc))
            raise  # the handshake's SSLError, whatever the logging did


def observe_handshakes(context: ssl.SSLContext) -> HandshakeFailures:
    """Count and log the handshakes that fail on ``context`` (a server's)."""
    failures = HandshakeFailures()
    context.sslobject_class = type(
        "ObservedSSLObject", (_ObservedSSLObject,), {"failures": failures}
    )
    return failures


def handshake_failures(context: ssl.SSLContext | None) -> HandshakeFailures | None:
    """What ``observe_handshakes`` hooked into ``context``; None for plain http or none."""
    if context is None:
        return None
    observed = context.sslobject_class
    return observed.failures if issubclass(observed, _ObservedSSLObject) else None


class HandshakeFailureMetrics(Collector):
    """``failures.counts`` as a Prometheus counter named ``name``, read at each scrape."""

    def __init__(self, failures: HandshakeFailures, name: str) -> None:
        self._failures = failures
        self._name = name

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            self._name,
            "TLS handshakes that failed, by reason (krill.tlslog.Reason).",
            labels=["reason"],
        )
        for reason, count in self._failures.counts.items():  # every reason, zeros too
            family.add_metric([reason.value], count)
        yield family


def register_handshake_metrics(
    registry: CollectorRegistry, context: ssl.SSLContext | None, name: str
) -> None:
    """Export the failed handshakes of a server's ``context`` in its ``registry`` as ``name``.

    Nothing for plain http. ``name`` carries the service's prefix
    (``krill_origin_tls_handshake_failures``), as its other metrics do.
    """
    failures = handshake_failures(context)
    if failures is not None:
        registry.register(HandshakeFailureMetrics(failures, name))
