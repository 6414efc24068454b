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
    Secret). So a replica is trusted when it presents a certificate in this
    origin's own chain file, the host name aside; the system's CAs would
    refuse every one and each replica would see only itself alive (and own,
    cache and seed every blob). It presents that certificate in turn, for a
    replica that asks for a client certificate (``client_ca``). None: plain http.
    """
    if config.tls_cert is None or config.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=config.tls_cert)
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # the leaf itself is the anchor
    context.check_hostname = False  # pod addresses: the certificate names the Service
    context.load_cert_chain(config.tls_cert, config.tls_key)
    return context
