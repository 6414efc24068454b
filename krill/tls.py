"""TLS for every Krill component: server contexts, client contexts, one set of rules.

Origin, tracker and the agent's control API serve https with
``--tls-cert/--tls-key``, and with ``--client-ca`` require the client to
present a certificate that CA signed (mutual TLS between components: the
handshake fails before any HTTP, so a peer without one learns nothing but
that the port is open). Their clients (agent → origin and tracker, tracker →
origin) trust ``--ca`` in addition to nothing else: a private CA for the
cluster, not the system store, so a certificate a public CA issued for the
same name is not accepted. With ``--client-cert/--client-key`` the client
presents its own certificate to a server that asks.

Written once here because three services need the same checks and the same
error messages; without that the origin's copy (the first) would have been
pasted twice. Certificates are read once at start; a file that cannot be
loaded is a ``ConfigError`` naming it and the reason, so a service with a
broken certificate does not start rather than refusing every client later.

Contexts accept TLS 1.2 and newer with Python's default ciphers. A server
context logs and counts the handshakes that fail on it (``krill.tlslog``);
each service exports the count in its registry (``register_handshake_metrics``).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from krill.config import ConfigError
from krill.tlslog import observe_handshakes

__all__ = [
    "ClientTls",
    "ServerTls",
    "check_client_tls",
    "check_server_tls",
    "client_ssl_context",
    "server_ssl_context",
]


@dataclass(frozen=True)
class ServerTls:
    """What a server was told: its certificate chain and key, and whose clients to require."""

    cert: Path | None = None
    key: Path | None = None
    client_ca: Path | None = None


@dataclass(frozen=True)
class ClientTls:
    """What a client was told: the CA to trust, and its own certificate for mutual TLS."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None


def check_server_tls(tls: ServerTls) -> None:
    """The combinations a config may hold (files are read later, by ``server_ssl_context``)."""
    if (tls.cert is None) != (tls.key is None):
        raise ConfigError("tls_cert and tls_key go together: give both, or neither for http")
    if tls.client_ca is not None and tls.cert is None:
        raise ConfigError("client_ca needs tls_cert and tls_key (client certificates need TLS)")


def check_client_tls(tls: ClientTls) -> None:
    if (tls.cert is None) != (tls.key is None):
        raise ConfigError(
            "client_cert and client_key go together: give both, or neither when no server "
            "asks for a client certificate"
        )


def server_ssl_context(tls: ServerTls) -> ssl.SSLContext | None:
    """A server-side context; None when the server speaks plain http."""
    check_server_tls(tls)
    if tls.cert is None or tls.key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_pair(context, tls.cert, tls.key, "TLS certificate")
    if tls.client_ca is not None:
        _load_ca(context, tls.client_ca, "client_ca")
        context.verify_mode = ssl.CERT_REQUIRED
    observe_handshakes(context)  # a failed handshake is logged and counted (krill.tlslog)
    return context


def client_ssl_context(tls: ClientTls) -> ssl.SSLContext | None:
    """A client-side context; None when nothing was configured (aiohttp's default applies).

    With ``ca`` only that CA is trusted. A client certificate alone keeps the
    system's trust store for the server's certificate.
    """
    check_client_tls(tls)
    if tls.ca is None and tls.cert is None:
        return None
    if tls.ca is None:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # checks names and chains; no CAs yet
        _load_ca(context, tls.ca, "ca")
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.cert is not None and tls.key is not None:
        _load_pair(context, tls.cert, tls.key, "client certificate")
    return context


def _load_pair(context: ssl.SSLContext, cert: Path, key: Path, what: str) -> None:
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load the {what} {cert} with key {key}: "
            f"{_reason(exc)} (PEM files, the key matching the certificate)"
        ) from None


def _load_ca(context: ssl.SSLContext, ca: Path, setting: str) -> None:
    try:
        context.load_verify_locations(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load {setting} {ca}: {_reason(exc)}") from None


def _reason(exc: OSError | ssl.SSLError) -> str:
    return str(getattr(exc, "reason", None) or exc.strerror or exc)
