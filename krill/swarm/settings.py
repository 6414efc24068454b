"""What a swarm engine is told (``SwarmSettings``) and what it tells libtorrent.

``session_settings`` turns the engine's settings into libtorrent's session
settings for a data-centre swarm; each setting says why it has its value and
which benchmark row chose it (docs/swarm.md has the table and the tuning
record).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import libtorrent as lt

from krill.replicas import ReplicaRanking

__all__ = [
    "AGENT_PEER_ID_PREFIX",
    "ORIGIN_PEER_ID_PREFIX",
    "PeerEncryption",
    "SwarmSettings",
    "listen_interface",
    "session_settings",
]

ORIGIN_PEER_ID_PREFIX = "-KO"  # the tracker hands peers with this prefix out first
AGENT_PEER_ID_PREFIX = "-KA"
_PEER_ID_VERSION = "0100-"


class PeerEncryption(StrEnum):
    """BitTorrent protocol encryption (MSE/PE) between peers; docs/security.md.

    It is obfuscation, not security: RC4 keyed by an unauthenticated Diffie-Hellman
    exchange hides layer bytes from a passive observer of the wire, not from an
    active one (anyone can connect and take part), and it costs a handshake per
    connection and, when required, RC4 over every byte. Integrity never depends on
    it: every piece is SHA-1 checked and every blob's sha256 verified.
    """

    OFF = "off"  # plaintext only, both ways: no handshake cost
    ALLOWED = "allowed"  # libtorrent's default: encrypted handshake tried, plaintext accepted
    REQUIRED = "required"  # RC4 over the whole stream, plaintext peers refused


def encryption_settings(mode: PeerEncryption) -> lt.settings_pack:
    """libtorrent's policy settings for ``mode`` (in/out policy, level, RC4 preference)."""
    policy = lt.enc_policy
    if mode is PeerEncryption.OFF:
        return {
            "out_enc_policy": int(policy.pe_disabled),
            "in_enc_policy": int(policy.pe_disabled),
        }
    if mode is PeerEncryption.REQUIRED:
        return {
            "out_enc_policy": int(policy.pe_forced),
            "in_enc_policy": int(policy.pe_forced),
            "allowed_enc_level": int(lt.enc_level.pe_rc4),
            "prefer_rc4": True,
        }
    return {
        "out_enc_policy": int(policy.pe_enabled),
        "in_enc_policy": int(policy.pe_enabled),
        "allowed_enc_level": int(lt.enc_level.pe_both),
        "prefer_rc4": False,
    }


@dataclass
class SwarmSettings:
    tracker_url: str  # announce URL, e.g. http://127.0.0.1:7000/announce
    listen_host: str = "127.0.0.1"
    peer_port: int = 0  # 0 = pick a free port
    upload_rate_limit: int = 0  # bytes/s, 0 = unlimited
    # bytes/s from peers; the origin piece feed is held to it separately (feed.Pacer)
    download_rate_limit: int = 0
    seed_ttl: float = 600.0  # drop a torrent with no peers for this long
    origin: bool = False  # announce as an origin (peer id -KO...), which trackers favour
    # Pieces ahead of a streaming reader that get a deadline (see the krill.swarm package doc).
    stream_window_pieces: int = 16
    # Peers this engine uploads to at once. Fewer, faster flows beat many slow ones
    # (a piece can be passed on only once it is complete, so a piece that arrives
    # quickly from one peer spreads sooner than one trickling in from 15), but too
    # few leave a node's link idle while its unchoked peers have nothing to ask for.
    # scripts/bench-herd, 16 nodes with origin piece claims: 8 slots 1.14-1.24x the
    # limit, 4 slots 1.19-1.28x, 15 slots 1.26-1.28x. See docs/swarm.md.
    unchoke_slots: int = 8
    # Peers a seeded torrent uploads to at once (per torrent; -1 = no limit beyond
    # unchoke_slots). A herd's aim is that the origin sends each piece about once and
    # the nodes trade the rest; an origin feeding every node in parallel sends the
    # blob once per node instead. Few slots keep the origin's pieces distinct, but a
    # node fed by the origin also receives from its peers, so the origin's flow gets
    # only a share of that node's downlink: one slot left the origin's link 80 % idle
    # in the herd benchmark. None = 2 for origins, no extra limit for agents (numbers
    # in docs/swarm.md).
    seed_upload_slots: int | None = None
    # BEP 16 super-seeding of seeded torrents. libtorrent 2.1.1's stalls a peer that
    # gets everything from the seed (80 s instead of 1 s for 3 MiB; its first offer
    # to a connection is lost), so it is off here; the origin service turns it on
    # (OriginConfig.super_seed) because its nodes take the origin's share over HTTP
    # piece claims (origin_urls) and only peers without those would stall.
    super_seeding: bool = False
    # Dynamic super-seeding (opt-in; 0 = off): a seeded torrent is put in BEP 16
    # super-seed mode while no downloader is connected, so a herd arriving together
    # is offered disjoint pieces, and switched to normal mode while fewer than this
    # many downloaders are connected, so a lone node (or the last few of a herd) gets
    # every piece at full speed. Off by default: with libtorrent 2.1.1 it made the
    # herd benchmark 2x slower (a super-seed's first offer to a new connection is
    # lost and nodes sit idle ~10 s; docs/swarm.md, tuning record).
    super_seed_min_peers: int = 0
    # Upload slots of a torrent while it is super-seeding (-1 = unchoke_slots only).
    # None = 2 for origins, as seed_upload_slots: with piece claims a super-seed's
    # uploads are the origin's excess (pieces the claims deliver too), and at N=32 on
    # 25 Mbit/s links 8 slots sent 0.21x of the blob that way, 2 slots 0.08x, at the
    # same pull time or better (docs/swarm.md); no extra limit for agents.
    super_seed_upload_slots: int | None = None
    # How long ``seed`` waits for the tracker to confirm our announce (see
    # SwarmEngine._wait_first_announce); 0 = don't wait. Super-seeds never wait.
    first_announce_timeout: float = 2.0
    # Origins (base URLs) a download takes pieces from over HTTP (``krill.piecefeed``,
    # ``origin.piececlaims``): each node claims chunks of pieces no other node was
    # given, fetches them from the origin and hands them to libtorrent, which offers
    # them to the others. The origin then sends each piece about once, at the full
    # speed of its link, instead of libtorrent's nodes fetching popular pieces from
    # it several times over. Empty = peers only (the origin's seed is one of them).
    origin_urls: tuple[str, ...] = ()
    # Several origin replicas: ranks them per blob (the agent's OriginSet). Each
    # download claims from its blob's owner, so a herd's claims for one blob meet in
    # one claim book and replicas share the egress blob by blob; a replica that fails
    # is reported here and skipped (by the agent's HTTP fallback too) while the feed
    # goes on with the next. None = origin_urls[0] for every blob.
    origin_ranking: ReplicaRanking | None = None
    # With origin_urls: after a download has made no progress this long, it fetches
    # from the origin the missing pieces that no connected peer has (their claimer
    # died, say, or every chunk was claimed before this node came).
    fill_after: float = 2.0
    # fsync each downloaded blob (and its directory) before it is published. A store
    # that is a cache and hashes its blobs again after a restart before serving them
    # (the agent's, agent.cache) can skip it: a crash then costs a re-fetch, never an
    # unverified blob (BlobStore.adopt_file). Without it nothing is written back
    # early either: that only made the fsync short.
    durable_downloads: bool = True
    # A download running this long while other peers hold pieces, in a session no
    # peer has ever connected in to, logs a warning that the peer port is likely
    # unreachable (krill.swarm.reachability); 0 = never. Long enough that a herd's
    # first pull (6-12 s for 64 MiB at 100 Mbit/s, scripts/bench-herd) has had its
    # peers dial in.
    unreachable_after: float = 10.0
    # Protocol encryption between peers (PeerEncryption); ALLOWED is libtorrent's default.
    peer_encryption: PeerEncryption = PeerEncryption.ALLOWED
    # The CA an https tracker's certificate must chain to (the node's --ca); None: the
    # system's. libtorrent has no setting for it: see session.new_session.
    tracker_ca: Path | None = None


def listen_interface(host: str, port: int) -> str:
    """libtorrent's spelling of a listen address: IPv6 in brackets ("[::]:6881")."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def session_settings(settings: SwarmSettings) -> lt.settings_pack:
    """libtorrent settings for a data-centre swarm; each says why it is set."""
    prefix = ORIGIN_PEER_ID_PREFIX if settings.origin else AGENT_PEER_ID_PREFIX
    alerts = (
        lt.alert.category_t.error_notification
        | lt.alert.category_t.status_notification  # finished, removed, hash failed, state updates
        | lt.alert.category_t.storage_notification  # file errors
        | lt.alert.category_t.piece_progress_notification  # piece_finished: streaming prefix
        | lt.alert.category_t.tracker_notification  # tracker errors show up in our logs
        | lt.alert.category_t.stats_notification  # session counters
    )
    return {
        "listen_interfaces": listen_interface(settings.listen_host, settings.peer_port),
        **encryption_settings(settings.peer_encryption),
        "peer_fingerprint": prefix + _PEER_ID_VERSION,
        "alert_mask": int(alerts),
        "alert_queue_size": 100_000,  # a 256 MiB blob alone makes 2048 piece alerts
        # Peers are found through our tracker only: no public DHT, no multicast
        # discovery, no router port mapping in a data centre.
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        # TCP only: uTP's delay-based congestion control yields to other traffic,
        # which is right on home links and wrong on a cluster fabric, and it costs CPU.
        "enable_outgoing_utp": False,
        "enable_incoming_utp": False,
        "enable_outgoing_tcp": True,
        "enable_incoming_tcp": True,
        # Several peers can share one IP (containers behind one node IP; on loopback
        # every peer is 127.0.0.1 and peers differ only by port).
        "allow_multiple_connections_per_ip": True,
        # Our tracker lives on a private address; SSRF mitigation exists for the public
        # internet and would refuse tracker URLs and peers on local networks.
        "ssrf_mitigation": False,
        # Announce to every tracker we are given (several trackers share state via
        # Redis, but any one of them may be down) and honour short intervals: a
        # cluster swarm lives for seconds, not days.
        "announce_to_all_trackers": True,
        "announce_to_all_tiers": True,
        "min_announce_interval": 5,
        # After a refused or failed announce, retry in 7.5, 15, 27.5, 45 s ... (5 s +
        # 5 s x fails^2 x 50 %) instead of libtorrent's 17.5, 55, 117.5 s (250 %): a
        # cluster tracker is back in seconds after a restart or a Redis blip, and a
        # swarm that waits 17 s for it is a node pulling from the origin alone.
        "tracker_backoff": 50,
        "tracker_completion_timeout": 10,
        "tracker_receive_timeout": 5,
        "stop_tracker_timeout": 1,  # don't hang shutdown on a 'stopped' announce
        # Send buffers big enough for a fast link (2 MiB is 1.6 ms at 10 Gbit/s; a
        # cluster RTT is well under that) but no bigger: bytes queued for one peer are
        # bytes a seed has committed to a piece someone else might serve sooner.
        "send_buffer_watermark": 2 * 1024 * 1024,
        "send_buffer_low_watermark": 1024 * 1024,
        "send_buffer_watermark_factor": 150,
        # Request pipelines sized for low-latency links: ~1 s of transfer, at most
        # 32 blocks (512 KiB) per peer. Deeper queues lock pieces to one source early,
        # so two nodes fetch the same piece from the origin more often.
        "max_out_request_queue": 32,
        "max_allowed_in_request_queue": 2000,
        "request_queue_time": 1,
        # Cluster peers answer fast or are gone: fail connects and stalls quickly.
        "peer_connect_timeout": 3,
        # Reconnect to a peer that dropped us after 1 s, not libtorrent's 60 s: in a
        # cluster a dropped peer is usually back at once (a restart, or a seed that
        # paused its torrent to leave super-seed mode).
        "min_reconnect_time": 1,
        "request_timeout": 10,
        "piece_timeout": 10,
        "inactivity_timeout": 120,
        # Fixed slots (see SwarmSettings.unchoke_slots). Seeds use anti-leech: they
        # favour peers that have just started or are nearly done, so a newcomer gets
        # its first pieces (and can trade) at once and stragglers finish. Measured at
        # least as good as round robin in the herd benchmark (docs/swarm.md).
        # Re-decide every second: a cluster pull lasts seconds, and a node choked for
        # libtorrent's default 15 s at the end of a pull waits for pieces others hold.
        "choking_algorithm": int(lt.choking_algorithm_t.fixed_slots_choker),
        "unchoke_slots_limit": settings.unchoke_slots,
        "seed_choking_algorithm": int(lt.seed_choking_algorithm_t.anti_leech),
        "unchoke_interval": 1,
        "optimistic_unchoke_interval": 1,
        "connections_limit": 500,
        "max_peerlist_size": 4000,
        "torrent_connect_boost": 50,  # connect to every handed-out peer at once
        "connection_speed": 200,
        "smooth_connects": False,
        # Never queue torrents: each blob someone waits for must run now.
        "active_downloads": -1,
        "active_seeds": -1,
        "active_limit": -1,
        "dont_count_slow_torrents": False,
        # No piece suggestions: suggesting what is in a seed's read cache makes peers
        # ask it for pieces it already sent to someone else (duplicate origin egress).
        "suggest_mode": int(lt.suggest_mode_t.no_piece_suggestions),
        # Disk threads: one blob's writes go to the page cache and are cheap; the
        # default of 10 threads per process mostly adds context switches (a node
        # runs one engine; 16 nodes on one 2-core host spent ~10 % of the CPU
        # waking threads in the herd benchmark). An agent writes one blob at a time
        # and hashes each piece from the buffers it is about to write: one thread
        # does both (hashing_threads 0 puts hash jobs on the disk thread), which
        # saves hand-offs between threads per piece (scripts/bench-herd N=16, four
        # alternated runs: 10.8 -> 9.4 agent CPU-s per GiB; docs/profile-agent.md).
        # An origin reads many blobs for many peers from a real disk: its reads keep
        # two threads, and hashing its own.
        "aio_threads": 2 if settings.origin else 1,
        "hashing_threads": 1 if settings.origin else 0,
        "upload_rate_limit": settings.upload_rate_limit,
        "download_rate_limit": settings.download_rate_limit,
        # Rate limits apply to local (LAN) peers too; in a cluster every peer is local.
        "ignore_limits_on_local_network": False,
        "close_redundant_connections": True,  # seeds drop seed-to-seed connections
    }
