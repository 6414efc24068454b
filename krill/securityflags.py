"""The TLS and node-credential flags agent and tracker share (docs/security.md).

Both are servers (``--tls-cert/--tls-key``, ``--client-ca``) and clients of
an origin (``--ca``, ``--client-cert/--client-key``,
``--origin-credentials``); one definition keeps their spelling and help the
same. Each flag's value lands in the config field of the same name.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["SECURITY_FLAGS", "add_security_flags"]

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
