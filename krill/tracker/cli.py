"""``krill tracker``: run the BitTorrent HTTP tracker."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from krill.clierror import CliError, listen_failure
from krill.config import load_config, parse_hostport
from krill.configenv import UnknownVariable
from krill.logformat import LOG_LEVELS
from krill.logs import setup_logging
from krill.securityflags import SECURITY_FLAGS, add_security_flags
from krill.tracker.config import TrackerConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tracker",
        help="run the BitTorrent tracker (announce + metainfo)",
        description="A BitTorrent HTTP tracker (BEP 3/23) that also serves blob metainfo.",
    )
    parser.add_argument("--listen", metavar="HOST:PORT", help="address to serve on")
    parser.add_argument("--redis", metavar="URL", help="share peers through Redis (redis://...)")
    parser.add_argument(
        "--origin", metavar="URL", action="append",
        help="origin to fetch metainfo from (repeatable, tried in order)",
    )
    parser.add_argument(
        "--announce-keys", type=Path, metavar="FILE",
        help="NODE:KEY lines; only announces to /announce/KEY with a listed key are answered",
    )  # fmt: skip
    add_security_flags(parser, "origin")
    parser.add_argument("--config", metavar="FILE", help="TOML config file")
    parser.add_argument("--log-level", type=str.lower, choices=LOG_LEVELS)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    flags = {
        "listen": args.listen, "redis": args.redis, "origin": args.origin,
        "log_level": args.log_level,
        "announce_keys": args.announce_keys,
        **{name: getattr(args, name) for name in SECURITY_FLAGS},
    }
    held: list[UnknownVariable] = []  # logged once logging is set up, by the log level
    config = load_config(
        TrackerConfig, file=args.config, env_prefix="KRILL_TRACKER_", flags=flags,
        held_warnings=held,
    )  # fmt: skip
    setup_logging(config.log_level)
    for warning in held:
        warning.log()
    # Imported here, not at the top: every `krill` command builds this parser.
    from aiohttp import web
    from redis.exceptions import RedisError

    from krill.tls import server_ssl_context
    from krill.tlslog import register_handshake_metrics
    from krill.tracker.server import METRICS_KEY, create_app  # after logging is set up

    host, port = parse_hostport(config.listen)
    ssl_context = server_ssl_context(config.server_tls)
    logging.getLogger(__name__).info(
        "tracker.starting listen=%s:%d tls=%s peers=%s origins=%s",
        host, port, "off" if ssl_context is None else "on",
        "redis" if config.redis else "memory", ",".join(config.origin) or "none",
    )  # fmt: skip
    try:
        app = create_app(config)
        register_handshake_metrics(
            app[METRICS_KEY].registry, ssl_context, "krill_tracker_tls_handshake_failures"
        )
        web.run_app(
            app, host=host, port=port, ssl_context=ssl_context,
            print=None, access_log=None,
        )  # fmt: skip
    except RedisError as exc:

        raise CliError(f"cannot use Redis at {config.redis}: {exc}; is it running?") from None
    except OSError as exc:
        raise listen_failure(exc, config.listen, "--listen") or exc from None
    return 0
