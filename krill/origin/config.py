"""The origin's settings: one typed dataclass filled from file, env and flags.

``load_origin_config`` applies ``krill.config.load_config`` with the
``KRILL_ORIGIN_`` prefix, so ``KRILL_ORIGIN_UPSTREAM=https://...`` or a TOML
file with ``upstream = "https://..."`` set the same field as ``--upstream``.
Upstream credentials are kept out of ``repr`` so they never reach a log line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yarl import URL

from krill.config import (
    ConfigError,
    check_at_least_one,
    check_at_most,
    check_hostport,
    check_http_url,
    check_log_level,
    check_more_than_zero,
    check_port,
    check_replica_urls,
    check_zero_or_more,
    load_config,
    parse_hostport,
)
from krill.configenv import UnknownVariable
from krill.oci import MAX_MANIFEST_BYTES
from krill.origin.cacheretention import CacheLimits
from krill.origin.storage_url import parse_storage_url
from krill.replicas import bracket_ipv6_host, parse_replicas
from krill.securityflags import ServerTlsSettings

ENV_PREFIX = "KRILL_ORIGIN_"


# krill.swarm.PeerEncryption's values (the swarm package is imported only to seed).
_PEER_ENCRYPTION_MODES = ("off", "allowed", "required")


@dataclass
class OriginConfig(ServerTlsSettings):
    """Everything ``krill origin`` can be told."""

    listen: str = "127.0.0.1:5000"
    data: Path = Path("/var/lib/krill/origin")
    # Where blobs are kept: file://DIR (same as data = DIR) or s3://BUCKET[/PREFIX], then
    # written through to the bucket with data as the local cache (origin.storage, docs/storage.md).
    storage: str | None = None
    s3_endpoint: str | None = None  # e.g. http://127.0.0.1:8333; default: AWS's for s3_region
    s3_region: str = "us-east-1"
    # An AWS credentials file; else AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (origin.storage_url).
    s3_credentials: Path | None = None
    # With s3:// storage, keep local copies under this many bytes (0: no limit; least
    # recently served removed first, never manifests; origin.storage_cache).
    local_cache_max_bytes: int = 0
    # Several origins on one bucket: the replicas' base URLs (comma-separated) or
    # dns+http://SERVICE:PORT, and this one's URL among them; a blob's seeding and caching
    # owner is chosen by rendezvous hashing over the live ones (origin.storage_replicas).
    replicas: str | None = None
    replica_url: str | None = None
    # Pull-through: the registry to mirror (e.g. https://registry-1.docker.io).
    upstream: str | None = None
    # A file holding "username:password" (one line) for the upstream registry.
    upstream_credentials: Path | None = None
    # Or the same from the environment (KRILL_ORIGIN_UPSTREAM_USERNAME/_PASSWORD).
    upstream_username: str | None = field(default=None, repr=False)
    upstream_password: str | None = field(default=None, repr=False)
    # Seconds a tag resolved upstream is served before it is resolved again.
    tag_ttl: float = 60.0
    # Seconds an upstream request may take before the client gets UNAVAILABLE.
    upstream_timeout: float = 300.0
    # Seconds to wait for upstream when re-resolving a tag the origin already holds;
    # past it (or on failure) the stored tag is served, and upstream is not asked
    # again for that tag until tag_ttl has passed.
    upstream_tag_timeout: float = 5.0
    # Hosts, besides the upstream's own, that may receive the upstream credentials
    # as a token service (e.g. auth.docker.io for registry-1.docker.io).
    upstream_token_hosts: tuple[str, ...] = ()
    # Blobs a mirror fetches at once, ahead of any client, when a tag moved upstream
    # (the changed layers of images whose earlier version it holds, for their deltas).
    upstream_prefetch_concurrency: int = 4
    # Users and repository access rules (origin.auth_config, docs/security.md); None: open.
    auth: Path | None = None
    # TLS (origin.auth_tls; the fields tls_cert, tls_key, client_ca of ServerTlsSettings):
    # serve https with this certificate chain and key; with client_ca, also require a
    # client certificate it signed (mTLS between components).
    log_level: str = "info"
    max_manifest_size: int = MAX_MANIFEST_BYTES
    # Upload sessions idle this long are discarded (their temp file removed).
    upload_idle_timeout: float = 3600.0
    # Upload sessions open at once; more POSTs are answered 429 TOOMANYREQUESTS.
    max_upload_sessions: int = 1000
    # Swarm seeding: the tracker's announce URL turns it on.
    tracker: str | None = None
    peer_port: int = 0
    # A file holding this origin's key in the tracker's announce_keys (docs/security.md);
    # libtorrent announces to <tracker>/announce/<key>.
    announce_key: Path | None = None
    # BitTorrent protocol encryption of the seed's peer connections, as the agent's
    # peer_encryption (off, allowed, required; krill.swarm.PeerEncryption, docs/security.md).
    peer_encryption: str = "allowed"
    # The CA an https tracker's certificate must chain to (only it is trusted): the
    # readiness check and the seed's announces (krill.swarm's tracker_ca). None: the system's.
    tracker_ca: Path | None = None
    seed_ttl: float = 600.0
    # The origin's BitTorrent seed super-seeds (BEP 16): it offers each node only a
    # piece or two, so nodes take the origin's share of a blob over HTTP piece claims
    # (origin.piececlaims: each piece to one node) and the rest from each other. A
    # plain seed is asked for pieces the claims also deliver: in the herd benchmark
    # the origin then sent 1.2-1.3x the blob instead of 1.01x. Agents without the
    # HTTP piece feed (krill.swarm ``origin_urls``) would want this off.
    super_seed: bool = True
    # Claimed pieces leave in turns, this many connections at a time, one piece each, so
    # each piece is whole at its node sooner and can travel on (origin.pieceburst, which
    # says how 4 was chosen). 0: every connection's pieces side by side.
    piece_burst_slots: int = 4
    # Garbage collection (krill origin gc, docs/storage.md): every gc_interval seconds
    # (0: never; run `krill origin gc` instead), remove what no manifest references
    # and was committed or linked more than gc_grace seconds ago.
    gc_interval: float = 0.0
    gc_grace: float = 3600.0
    # A mirror's (upstream set) retention before each collection: manifests not asked for
    # in cache_max_age seconds are forgotten, then the least recently asked for until the
    # blobs still referenced fit in cache_max_bytes (0: no limit; origin.cacheretention).
    cache_max_age: float = 0.0
    cache_max_bytes: int = 0
    # Layer deltas: computed when a tag moves, against the last `delta_history` versions.
    deltas: bool = True
    delta_history: int = 3
    delta_workers: int = 1
    delta_max_queue: int = 1024
    # Keep a delta only if it is smaller than this fraction of the target layer.
    delta_max_ratio: float = 0.5

    def __post_init__(self) -> None:
        check_hostport(self.listen, "listen")
        if self.replica_url:  # the chart writes it from $(POD_IP), unbracketed on IPv6
            self.replica_url = bracket_ipv6_host(self.replica_url)
        self._check_urls()
        storage = parse_storage_url(self.storage, self.s3_endpoint, self.s3_region)
        if isinstance(storage, Path):
            self.data = storage
        self._check_numbers()
        if self.replicas and (not self.replica_url or isinstance(storage, Path) or storage is None):
            raise ConfigError(
                "replicas needs s3:// storage and replica_url (this origin's URL as the "
                "other replicas reach it)"
            )
        check_port(self.peer_port, "peer_port")
        self.log_level = check_log_level(self.log_level)
        if self.peer_encryption not in _PEER_ENCRYPTION_MODES:
            raise ConfigError(
                f"peer_encryption must be one of {', '.join(_PEER_ENCRYPTION_MODES)}, "
                f"got {self.peer_encryption!r}"
            )
        self.check_security()

    def _check_urls(self) -> None:
        """Every URL setting parsed now: a bad port or host would otherwise be found by the
        first request that needs it (a mirror's first pull, the first seed's announce)."""
        if self.upstream is not None:  # kept as written: a path after the host is the user's
            check_http_url(self.upstream, "upstream")
        if self.tracker:
            self.tracker = check_http_url(self.tracker, "tracker")
        if self.replica_url:
            check_http_url(self.replica_url, "replica_url")
        if self.replicas:
            check_replica_urls(self.replicas, "replicas")
            parse_replicas(self.replicas, "--replicas")  # empty, or dns+ without a port
        if self.s3_endpoint:
            check_http_url(self.s3_endpoint, "s3_endpoint")

    def _check_numbers(self) -> None:
        """Each number against what it means, so none loads and then breaks every request.

        A 0 upload idle timeout discards every session before its first PATCH; where 0
        means "never" or "no limit" it stays allowed.
        """
        check_more_than_zero(
            self, "seconds", "upstream_timeout", "upstream_tag_timeout", "upload_idle_timeout"
        )
        check_more_than_zero(self, "bytes", "max_manifest_size")
        check_zero_or_more(self, "seconds; 0: resolve upstream every time", "tag_ttl")
        check_zero_or_more(self, "seconds; 0: drop a torrent once it has no peers", "seed_ttl")
        check_zero_or_more(self, "seconds; 0: never, run `krill origin gc` instead", "gc_interval")
        check_zero_or_more(self, "seconds", "gc_grace")
        check_zero_or_more(self, "seconds; 0: no limit", "cache_max_age")
        check_zero_or_more(self, "bytes; 0: no limit", "cache_max_bytes", "local_cache_max_bytes")
        check_zero_or_more(self, "connections at a time; 0: off", "piece_burst_slots")
        check_at_least_one(self, "blobs at once", "upstream_prefetch_concurrency")
        check_at_least_one(self, "sessions open at once", "max_upload_sessions")
        check_at_least_one(self, "a count", "delta_workers", "delta_history", "delta_max_queue")
        check_more_than_zero(self, "a fraction of the layer", "delta_max_ratio")
        check_at_most(self, 1, "a fraction of the layer", "delta_max_ratio")

    def cache_limits(self) -> CacheLimits | None:
        """A mirror's retention limits; None for a registry of record (it never evicts)."""
        if self.upstream is None or not (self.cache_max_age or self.cache_max_bytes):
            return None
        return CacheLimits(self.cache_max_age, self.cache_max_bytes)

    @property
    def listen_address(self) -> tuple[str, int]:
        return parse_hostport(self.listen)

    @property
    def upstream_for_display(self) -> str | None:
        """The upstream URL without any ``user:password@`` part, safe to log or show."""
        if self.upstream is None:
            return None
        return str(URL(self.upstream).with_user(None))

    def upstream_auth(self) -> tuple[str, str] | None:
        """Upstream (username, password) from the credentials file or env, if any."""
        if self.upstream_credentials is not None:
            return _read_credentials(self.upstream_credentials)
        if self.upstream_username is not None:
            return self.upstream_username, self.upstream_password or ""
        return None


def _read_credentials(path: Path) -> tuple[str, str]:
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read upstream credentials file {path}: {exc.strerror}") from None
    username, sep, password = text.partition(":")
    if not sep or not username:
        raise ConfigError(f"upstream credentials file {path} must hold 'username:password'")
    return username, password


def load_origin_config(
    file: str | os.PathLike[str] | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    held_warnings: list[UnknownVariable] | None = None,
) -> OriginConfig:
    return load_config(
        OriginConfig, file=file, env_prefix=ENV_PREFIX, flags=flags, environ=environ,
        held_warnings=held_warnings,
    )  # fmt: skip
