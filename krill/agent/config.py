"""The agent's settings: one typed dataclass, filled by ``krill.config.load_config``.

Environment variables use the prefix ``KRILL_AGENT_`` (``KRILL_AGENT_SWARM_DEADLINE=3``);
a TOML file given with ``--config`` uses the field names as keys.
"""

from __future__ import annotations

import ipaddress
import platform
from dataclasses import dataclass, field
from pathlib import Path

from krill.agent.deltachoice import DeltaPolicy
from krill.config import (
    ConfigError,
    SettingError,
    check_at_most,
    check_hostport,
    check_http_url,
    check_log_level,
    check_more_than_zero,
    check_port,
    check_replica_urls,
    check_zero_or_more,
)
from krill.replicas import DNS_SCHEME, parse_replicas
from krill.securityflags import SecuritySettings

# krill.swarm.PeerEncryption's values, spelled here so loading a config never needs
# libtorrent (an agent without it runs on the HTTP fallback).
PEER_ENCRYPTION_MODES = ("off", "allowed", "required")

GiB = 1024**3

# libtorrent keeps its rate limits (bytes/s) in a C int: it took 2**31 silently as 0,
# which means unlimited.
MAX_RATE_LIMIT = 2**31 - 1

_MACHINE_TO_GOARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}


def node_architecture() -> str:
    """This machine's architecture in the OCI/Go spelling used by image indexes."""
    machine = platform.machine().lower()
    return _MACHINE_TO_GOARCH.get(machine, machine)


@dataclass
class AgentConfig(SecuritySettings):
    """Everything the agent can be told; defaults suit one node next to containerd."""

    # Control API (health, blobs, preheat, metrics).
    listen: str = "127.0.0.1:7400"
    # The pull-only registry endpoint containerd is pointed at (loopback by default:
    # only this node's containerd should use it).
    registry_listen: str = "127.0.0.1:7401"
    data: Path = Path("/var/lib/krill/agent")
    # Tracker base URL (announce is <tracker>/announce, metainfo <tracker>/krill/v1/metainfo/...).
    tracker: str = ""
    # The origin's base URL; or its replicas sharing one store: a comma-separated list of
    # base URLs, or ``dns+http://NAME:PORT`` (a headless Service: every address is a
    # replica). With several, each blob is asked of its rendezvous owner first (the
    # replica that caches and seeds it, krill.rendezvous) and of the others when it
    # fails (agent.origins). After loading, ``origin`` is one URL (the first listed,
    # or the Service's name: any replica) for manifests, tags, metainfo and health;
    # ``origins`` is the list and ``origin_dns`` the name to resolve.
    origin: str = ""
    origins: list[str] = field(default_factory=list)
    origin_dns: str = ""
    # The swarm's (libtorrent's) TCP listener. Peers on other nodes dial this node's
    # address as the tracker saw it (the source address of our announces: the
    # tracker ignores a client's ``ip=``), so the listener must take connections on
    # that address: all interfaces by default. 127.0.0.1 leaves a swarm no other
    # node can reach (pulls then come from the origin, at N times its egress).
    peer_host: str = "0.0.0.0"
    peer_port: int = 0  # 0 = any free port; a fixed one is easier to open in a firewall
    # BitTorrent protocol encryption between peers (krill.swarm.PeerEncryption, whose
    # docstring says what it does and doesn't protect): "off", "allowed" (libtorrent's
    # default) or "required".
    peer_encryption: str = "allowed"
    # Seconds a download may run, with other peers holding pieces, in a session no peer
    # has ever connected in to, before the agent warns that its peer port looks
    # unreachable (swarm.peer_port_unreachable); 0: never warn. Longer on links where
    # a herd's first pull takes longer to bring its peers in.
    unreachable_after: float = 10.0
    # Seconds the swarm gets to deliver its first verified bytes before the agent
    # falls back to plain HTTP from the origin.
    swarm_deadline: float = 5.0
    # Seconds to connect to / hear back from the origin before answering 503, so
    # containerd moves on to the upstream server in hosts.toml quickly.
    origin_timeout: float = 5.0
    # Seconds a blob being streamed may make no progress before the agent gives up
    # on that transfer (the client's connection is aborted; its retry starts over).
    stall_timeout: float = 60.0
    # Times the HTTP fallback resumes a broken origin transfer with a Range request.
    origin_resume_attempts: int = 5
    use_swarm: bool = True
    upload_rate_limit: int = 0
    download_rate_limit: int = 0
    seed_ttl: float = 600.0
    # Node cache: a disk budget; evict LRU unpinned blobs from the high watermark
    # down to the low one; blobs unused for cache_max_age seconds go too.
    cache_budget: int = 20 * GiB
    cache_high_watermark: float = 0.90
    cache_low_watermark: float = 0.75
    cache_max_age: float = 14 * 24 * 3600.0
    cache_check_interval: float = 60.0
    # Seconds a tag -> digest answer from the origin is reused; digests are immutable.
    tag_ttl: float = 30.0
    # Upstream registry host (containerd's ?ns=) -> origin repository prefix.
    # "" maps to the origin's own repositories. Unlisted hosts use the default rule
    # (see agent.namespaces).
    namespaces: dict[str, str] = field(default_factory=dict)
    # Layer deltas: before fetching a layer whole, ask the origin for a delta against the
    # cached layers of the repository's earlier images, fetch it and rebuild the layer.
    deltas: bool = True
    # Seconds the origin gets to answer a delta lookup before the layer is fetched whole.
    delta_lookup_timeout: float = 1.0
    # Delta or full (docs/agent.md): "fastest" takes whichever path this node's measured
    # link and rebuild rates say ends sooner; "fewest-bytes" always takes a delta on
    # offer, for sites that pay per byte (edge links, metered WAN).
    delta_policy: DeltaPolicy = DeltaPolicy.FASTEST
    # Platform preheat pulls when not asked for all (defaults to this machine's).
    platform_os: str = "linux"
    platform_architecture: str = field(default_factory=node_architecture)
    log_level: str = "info"
    # Security (docs/security.md), the fields of SecuritySettings. The control API serves
    # https with tls_cert/tls_key and, with client_ca, only to clients with a certificate
    # it signed (the registry endpoint stays plain http on loopback). Towards origin and
    # tracker: trust only the CA in `ca` (else the system's), present client_cert/client_key
    # to a server that asks, and send the node credentials in origin_credentials (TOML:
    # user, password, announce_key; krill.nodeauth).

    def __post_init__(self) -> None:
        _check_two_listeners(
            check_hostport(self.listen, "listen"),
            check_hostport(self.registry_listen, "registry_listen"),
        )
        _check_peer_address(self.peer_host, self.peer_port)
        if self.peer_encryption not in PEER_ENCRYPTION_MODES:
            raise ConfigError(
                f"peer_encryption must be one of {', '.join(PEER_ENCRYPTION_MODES)}, "
                f"got {self.peer_encryption!r}"
            )
        self._check_numbers()
        self.delta_policy = _delta_policy(self.delta_policy)
        self.check_security()
        self._split_origin()
        for name in ("tracker", "origin"):
            url = getattr(self, name)
            if url:
                setattr(self, name, check_http_url(url, name))
        self.log_level = check_log_level(self.log_level)

    def _check_numbers(self) -> None:
        """Each number against what it means, so none loads and then breaks every pull.

        A 0 stall timeout aborts every transfer and a 0 check interval spins the
        eviction loop; where 0 means "never" or "unlimited" it stays allowed.
        """
        check_more_than_zero(
            self, "seconds", "swarm_deadline", "origin_timeout", "stall_timeout",
            "delta_lookup_timeout", "cache_check_interval", "cache_max_age",
        )  # fmt: skip
        check_more_than_zero(self, "bytes", "cache_budget")
        check_zero_or_more(self, "seconds; 0: ask the origin every time", "tag_ttl")
        check_zero_or_more(self, "seconds; 0: drop a torrent once it has no peers", "seed_ttl")
        check_zero_or_more(self, "seconds; 0: never warn", "unreachable_after")
        check_zero_or_more(self, "0: never resume", "origin_resume_attempts")
        rates = ("upload_rate_limit", "download_rate_limit")
        check_zero_or_more(self, "bytes/s; 0: unlimited", *rates)
        check_at_most(self, MAX_RATE_LIMIT, "bytes/s; 0: unlimited", *rates)
        watermarks = ("cache_low_watermark", "cache_high_watermark")
        check_more_than_zero(self, "a fraction of cache_budget", *watermarks)
        check_at_most(self, 1, "a fraction of cache_budget", *watermarks)
        if not self.cache_low_watermark < self.cache_high_watermark:
            raise ConfigError(
                "cache watermarks must satisfy 0 < cache_low_watermark < "
                f"cache_high_watermark <= 1 (got {self.cache_low_watermark}, "
                f"{self.cache_high_watermark})"
            )

    def _split_origin(self) -> None:
        """``origin`` given as a list or a ``dns+`` name -> ``origins``/``origin_dns``.

        Done once: a config built again from these fields (``dataclasses.replace``)
        already has its list and keeps it.
        """
        if self.origins or self.origin_dns or not self.origin:
            return
        if "," not in self.origin and not self.origin.startswith(DNS_SCHEME):
            self.origins = [self.origin.rstrip("/")]
            return
        check_replica_urls(self.origin, "origin")
        urls, dns = parse_replicas(self.origin, "--origin")
        if dns is not None:
            self.origin_dns = str(dns)
            self.origin = str(dns)  # the Service's name answers from any replica
        else:
            self.origins = urls
            self.origin = urls[0]

    @property
    def announce_url(self) -> str:
        """The tracker's announce URL, derived from its base URL."""
        if self.tracker.endswith("/announce"):
            return self.tracker
        return f"{self.tracker}/announce"

    @property
    def tracker_base(self) -> str:
        return self.tracker.removesuffix("/announce")


def _delta_policy(value: str) -> DeltaPolicy:
    try:
        return DeltaPolicy(value)
    except ValueError:
        choices = ", ".join(repr(p.value) for p in DeltaPolicy)
        raise ConfigError(f"delta_policy must be one of {choices}, got {value!r}") from None


_WILDCARDS = ("0.0.0.0", "::", "")


def _check_two_listeners(control: tuple[str, int], registry: tuple[str, int]) -> None:
    """The control API and the registry endpoint need addresses of their own."""
    (host, port), (other_host, other_port) = control, registry
    overlap = host == other_host or host in _WILDCARDS or other_host in _WILDCARDS
    if port and port == other_port and overlap:
        raise ConfigError(
            f"--listen ({host}:{port}) and --registry-listen ({other_host}:{other_port}) "
            "need different ports: the control API and the registry endpoint are two servers"
        )


def _check_peer_address(host: str, port: int) -> None:
    """The peer listener's address must be an IP libtorrent can bind (not a host name)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise SettingError(
            f"--peer-host must be an IP address to listen on (0.0.0.0 for every "
            f"interface, or this node's address), got {host!r}",
            "peer_host",
        ) from None
    check_port(port, "peer_port")
