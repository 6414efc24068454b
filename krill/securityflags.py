"""The TLS and node-credential flags agent and tracker share (docs/security.md).

Both are servers (``--tls-cert/--tls-key``, ``--client-ca``) and clients of
an origin (``--ca``, ``--client-cert/--client-key``,
``--origin-credentials``); one definition keeps their spelling and help the
same. Each flag's value lands in the config field of the same name, and
those fields are declared once too: ``ServerTlsSettings`` (the origin, which
is no client of another Krill server) and ``SecuritySettings`` (agent and
tracker) are dataclass bases the service configs inherit, with the
``server_tls``/``client_tls`` views ``krill.tls`` takes and one check.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from krill.tls import ClientTls, ServerTls, check_client_tls, check_server_tls

__all__ = ["SECURITY_FLAGS", "SecuritySettings", "ServerTlsSettings", "add_security_flags"]

SECURITY_FLAGS = (
    "tls_cert", "tls_key", "client_ca", "ca", "client_cert", "client_key", "origin_credentials",
)  # fmt: skip


def add_security_flags(parser: argparse.ArgumentParser, servers: str) -> None:
    """Add the flags; ``servers`` names what this component is a client of."""
    group = parser.add_argument_group("security (docs/security.md)")
    group.add_argument("--tls-cert", type=Path, metavar="FILE", help="serve https (PEM chain)")
    group.add_argument("--tls-key", type=Path, metavar="FILE", help="the key of --tls-cert")
    group.add_argument(
        "--client-ca", type=Path, metavar="FILE",
        help="require clients to present a certificate this CA signed (mutual TLS)",
    )  # fmt: skip
    group.add_argument(
        "--ca", type=Path, metavar="FILE",
        help=f"trust only this CA for an https {servers} (default: the system's)",
    )  # fmt: skip
    group.add_argument(
        "--client-cert", type=Path, metavar="FILE",
        help=f"certificate to present to an {servers} that requires one",
    )  # fmt: skip
    group.add_argument("--client-key", type=Path, metavar="FILE", help="key of --client-cert")
    group.add_argument(
        "--origin-credentials", type=Path, metavar="FILE",
        help="node credentials for an origin with --auth (TOML: user, password, announce_key)",
    )  # fmt: skip


# kw_only: a service config's own fields keep their order in __init__ and may lack defaults.
@dataclass(kw_only=True)
class ServerTlsSettings:
    """Serve https with ``tls_cert``/``tls_key``; with ``client_ca``, mutual TLS."""

    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_ca: Path | None = None

    @property
    def server_tls(self) -> ServerTls:
        return ServerTls(self.tls_cert, self.tls_key, self.client_ca)

    def check_security(self) -> None:
        """Raise ConfigError for a combination that cannot work (call from __post_init__)."""
        check_server_tls(self.server_tls)


@dataclass(kw_only=True)
class SecuritySettings(ServerTlsSettings):
    """Also a client of an origin: the CA to trust (else the system's), the certificate
    to present to a server that asks, and the node credentials (TOML: user, password,
    announce_key; krill.nodeauth)."""

    ca: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    origin_credentials: Path | None = None

    @property
    def client_tls(self) -> ClientTls:
        return ClientTls(self.ca, self.client_cert, self.client_key)

    def check_security(self) -> None:
        super().check_security()
        check_client_tls(self.client_tls)
