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
    check_http_url,
    check_log_level,
    check_port,
    load_config,
    parse_hostport,
)
from krill.oci import MAX_MANIFEST_BYTES
from krill.origin.cacheretention import CacheLimits
from krill.origin.storage_url import parse_storage_url
from krill.replicas import bracket_ipv6_host
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
        parse_hostport(self.listen)
        if self.replica_url:  # the chart writes it from $(POD_IP), unbracketed on IPv6
            self.replica_url = bracket_ipv6_host(self.replica_url)
        storage = parse_storage_url(self.storage, self.s3_endpoint, self.s3_region)
        if isinstance(storage, Path):
            self.data = storage
        if self.upstream is not None and not self.upstream.startswith(("http://", "https://")):
            raise ConfigError(f"upstream must be an http:// or https:// URL, got {self.upstream!r}")
        if self.max_manifest_size <= 0:
            raise ConfigError("max_manifest_size must be positive")
        if self.upstream_tag_timeout <= 0 or self.upstream_timeout <= 0:
            raise ConfigError("upstream_timeout and upstream_tag_timeout must be positive")
        if self.upstream_prefetch_concurrency < 1:
            raise ConfigError("upstream_prefetch_concurrency must be at least 1")
        if self.max_upload_sessions < 1:
            raise ConfigError("max_upload_sessions must be at least 1")
        if self.tag_ttl < 0:
            raise ConfigError("tag_ttl must be zero or more seconds")
        if self.cache_max_age < 0 or self.cache_max_bytes < 0:
            raise ConfigError("cache_max_age and cache_max_bytes must be zero or more")
        if self.local_cache_max_bytes < 0:
            raise ConfigError("local_cache_max_bytes must be zero or more (0: no limit)")
        if self.replicas and (not self.replica_url or isinstance(storage, Path) or storage is None):
            raise ConfigError(
                "replicas needs s3:// storage and replica_url (this origin's URL as the "
                "other replicas reach it)"
            )
        if self.gc_interval < 0 or self.gc_grace < 0:
            raise ConfigError("gc_interval and gc_grace must be zero or more seconds")
        if self.delta_workers < 1 or self.delta_history < 1:
            raise ConfigError("delta_workers and delta_history must be at least 1")
        if not 0 < self.delta_max_ratio <= 1:
            raise ConfigError("delta_max_ratio must be in (0, 1]")
        if self.tracker:
            self.tracker = check_http_url(self.tracker, "tracker")
        check_port(self.peer_port, "peer_port")
        self.log_level = check_log_level(self.log_level)
        if self.piece_burst_slots < 0:
            raise ConfigError("piece_burst_slots must be zero (off) or more")
        if self.peer_encryption not in _PEER_ENCRYPTION_MODES:
            raise ConfigError(
                f"peer_encryption must be one of {', '.join(_PEER_ENCRYPTION_MODES)}, "
                f"got {self.peer_encryption!r}"
            )
        self.check_security()

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
) -> OriginConfig:
    return load_config(OriginConfig, file=file, env_prefix=ENV_PREFIX, flags=flags, environ=environ)
