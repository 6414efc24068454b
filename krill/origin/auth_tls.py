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

__all__ = ["server_ssl_context"]


def server_ssl_context(config: OriginConfig) -> ssl.SSLContext | None:
    """The origin's server-side TLS context; None when it serves plain http."""
    return _server_context(ServerTls(config.tls_cert, config.tls_key, config.client_ca))
