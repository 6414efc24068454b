"""TLS for the origin: ``--tls-cert``/``--tls-key``, and ``--client-ca`` for mutual TLS.

Without TLS, a Basic password or a Bearer token crosses the network in the
clear, and anyone on the path can replace a manifest in flight (blobs are
checked against their digests by clients, manifests fetched by tag are not).
So an origin with ``--auth`` should also have TLS unless something in front
of it terminates TLS.

The context itself is the shared one (``krill.tls``: tracker and agent serve
the same way); this module only reads the origin's settings.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from krill.config import ConfigError
from krill.origin.config import OriginConfig
from krill.tls import ServerTls
from krill.tls import server_ssl_context as _server_context

__all__ = ["replica_ssl_context", "server_ssl_context"]


def server_ssl_context(config: OriginConfig) -> ssl.SSLContext | None:
    """The origin's server-side TLS context; None when it serves plain http."""
    return _server_context(ServerTls(config.tls_cert, config.tls_key, config.client_ca))


def replica_ssl_context(config: OriginConfig) -> ssl.SSLContext | None:
    """How this origin talks to its replicas over https (probes, forwarded metainfo).

    Replicas are reached at their pod addresses (``replica_url``), which no
    certificate names, and share one certificate (the chart mounts one
    Secret). So a replica is trusted when it presents exactly this origin's
    own certificate (the leaf, the first PEM block of ``tls_cert``; not the
    intermediates after it, which would trust every sibling they issued), the
    host name aside. The system's CAs would refuse every replica and each
    would see only itself alive (and own, cache and seed every blob). It
    presents that certificate in turn, for a replica that asks for a client
    certificate (``client_ca``). None: plain http.
    """
    if config.tls_cert is None or config.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=_leaf(config.tls_cert))
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # the leaf itself is the anchor
    context.check_hostname = False  # pod addresses: the certificate names the Service
    context.load_cert_chain(config.tls_cert, config.tls_key)
    return context


_PEM_END = "-----END CERTIFICATE-----"


def _leaf(chain: Path) -> str:
    """The first certificate of a PEM chain file (the server's own)."""
    text = chain.read_text()
    end = text.find(_PEM_END)
    if end < 0:
        raise ConfigError(f"{chain} holds no PEM certificate")
    return text[text.find("-----BEGIN CERTIFICATE-----") : end + len(_PEM_END)] + "\n"
