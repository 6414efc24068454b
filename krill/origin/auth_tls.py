"""TLS for the origin: ``--tls-cert``/``--tls-key``, and ``--client-ca`` for mutual TLS.

Without TLS, a Basic password or a Bearer token crosses the network in the
clear, and anyone on the path can replace a manifest in flight (blobs are
checked against their digests by clients, manifests fetched by tag are not).
So an origin with ``--auth`` should also have TLS unless something in front
of it terminates TLS.

The context accepts TLS 1.2 and newer with Python's default ciphers. With
``client_ca``, a client must present a certificate that CA signed, or the
handshake fails before any HTTP is spoken: that is for components talking to
each other (agents, tracker), not for people with passwords. The files are
read once at start; a certificate that cannot be loaded stops the origin
with the file and the reason.
"""

from __future__ import annotations

import ssl

from krill.config import ConfigError
from krill.origin.config import OriginConfig

__all__ = ["server_ssl_context"]


def server_ssl_context(config: OriginConfig) -> ssl.SSLContext | None:
    """The origin's server-side TLS context; None when it serves plain http."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load the TLS certificate {config.tls_cert} with key {config.tls_key}: "
            f"{_reason(exc)} (PEM files, the key matching the certificate)"
        ) from None
    if config.client_ca is not None:
        try:
            context.load_verify_locations(cafile=config.client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load client_ca {config.client_ca}: {_reason(exc)}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _reason(exc: OSError | ssl.SSLError) -> str:
    return str(getattr(exc, "reason", None) or exc.strerror or exc)
