"""The tracker's typed configuration (defaults < TOML file < KRILL_TRACKER_* env < flags)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from redis.connection import parse_url as parse_redis_url

from krill.config import (
    ConfigError,
    SettingError,
    check_hostport,
    check_http_url,
    check_log_level,
    check_more_than_zero,
)
from krill.securityflags import SecuritySettings

# The URL schemes redis-py's ``from_url`` takes.
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


@dataclass
class TrackerConfig(SecuritySettings):
    # Where to listen, HOST:PORT.
    listen: str = "127.0.0.1:7000"
    # redis://host:port/db; when set, peers live in Redis so trackers behind one address share
    # them and a tracker restart loses nothing. Unset: in memory (peers re-announce after restart).
    redis: str | None = None
    # Origin base URLs the metainfo endpoint fetches from, tried in order.
    origin: list[str] = field(default_factory=list)
    # Seconds between a client's announces. Short because cluster swarms are short-lived and a
    # new peer should learn about others quickly; a tracker answer is cheap.
    interval: int = 30
    # Clients must not announce more often than this (libtorrent honours it).
    min_interval: int = 5
    # A peer that has not announced for this long is dropped (3 missed intervals).
    peer_ttl: int = 90
    # Peers handed out when the client does not say; and the cap whatever it asks for.
    default_numwant: int = 50
    max_numwant: int = 200
    # Live swarms (one per blob being pulled or seeded) the in-memory peer store holds; an
    # announce that would start one more is refused until some expire (a flood of random
    # info-hashes otherwise grows memory without bound). Redis has its own memory limit.
    max_swarms: int = 100_000
    # Metainfo documents kept in memory (each is ~20 bytes per piece, at most ~40 KB).
    metainfo_cache_entries: int = 4096
    # Seconds one origin gets to answer a metainfo request before the next is asked. Short:
    # agents give up on the swarm after swarm_deadline (5 s by default), so a hung origin
    # must leave time to ask another (at 5 s, a stopped replica sent every pull to HTTP).
    metainfo_timeout: float = 2.0
    log_level: str = "info"
    # Security (docs/security.md). announce_keys: a file of NODE:KEY lines; when set, only
    # announces to /announce/<KEY> with a listed key are answered. From SecuritySettings:
    # tls_cert/tls_key serve https (client_ca: mutual TLS); ca, client_cert/client_key and
    # origin_credentials (TOML: user, password) are for the tracker's own requests to the origin.
    announce_keys: Path | None = None

    def __post_init__(self) -> None:
        check_hostport(self.listen, "listen")
        check_more_than_zero(self, "seconds", "interval", "min_interval", "peer_ttl")
        check_more_than_zero(self, "peers", "default_numwant", "max_numwant")
        check_more_than_zero(self, "swarms", "max_swarms")
        check_more_than_zero(self, "documents", "metainfo_cache_entries")
        check_more_than_zero(self, "seconds", "metainfo_timeout")
        if self.peer_ttl < self.interval:
            raise ConfigError(
                f"peer_ttl ({self.peer_ttl}s) must be at least the announce interval "
                f"({self.interval}s), or peers expire between their announces"
            )
        self.origin = [check_http_url(url, "origin") for url in self.origin]
        self.log_level = check_log_level(self.log_level)
        if self.redis is not None:
            self._check_redis_url(self.redis)
        self.check_security()

    @staticmethod
    def _check_redis_url(url: str) -> None:
        """The scheme, and what redis-py makes of the rest (a port of "abc" or 99999 was
        taken here and failed at the first connection)."""
        problem = None
        if not url.startswith(_REDIS_SCHEMES):
            problem = "must be a redis://HOST:PORT/DB URL (rediss:// for TLS, unix:// for a socket)"
        else:
            try:
                parse_redis_url(url)
            except ValueError as exc:
                problem = f"is not a URL redis can use ({exc})"
        if problem is not None:
            raise SettingError(f"--redis {problem}, got {url!r}", "redis")
