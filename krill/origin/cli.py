"""``krill origin``: run the registry of record (or a pull-through mirror)."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from krill.clierror import CliError
from krill.logs import setup_logging

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "origin",
        help="run the origin registry",
        description="Serve the OCI Distribution API from a content-addressed store; "
        "with --upstream, mirror another registry.",
    )
    parser.add_argument("--config", metavar="FILE", help="TOML file with origin settings")
    parser.add_argument("--listen", metavar="HOST:PORT", help="address to serve on")
    parser.add_argument("--data", metavar="DIR", help="directory for blobs and metadata")
    parser.add_argument("--upstream", metavar="URL", help="registry to pull through from")
    parser.add_argument(
        "--upstream-credentials",
        metavar="FILE",
        help="file holding 'username:password' for the upstream registry",
    )
    parser.add_argument(
        "--tag-ttl", type=float, metavar="SECONDS", help="re-resolve upstream tags after this"
    )
    parser.add_argument("--max-manifest-size", type=int, metavar="BYTES")
    parser.add_argument("--tracker", metavar="URL", help="seed blobs via this tracker (base URL)")
    parser.add_argument("--peer-port", type=int, metavar="N", help="BitTorrent port (0 = any)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    parser.set_defaults(func=run)


CONFIG_FLAGS = (
    "listen",
    "data",
    "upstream",
    "upstream_credentials",
    "tag_ttl",
    "max_manifest_size",
    "log_level",
    "tracker",
    "peer_port",
)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT, then close connections and exit 0."""
    from aiohttp import web

    from krill.origin.config import load_origin_config
    from krill.origin.server import create_app

    config = load_origin_config(
        file=args.config, flags={name: getattr(args, name) for name in CONFIG_FLAGS}
    )
    setup_logging(config.log_level)
    try:
        config.data.mkdir(parents=True, exist_ok=True)
    except OSError as exc:

        raise CliError(f"cannot create data directory {config.data}: {exc.strerror}") from None
    host, port = config.listen_address
    app = create_app(config)
    log.info(
        "origin.starting listen=%s:%d data=%s upstream=%s",
        host,
        port,
        config.data,
        config.upstream_for_display,
    )
    web.run_app(app, host=host, port=port, print=None, access_log=None, shutdown_timeout=10)
    log.info("origin.stopped")
    return 0
