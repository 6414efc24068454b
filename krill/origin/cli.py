"""``krill origin``: run the registry of record (or a pull-through mirror); ``krill origin gc``.

``krill origin gc [--config FILE] [--data DIR] [--grace SECONDS] [--dry-run]``
removes what no manifest references (``origin.gc``), safely beside a running
origin on the same directory, and prints one line per kind (blobs, deltas,
metainfo, delta_index) with the objects and bytes it removed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING, Any

from krill.clierror import CliError, listen_failure
from krill.logformat import LOG_LEVELS
from krill.logs import setup_logging
from krill.storageflags import add_storage_flags

if TYPE_CHECKING:
    from krill.configenv import UnknownVariable

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
    add_storage_flags(
        parser, "file://DIR or s3://BUCKET[/PREFIX][?endpoint=URL] (then --data is the local cache)"
    )
    parser.add_argument(
        "--replicas",
        metavar="URLS",
        help="the origins on the same bucket: URL,URL,... or dns+http://SERVICE:PORT",
    )
    parser.add_argument("--replica-url", metavar="URL", help="this origin's URL among --replicas")
    parser.add_argument("--upstream", metavar="URL", help="registry to pull through from")
    parser.add_argument(
        "--upstream-credentials",
        metavar="FILE",
        help="file holding 'username:password' for the upstream registry",
    )
    parser.add_argument(
        "--tag-ttl", type=float, metavar="SECONDS", help="re-resolve upstream tags after this"
    )
    parser.add_argument(
        "--max-manifest-size", type=int, metavar="BYTES",
        help="refuse larger manifest PUTs with 413 SIZE_INVALID (default 4 MiB)",
    )  # fmt: skip
    parser.add_argument("--tracker", metavar="URL", help="seed blobs via this tracker (base URL)")
    parser.add_argument("--peer-port", type=int, metavar="N", help="BitTorrent port (0 = any)")
    parser.add_argument(
        "--announce-key",
        metavar="FILE",
        help="file holding this origin's key in the tracker's --announce-keys (docs/security.md)",
    )
    parser.add_argument(
        "--tracker-ca",
        metavar="FILE",
        help="CA of an https tracker (its readiness check and the seed's announces)",
    )
    parser.add_argument(
        "--peer-encryption",
        choices=("off", "allowed", "required"),
        help="BitTorrent protocol encryption of the seed (default allowed; docs/security.md)",
    )
    parser.add_argument(
        "--auth",
        metavar="FILE",
        help="TOML file of users (htpasswd) and repository access rules (docs/security.md); "
        "without it anyone who can reach the origin can push and delete",
    )
    parser.add_argument("--tls-cert", metavar="FILE", help="serve https with this certificate")
    parser.add_argument("--tls-key", metavar="FILE", help="the private key of --tls-cert")
    parser.add_argument(
        "--client-ca", metavar="FILE", help="require client certificates signed by this CA"
    )
    parser.add_argument("--log-level", type=str.lower, choices=LOG_LEVELS)
    parser.set_defaults(func=run)
    commands = parser.add_subparsers(dest="origin_command", metavar="{gc,htpasswd}")
    gc = commands.add_parser(
        "gc",
        help="remove blobs, deltas and metainfo no manifest references",
        description="Mark every blob a manifest in any repository references, then remove the "
        "rest that was committed and linked more than --grace seconds ago. Safe while the "
        "origin serves the same directory: uploads in progress and manifests pushed meanwhile "
        "keep their blobs.",
    )
    gc.add_argument("--config", metavar="FILE", help="TOML file with origin settings")
    gc.add_argument("--data", dest="gc_data", metavar="DIR", help="the origin's data directory")
    gc.add_argument(
        "--storage", dest="gc_storage", metavar="URL", help="the origin's storage (s3://...)"
    )
    gc.add_argument(
        "--grace",
        type=float,
        metavar="SECONDS",
        help="keep what was committed or linked this recently (default: gc_grace, 3600)",
    )
    gc.add_argument("--dry-run", action="store_true", help="report what would go; remove nothing")
    gc.add_argument("--log-level", type=str.lower, choices=LOG_LEVELS)
    gc.set_defaults(func=run_gc)
    htpasswd = commands.add_parser(
        "htpasswd",
        help="print an htpasswd line (bcrypt) for the --auth file's users",
        description="Read a password (prompted on a terminal, else one line of stdin) and print "
        "USER:HASH as `htpasswd -B -n USER` does, for the htpasswd file an --auth file names.",
    )
    htpasswd.add_argument("user", metavar="USER")
    htpasswd.add_argument(
        "--cost", type=int, default=10, metavar="N", help="bcrypt cost, 4-31 (default 10)"
    )
    htpasswd.set_defaults(func=run_htpasswd)


CONFIG_FLAGS = (
    "listen",
    "data",
    "storage",
    "s3_endpoint",
    "s3_region",
    "replicas",
    "replica_url",
    "upstream",
    "upstream_credentials",
    "tag_ttl",
    "max_manifest_size",
    "log_level",
    "tracker",
    "peer_port",
    "announce_key",
    "peer_encryption",
    "tracker_ca",
    "auth",
    "tls_cert",
    "tls_key",
    "client_ca",
)


def run_gc(args: argparse.Namespace) -> int:
    """Collect once; print what was (or would be) removed, one line per kind."""
    from krill.origin.config import load_origin_config
    from krill.origin.gc import GarbageCollector
    from krill.origin.storage import collect_bucket

    flags = {
        "data": args.gc_data,
        "storage": args.gc_storage,
        "gc_grace": args.grace,
        "log_level": args.log_level,
    }
    held: list[UnknownVariable] = []  # logged once logging is set up, by the log level
    config = load_origin_config(file=args.config, flags=flags, held_warnings=held)
    setup_logging(config.log_level)
    for warning in held:
        warning.log()
    if not (config.data / "blobs").is_dir():
        raise CliError(
            f"{config.data} holds no origin store (no blobs/ directory); "
            "pass the origin's --data directory"
        )
    collector = GarbageCollector(config.data, config.gc_grace, cache_limits=config.cache_limits())
    report = collector.collect(dry_run=args.dry_run)
    sys.stdout.write("".join(line + "\n" for line in report.lines()))
    bucket_line = collect_bucket(config, dry_run=args.dry_run)  # storage = s3://...
    if bucket_line is not None:
        sys.stdout.write(bucket_line + "\n")
    return 0


def run_htpasswd(args: argparse.Namespace) -> int:
    """Print ``USER:bcrypt-hash``; the password never reaches argv, where ``ps`` shows it."""
    import getpass

    import bcrypt

    if ":" in args.user or not args.user.strip():
        raise CliError("a user name cannot be empty or contain ':'")
    if not 4 <= args.cost <= 31:
        raise CliError("--cost must be between 4 and 31")
    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {args.user}: ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    secret = password.encode()
    if not secret:
        raise CliError("the password is empty")
    if len(secret) > 72:
        raise CliError("bcrypt reads only the first 72 bytes of a password: choose a shorter one")
    hashed = bcrypt.hashpw(secret, bcrypt.gensalt(args.cost)).decode()
    sys.stdout.write(f"{args.user}:{hashed}\n")
    return 0


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT, then close connections and exit 0."""
    from aiohttp import web

    from krill.datadir import hold_data_dir
    from krill.origin.appkeys import METRICS
    from krill.origin.auth_tls import server_ssl_context
    from krill.origin.config import load_origin_config
    from krill.origin.server import create_app
    from krill.tlslog import register_handshake_metrics

    held: list[UnknownVariable] = []  # logged once logging is set up, by the log level
    config = load_origin_config(
        file=args.config, flags={name: getattr(args, name) for name in CONFIG_FLAGS},
        held_warnings=held,
    )  # fmt: skip
    setup_logging(config.log_level)
    for warning in held:
        warning.log()
    hold_data_dir(config.data, "origin")  # held until this process ends
    host, port = config.listen_address
    ssl_context = server_ssl_context(config)
    if config.auth is not None and ssl_context is None:
        log.warning(
            "origin.auth_over_http listen=%s detail=%r", config.listen,
            "passwords and tokens cross the network in the clear: serve https "
            "(--tls-cert/--tls-key) unless a TLS proxy is in front",
        )  # fmt: skip
    app = create_app(config)  # with storage = s3://...: write-through, read-through
    register_handshake_metrics(
        app[METRICS].registry, ssl_context, "krill_origin_tls_handshake_failures"
    )
    log.info(
        "origin.starting listen=%s:%d tls=%s data=%s storage=%s upstream=%s",
        host,
        port,
        "off" if ssl_context is None else "on",
        config.data,
        config.storage or "directory",
        config.upstream_for_display,
    )
    try:
        web.run_app(
            app,
            host=host,
            port=port,
            ssl_context=ssl_context,
            print=None,
            access_log=None,
            shutdown_timeout=10,
        )
    except OSError as exc:
        raise listen_failure(exc, config.listen, "--listen") or exc from None
    log.info("origin.stopped")
    return 0
