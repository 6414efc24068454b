"""The swarm engine: one libtorrent session per process, seeding and downloading blobs.

Used by the origin (``seed``: serve committed blobs from the store in place)
and by the agent (``download``: fetch a blob through the swarm into the
store, then keep seeding it). The guarantees:

* **Verified before visible.** A download is written under the store's
  ``incoming/`` area; only after libtorrent has every piece *and* the whole
  file's sha256 matches the digest is it published into the store
  (``BlobStore.adopt_file``: hash, fsync, atomic rename). Partial or corrupt
  data never appears at a store path.
* **Streaming of verified bytes.** ``Download.available`` is the length of
  the contiguous prefix whose pieces have passed their SHA-1 piece hash and
  are in the file: libtorrent reports a piece as passed before it has
  necessarily left its write cache, so while a reader waits the engine asks
  libtorrent to flush and counts a piece once a flush begun after its hash
  check has completed. Pieces are picked rarest-first (best for a herd: peers hold different
  pieces and can trade), and when a reader waits for an offset the engine
  puts piece deadlines on a window of pieces from there, so a streaming
  reader gets its next bytes first without making every peer download in
  the same order.
* **Single flight.** Concurrent ``download`` calls for one digest share one
  ``Download``; a blob already in the store returns a finished one at once.
* **Seeding in place.** ``seed`` adds the torrent with ``save_path`` = the
  blob's shard directory and name = the digest hex, so libtorrent's file is
  the store file itself, in seed mode (no re-hash of a file the store has
  verified). Torrents with no peers for ``seed_ttl`` seconds are dropped.
* **Piece claims.** With ``SwarmSettings.origin_urls`` a download also claims
  chunks of pieces from the origin over HTTP (``krill.piecefeed``,
  ``origin.piececlaims``) and hands them to libtorrent (``add_piece``), so a
  herd's nodes each take different pieces from the origin and trade the rest;
  a download that stalls fills from the origin what no peer has. A download
  is done when every piece is verified (not at libtorrent's "finished", which
  counts only the pieces it wants: claimed pieces on their way have priority 0).

libtorrent is blocking C++ with an alert queue. One task pumps alerts and
dispatches them to the ``Download`` objects; libtorrent wakes it through a
socket the event loop watches (``krill.alertbell``), so no thread blocks on
the queue.

Deviations from the written contract, all additive: ``SwarmSettings.origin``
(peer id prefix ``-KO`` so the tracker hands origins out first),
``origin_urls`` and ``fill_after`` (piece claims), and tuning
fields (``unchoke_slots``, ``seed_upload_slots``, ``super_seeding``,
``super_seed_min_peers``, ``super_seed_upload_slots``, ``first_announce_timeout``,
``stream_window_pieces``); ``SwarmStats.origin_feed_bytes``;
``SwarmEngine.super_seeding(digest)`` and
``.super_seed_toggles(digest)`` (dynamic super-seeding state,
for tests and logs); ``SwarmStats.failed_pieces`` and ``.torrents``;
``SwarmEngine.fetch_stats()`` (fresh session counters; ``stats()``
returns the last ones, refreshed every second); ``Download.digest``,
``Download.store_path`` and ``Download.open()`` (opens the partial file, or the
store file once the blob has been published, so a reader never races the
move).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp
import libtorrent as lt

from krill.alertbell import AlertBell
from krill.blobstore import BlobStore, DigestMismatchError
from krill.digests import Digest
from krill.metainfo import MetainfoError, check_metainfo, piece_count
from krill.piecefeed import OriginPieceFeed, PieceFeedError, consecutive_runs
from krill.prefixdigest import PrefixDigest
from krill.writeback import start_writeback

log = logging.getLogger(__name__)

ORIGIN_PEER_ID_PREFIX = "-KO"  # the tracker hands peers with this prefix out first
AGENT_PEER_ID_PREFIX = "-KA"
_PEER_ID_VERSION = "0100-"

# How often the pump asks libtorrent for session counters and torrent states.
_TICK_SECONDS = 1.0
# How long the pump sleeps when no alert comes: it also asks for stats every tick,
# and asks for cache flushes a streaming reader waits for, so shorter while one waits.
_ALERT_WAIT_SECONDS = 0.2
_ALERT_WAIT_READERS_SECONDS = 0.02
# At most this often the pump handles a batch of alerts (see _pump): 16 nodes on
# 2 cores spent ~10 % of the machine's CPU waking the event loop once per piece.
# A streaming reader learns of new bytes at most this much later.
_MIN_ALERT_BATCH_SECONDS = 0.025
# A download this close to done makes the pump skip that pause: its last piece's
# alert starts publishing, and a pause held it back (12 ms on average). Only while
# pieces keep coming: one stuck near its end must not end batching for all.
_NEARLY_DONE_PIECES = 8
_NEARLY_DONE_PROGRESS_SECONDS = 0.5
# At most this often per download, libtorrent is asked to write its cache out for a
# streaming reader (each flush also closes the torrent's file handles).
_MIN_FLUSH_INTERVAL = 0.05
# The digest task needs the prefix in the file soon, not at once: each flush makes
# libtorrent close and reopen the file.
_DIGEST_FLUSH_INTERVAL = 0.25
# Hashed per worker-thread call (~8 ms of one CPU): bounds how long a cancelled
# download's or a stopping engine's digest thread runs on.
_DIGEST_STRETCH = 16 * 1024 * 1024
# Dynamic super-seeding is armed again after a torrent has had no peers this long.
_SUPER_SEED_REARM_SECONDS = 10.0
# libtorrent's default piece priority, restored on pieces the origin feed had set to 0.
_DEFAULT_PRIORITY = 4
# Most pieces one stall fill asks the origin for (then it watches progress again).
_FILL_BATCH_PIECES = 64


@dataclass
class SwarmSettings:
    tracker_url: str  # announce URL, e.g. http://127.0.0.1:7000/announce
    listen_host: str = "127.0.0.1"
    peer_port: int = 0  # 0 = pick a free port
    upload_rate_limit: int = 0  # bytes/s, 0 = unlimited
    # bytes/s from peers; the origin piece feed is held to it separately (_Pacer)
    download_rate_limit: int = 0
    seed_ttl: float = 600.0  # drop a torrent with no peers for this long
    origin: bool = False  # announce as an origin (peer id -KO...), which trackers favour
    # Pieces ahead of a streaming reader that get a deadline (see module doc).
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
    # Upload slots of a torrent while it is super-seeding (-1 = unchoke_slots only):
    # each peer holds only the pieces it was offered, so more flows do not duplicate.
    super_seed_upload_slots: int = -1
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


@dataclass(frozen=True)
class SwarmStats:
    """Session totals since the engine started (libtorrent's session counters)."""

    uploaded: int  # payload bytes sent to peers
    downloaded: int  # payload bytes received from peers
    failed_pieces: int = 0  # pieces that failed their hash check (corrupt or lying peers)
    torrents: int = 0
    origin_feed_bytes: int = 0  # piece bytes fetched from origins over HTTP (krill.piecefeed)


class DownloadFailed(Exception):
    """The blob could not be fetched and verified; nothing was published."""


class Download:
    """One blob being fetched through the swarm (shared by every caller asking for it)."""

    def __init__(
        self, digest: Digest, size: int, piece_length: int, partial_path: Path
    ) -> None:
        self.digest = digest
        self.size = size
        self.piece_length = piece_length
        self.partial_path = partial_path
        self.store_path: Path | None = None
        self.available = 0
        # Bytes hashed while the pieces were still arriving; publishing hashed the rest.
        self.hashed_early = 0
        self._num_pieces = max(1, piece_count(size, piece_length))  # arrays: >= 1
        # Pieces that passed their hash (piece_finished_alert). libtorrent posts that
        # before the piece is necessarily written to the file (it may sit in its write
        # cache), so ``available`` only covers pieces known to be in the file: those
        # verified before a ``flush_cache`` that has since completed. See ``_flushed``.
        self._verified = bytearray(self._num_pieces)
        self._verified_count = 0
        self._last_progress = time.monotonic()  # when a piece last passed its check
        # Pieces handed to libtorrent from the origin feed and not yet verified (or
        # failed): not to be fetched again while libtorrent checks them.
        self._fed = bytearray(self._num_pieces)
        self._in_file = bytearray(self._num_pieces)
        self._flush_snapshot: bytes | None = None  # _verified when the pending flush began
        self._last_flush = 0.0
        self._readers = 0  # callers inside wait_available: they need flushes
        # The blob's sha256, hashed as its prefix lands in the file (krill.prefixdigest),
        # by the engine's digest task; it too waits for flushes, less eagerly.
        self._prefix_digest = PrefixDigest(partial_path)
        self._digest_waiting = False
        self._digesting: asyncio.Task[None] | None = None
        self._next_missing = 0
        self._progress = asyncio.Event()
        self._done: asyncio.Future[Path] = asyncio.get_running_loop().create_future()
        self._done.add_done_callback(_consume_exception)
        self._engine: SwarmEngine | None = None
        self._info_hash = ""
        self._deadlined_until = 0
        self._publishing = False

    @classmethod
    def finished(cls, digest: Digest, path: Path, piece_length: int) -> Download:
        """A download that is already complete (the blob was in the store)."""
        done = cls(digest, path.stat().st_size, piece_length, path)
        done._finish(path)
        return done

    @property
    def done(self) -> bool:
        return self._done.done()

    async def wait_available(self, offset: int) -> int:
        """Wait until more than ``offset`` verified bytes exist (or the blob is complete).

        Returns ``available``. Raises DownloadFailed if the download fails.
        """
        while self.available <= offset and not self._done.done():
            if self._engine is not None:
                self._engine._prioritise(self, offset)
            event = self._progress
            self._readers += 1
            try:
                await event.wait()
            finally:
                self._readers -= 1
        if self._done.done() and self._done.exception() is not None:
            raise self._done.exception()  # type: ignore[misc]
        return self.available

    async def wait_done(self) -> Path:
        """Wait until the blob is verified and in the store; return its store path."""
        return await asyncio.shield(self._done)

    def open(self) -> BinaryIO:
        """Open the data for reading: the store file once published, else the partial file.

        Keep the returned file open while streaming: the partial file is moved into
        the store when the download completes, and an open file follows the move.
        """
        for path in (self.store_path, self.partial_path, self.store_path):
            if path is None:
                continue
            with contextlib.suppress(FileNotFoundError):
                return open(path, "rb")
        if self._done.done() and self._done.exception() is not None:
            raise self._done.exception()  # type: ignore[misc]
        raise DownloadFailed(f"data of {self.digest} is neither being written nor stored")

    def cancel(self) -> None:
        """Stop the download for every caller sharing it; waiters get DownloadFailed.

        Once every piece has arrived and the file is being verified and published,
        cancelling does nothing: the blob is about to be in the store.
        """
        if self._done.done() or self._publishing:
            return
        self._fail(DownloadFailed(f"download of {self.digest} was cancelled"))
        if self._engine is not None:
            self._engine._cancel(self)

    # ---- called by the engine ----

    def _on_piece(self, index: int) -> None:
        if 0 <= index < self._num_pieces and not self._verified[index]:
            self._verified[index] = 1
            self._verified_count += 1
            self._last_progress = time.monotonic()

    def _forget_unverified_feed(self) -> None:
        for index, fed in enumerate(self._fed):
            if fed and not self._verified[index]:
                self._fed[index] = 0

    def _refeed(self, index: int) -> None:
        """A piece failed its hash check: the feed may fetch it again."""
        if 0 <= index < self._num_pieces:
            self._fed[index] = 0

    @property
    def _all_verified(self) -> bool:
        return self._verified_count >= self._num_pieces

    def _wants_flush(self, now: float) -> bool:
        """A reader or the digest task waits for a piece that is verified but maybe not
        yet in the file (a reader is served within _MIN_FLUSH_INTERVAL, the digest
        within _DIGEST_FLUSH_INTERVAL: each flush makes libtorrent reopen the file)."""
        if self._readers > 0:
            interval = _MIN_FLUSH_INTERVAL
        elif self._digest_waiting:
            interval = _DIGEST_FLUSH_INTERVAL
        else:
            return False
        return (
            self._flush_snapshot is None
            and self._next_missing < self._num_pieces
            and bool(self._verified[self._next_missing])
            and now - self._last_flush >= interval
        )

    async def _wait_in_file(self, offset: int) -> int:
        """For the digest task: wait until more than ``offset`` bytes are in the file.

        Unlike ``wait_available`` it sets no piece deadlines (the digest follows the
        swarm's order, it does not steer it) and returns as soon as publishing begins.
        """
        while self.available <= offset and not self._done.done() and not self._publishing:
            event = self._progress
            self._digest_waiting = True
            try:
                await event.wait()
            finally:
                self._digest_waiting = False
        return self.available

    def _flush_started(self, now: float) -> None:
        self._flush_snapshot = bytes(self._verified)
        self._last_flush = now

    def _flushed(self) -> None:
        """libtorrent wrote its cache: every piece verified before the flush is in the file."""
        snapshot, self._flush_snapshot = self._flush_snapshot, None
        if snapshot is None:
            return
        for index, verified in enumerate(snapshot):
            if verified:
                self._in_file[index] = 1
        start = self._next_missing
        while self._next_missing < self._num_pieces and self._in_file[self._next_missing]:
            self._next_missing += 1
        if self._next_missing == start:
            return
        available = min(self.size, self._next_missing * self.piece_length)
        if available != self.available:
            self.available = available
            self._wake()

    def _finish(self, store_path: Path) -> None:
        self.store_path = store_path
        self.available = self.size
        if not self._done.done():
            self._done.set_result(store_path)
        self._wake()

    def _fail(self, exc: DownloadFailed) -> None:
        if not self._done.done():
            self._done.set_exception(exc)
        self._wake()

    def _wake(self) -> None:
        self._progress.set()
        self._progress = asyncio.Event()


def _hashed_further(prefix: PrefixDigest, end: int, write_back: bool) -> PrefixDigest:
    """``prefix`` hashed up to ``end``; with ``write_back`` the kernel starts writing
    that much to disk (so the fsync at publishing finds little left to write)."""
    prefix.advance(end)
    if write_back:
        start_writeback(prefix.path, prefix.offset)
    return prefix


def _consume_exception(future: asyncio.Future[Path]) -> None:
    """Mark a failure as seen, so a download nobody awaited does not log 'never retrieved'."""
    if not future.cancelled():
        future.exception()


@dataclass
class _Torrent:
    handle: lt.torrent_handle
    digest: Digest
    metainfo: bytes
    download: Download | None  # None when seeding a stored blob
    last_active: float
    super_seeding: bool = False  # BEP 16 mode is on for this torrent right now
    super_seed_toggles: int = 0  # how often dynamic super-seeding switched (tests, logs)


def session_settings(settings: SwarmSettings) -> dict[str, Any]:
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
        "listen_interfaces": f"{settings.listen_host}:{settings.peer_port}",
        "peer_fingerprint": prefix + _PEER_ID_VERSION,
        "alert_mask": int(alerts),
        "alert_queue_size": 100_000,  # a 64 MiB blob alone makes 1024 piece alerts
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
        # waking threads in the herd benchmark).
        "aio_threads": 2,
        "upload_rate_limit": settings.upload_rate_limit,
        "download_rate_limit": settings.download_rate_limit,
        # Rate limits apply to local (LAN) peers too; in a cluster every peer is local.
        "ignore_limits_on_local_network": False,
        "close_redundant_connections": True,  # seeds drop seed-to-seed connections
    }


class SwarmEngine:
    """One libtorrent session, its alert pump, and the torrents it seeds or downloads."""

    def __init__(
        self,
        settings: SwarmSettings,
        store: BlobStore,
        http: aiohttp.ClientSession | None = None,
    ) -> None:
        """``http``: the session for the origin piece feed (``settings.origin_urls``),
        e.g. the agent's own; without one the engine opens (and closes) its own."""
        self.settings = settings
        self.store = store
        self._given_http = http
        self._session: lt.session | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._torrents: dict[str, _Torrent] = {}  # by hex infohash
        self._downloads: dict[Digest, Download] = {}
        self._removals: dict[str, asyncio.Future[None]] = {}
        self._hurry_pump = asyncio.Event()  # cuts the pump's pause short (see _pump)
        self._stats_waiters: list[asyncio.Future[SwarmStats]] = []
        self._announce_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._stats = SwarmStats(0, 0)
        self._hash_failures = 0
        self._origin_feed_bytes = 0
        self._background: set[asyncio.Task[Any]] = set()
        self._bell: AlertBell | None = None
        self._http: aiohttp.ClientSession | None = None  # origin piece feed, if configured

    async def __aenter__(self) -> SwarmEngine:
        params = session_settings(self.settings)
        self._session = await asyncio.to_thread(lt.session, params)
        self._bell = AlertBell(self._session)
        try:
            self._stopping = False
            self._pump_task = asyncio.create_task(self._pump(), name="swarm-alert-pump")
            if self.settings.origin_urls:
                self._http = self._given_http or aiohttp.ClientSession()
        except BaseException:
            if self._pump_task is not None:
                self._pump_task.cancel()
            self._close_bell()
            raise
        log.info(
            "swarm.started listen=%s:%d tracker=%s origin=%s",
            self.settings.listen_host, self.peer_port, self.settings.tracker_url,
            self.settings.origin,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self._stop_downloads_and_pump()
        finally:
            # Even if that was cancelled: libtorrent must stop writing to the bell's
            # socket before it is closed (its descriptor number will be reused).
            self._close_bell()
        if self._session is not None:
            for torrent in list(self._torrents.values()):
                self._session.remove_torrent(torrent.handle)
            self._torrents.clear()
            # Destroying the session joins libtorrent's threads: drop the last
            # reference in a worker thread, not on the event loop.
            holder = [self._session]
            self._session = None
            await asyncio.to_thread(holder.clear)
        if self._http is not None and self._http is not self._given_http:
            await self._http.close()
        self._http = None
        for torrent_dir in {d.partial_path.parent for d in self._downloads.values()}:
            shutil.rmtree(torrent_dir, ignore_errors=True)
        self._downloads.clear()
        log.info(
            "swarm.stopped uploaded=%d downloaded=%d origin_feed_bytes=%d",
            self._stats.uploaded, self._stats.downloaded, self._origin_feed_bytes,
        )

    async def _stop_downloads_and_pump(self) -> None:
        for download in list(self._downloads.values()):
            download._fail(DownloadFailed(f"swarm engine stopped before {download.digest}"))
        background = list(self._background)
        for task in background:
            task.cancel()
        self._stopping = True
        # The pump sees _stopping now, not after its pause or its wait.
        self._hurry_pump.set()
        if self._bell is not None:
            self._bell.ring()
        # Let them unwind (origin feeds restore piece priorities, removals stop) while
        # the session still exists; what they leave in incoming/ goes at the next start.
        await asyncio.gather(*background, return_exceptions=True)
        if self._pump_task is not None:
            await self._pump_task  # exits at once (rung above); never cancelled mid-batch

    def _close_bell(self) -> None:
        if self._bell is not None:
            self._bell.close()
            self._bell = None

    @property
    def peer_port(self) -> int:
        return int(self._require_session().listen_port())

    def stats(self) -> SwarmStats:
        """The session counters as of the last pump tick (at most ~1 s old)."""
        return self._stats

    async def fetch_stats(self) -> SwarmStats:
        """Ask libtorrent for fresh session counters."""
        future: asyncio.Future[SwarmStats] = asyncio.get_running_loop().create_future()
        self._stats_waiters.append(future)
        self._require_session().post_session_stats()
        self._hurry_pump.set()  # the answer is an alert: not after the pump's pause
        async with asyncio.timeout(10):
            return await future

    # ---- seeding ----

    async def seed(self, digest: Digest, metainfo: bytes) -> None:
        """Seed a committed blob from its store file in place (no copy, no re-hash)."""
        info_hash, ti = _torrent_info(metainfo, digest)
        await self._wait_removed(info_hash)  # an expired seed of it may be on its way out
        existing = self._torrents.get(info_hash)
        if existing is not None:
            existing.last_active = time.monotonic()
            return
        path = self.store.path(digest)
        if not path.is_file():
            raise FileNotFoundError(f"cannot seed {digest}: it is not in the store at {path}")
        params = self._torrent_params(ti, path.parent)
        # seed_mode: trust the store's verification instead of re-reading the file.
        params.flags |= lt.torrent_flags.seed_mode
        super_seed = self.settings.super_seeding or self.settings.super_seed_min_peers > 0
        if super_seed:
            params.flags |= lt.torrent_flags.super_seeding
        params.max_uploads = self._seed_upload_slots(super_seed)
        handle = self._require_session().add_torrent(params)
        self._torrents[info_hash] = _Torrent(
            handle, digest, metainfo, None, time.monotonic(), super_seeding=super_seed
        )
        log.info("swarm.seeding digest=%s info_hash=%s path=%s super_seeding=%s",
                 digest, info_hash, path, super_seed)
        await self._wait_first_announce(info_hash)

    async def _wait_first_announce(self, info_hash: str) -> None:
        """Wait (briefly) until the tracker knows we seed ``info_hash``.

        The origin starts seeding when a node asks for metainfo, and that node
        announces right after: if our own announce has not reached the tracker
        by then, the node's peer list lacks the origin and it waits for its next
        announce (seconds) before it can fetch anything. Only origins wait, and
        not super-seeding ones: their nodes take the origin's share over HTTP
        piece claims (``origin_urls``), not from its seed, so they need not find
        it in their first peer list; the wait (a tracker round trip, 20-40 ms in
        the herd benchmark) only delayed every node's first byte.
        """
        timeout = self.settings.first_announce_timeout
        if timeout <= 0 or not self.settings.origin or self.settings.super_seeding:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._announce_waiters.setdefault(info_hash, []).append(future)
        try:
            async with asyncio.timeout(timeout):
                await future
        except TimeoutError:
            log.warning("swarm.first_announce_slow info_hash=%s waited=%.1fs", info_hash, timeout)
        finally:
            waiters = self._announce_waiters.get(info_hash, [])
            if future in waiters:
                waiters.remove(future)
            if not waiters:
                self._announce_waiters.pop(info_hash, None)

    def super_seeding(self, digest: Digest) -> bool | None:
        """Whether the torrent seeding ``digest`` is in super-seed mode (None: not seeded)."""
        for torrent in self._torrents.values():
            if torrent.digest == digest and torrent.download is None:
                return torrent.super_seeding
        return None

    def super_seed_toggles(self, digest: Digest) -> int:
        """How often dynamic super-seeding switched the torrent seeding ``digest``."""
        for torrent in self._torrents.values():
            if torrent.digest == digest and torrent.download is None:
                return torrent.super_seed_toggles
        return 0

    def _seed_upload_slots(self, super_seeding: bool = False) -> int:
        if super_seeding:
            return self.settings.super_seed_upload_slots
        if self.settings.seed_upload_slots is None:
            return 2 if self.settings.origin else -1
        return self.settings.seed_upload_slots

    def _adjust_super_seeding(self, torrent: _Torrent, status: lt.torrent_status) -> None:
        """Dynamic super-seeding: armed while idle, off for a lone node or the last few.

        libtorrent tells a peer which pieces a super-seed "has" only when the peer
        connects; a peer that connected in normal mode knows every piece, and a
        super-seed refuses its requests for pieces it did not offer that peer. So
        the mode is switched on only while nobody is connected (``seed`` and
        ``_rearm_super_seeding``: armed for the next herd) and off as soon as
        fewer than ``super_seed_min_peers`` downloaders are connected (a lone node
        then gets the full bitfield and every piece at full speed).
        """
        threshold = self.settings.super_seed_min_peers
        if threshold <= 0 or self.settings.super_seeding or torrent.download is not None:
            return
        downloading = int(status.num_peers) - int(status.num_seeds)
        if 0 < downloading < threshold and torrent.super_seeding:
            self._set_super_seeding(torrent, False, downloading)

    def _rearm_super_seeding(self, torrent: _Torrent, now: float) -> None:
        """Arm super-seeding again once a torrent has had no peers for a while (the
        pause in ``_set_super_seeding`` drops peers for a moment; they come back)."""
        if (
            self.settings.super_seed_min_peers > 0
            and not self.settings.super_seeding
            and torrent.download is None
            and not torrent.super_seeding
            and now - torrent.last_active >= _SUPER_SEED_REARM_SECONDS
        ):
            self._set_super_seeding(torrent, True, 0)

    def _set_super_seeding(self, torrent: _Torrent, wanted: bool, downloading: int) -> None:
        if wanted:
            torrent.handle.set_flags(lt.torrent_flags.super_seeding)
        else:
            torrent.handle.unset_flags(lt.torrent_flags.super_seeding)
            # libtorrent 2.1 sends the full bitfield on leaving super-seed mode only to
            # peers it has offered a piece, and its first offer to a new connection is
            # lost (sent during the handshake), so a peer may know of nothing. A pause
            # drops the connections; on resume they are made again, with every piece.
            torrent.handle.pause()
            torrent.handle.resume()
        torrent.handle.set_max_uploads(self._seed_upload_slots(wanted))
        torrent.super_seeding = wanted
        torrent.super_seed_toggles += 1
        log.info("swarm.super_seeding digest=%s on=%s downloading_peers=%d",
                 torrent.digest, wanted, downloading)

    # ---- downloading ----

    async def download(self, digest: Digest, metainfo: bytes) -> Download:
        """Start (or join) fetching ``digest`` through the swarm; returns at once."""
        info_hash, ti = _torrent_info(metainfo, digest)
        piece_length = int(ti.piece_length())
        # Waiting for an old torrent's removal lets other callers run: look again after
        # every wait, so two callers never both start a download of one digest.
        for _ in range(3):
            ongoing = self._downloads.get(digest)
            if ongoing is not None and not ongoing.done:
                return ongoing
            if self.store.has(digest):
                return Download.finished(digest, self.store.path(digest), piece_length)
            if info_hash in self._torrents:  # a failed or cancelled attempt still being removed
                await self._remove(info_hash)
                continue
            removing = self._removals.get(info_hash)
            if removing is None or removing.done():
                break
            with contextlib.suppress(TimeoutError):  # libtorrent must drop it before a re-add
                async with asyncio.timeout(10):
                    await asyncio.shield(removing)
        else:
            raise DownloadFailed(f"the swarm is still removing an old download of {digest}")
        torrent_dir = self.store.incoming_path()
        torrent_dir.mkdir()
        download = Download(digest, int(ti.total_size()), piece_length, torrent_dir / digest.hex)
        download._engine = self
        download._info_hash = info_hash
        params = self._torrent_params(ti, torrent_dir)
        handle = self._require_session().add_torrent(params)
        # Create the (sparse) file now, without truncating, so a reader can open it
        # before libtorrent writes the first piece; libtorrent opens the same inode.
        download.partial_path.touch(exist_ok=True)
        self._torrents[info_hash] = _Torrent(handle, digest, metainfo, download, time.monotonic())
        self._downloads[digest] = download
        log.info(
            "swarm.download_started digest=%s info_hash=%s size=%d piece_length=%d",
            digest, info_hash, download.size, piece_length,
        )
        if download.size == 0:
            self._spawn(self._publish(info_hash))
        elif self._http is not None:
            self._spawn(self._feed_from_origin(info_hash, download))
        if download.size > 0:
            download._digesting = self._spawn(self._digest_while_downloading(download))
        return download

    async def _digest_while_downloading(self, download: Download) -> None:
        """Hash the blob's prefix as it lands in the file, so publishing hashes only the tail.

        Each stretch is hashed on a copy in a worker thread, at most
        ``_DIGEST_STRETCH`` bytes at a time, and the copy installed here on the
        loop: a cancelled task's thread (it cannot be stopped) never touches
        the digest that publishing reads, and stops after one stretch.
        """
        while not download.done and not download._publishing:
            offset = download._prefix_digest.offset
            available = await download._wait_in_file(offset)
            if download.done or download._publishing:
                return
            end = min(available, offset + _DIGEST_STRETCH)
            try:
                download._prefix_digest = await asyncio.to_thread(
                    _hashed_further,
                    download._prefix_digest.copy(),
                    end,
                    self.settings.durable_downloads,
                )
            except OSError as exc:  # a cancelled download's file is removed; publish hashes all
                if not download.done:
                    log.warning("swarm.digest_failed digest=%s error=%s", download.digest, exc)
                return

    def _torrent_params(self, ti: lt.torrent_info, save_path: Path) -> lt.add_torrent_params:
        params = lt.add_torrent_params()
        params.ti = ti
        params.save_path = str(save_path)
        params.trackers = [self.settings.tracker_url]
        # Not auto-managed: libtorrent's queue would hold back torrents someone waits on.
        params.flags &= ~lt.torrent_flags.auto_managed
        params.flags &= ~lt.torrent_flags.paused
        params.flags |= lt.torrent_flags.disable_dht | lt.torrent_flags.disable_lsd
        params.storage_mode = lt.storage_mode_t.storage_mode_sparse
        return params

    # ---- pieces straight from the origin (see krill.piecefeed, origin.piececlaims) ----

    async def _feed_from_origin(self, info_hash: str, download: Download) -> None:
        """Claim chunks from the origin and hand their pieces to libtorrent; then fill stalls."""
        assert self._http is not None
        feed = OriginPieceFeed(
            self._http, self.settings.origin_urls[0], download.digest,
            download.size, download.piece_length,
        )
        pacer = _Pacer(self.settings.download_rate_limit)
        if not await self._wait_until_checked(info_hash, download):
            return
        # A new round began while this node was still pulling: the origin hands out
        # chunks from the start again, and the node walks past the ones it has. At
        # most one such claim per piece, so a misbehaving origin cannot loop it.
        walked = 0
        try:
            while not self._feed_over(info_hash, download):
                claimed = await feed.claim()
                if claimed is None:
                    break
                if all(download._verified[index] for index in claimed):
                    walked += 1
                    if walked > download._num_pieces:
                        break
                    continue
                walked = 0
                wanted = self._unsourced(info_hash, download, claimed)
                if not wanted:
                    # Peers hold every claimed piece this node lacks: a node joining
                    # a swarm of seeds (a new round of claims, long after a herd)
                    # takes one chunk from the origin while it connects, then
                    # everything from its peers.
                    log.info("swarm.origin_claims_done digest=%s reason=peers_have_it",
                             download.digest)
                    break
                await self._fetch_pieces(info_hash, download, feed, wanted, pacer)
        except PieceFeedError as exc:
            log.warning("swarm.origin_claims_failed digest=%s error=%s", download.digest, exc)
        await self._fill_stalls(info_hash, download, feed, pacer)

    def _feed_over(self, info_hash: str, download: Download) -> bool:
        torrent = self._torrents.get(info_hash)
        return (
            download.done
            or download._publishing
            or self._stopping
            or torrent is None
            or torrent.download is not download  # a newer download of the same blob
        )

    async def _wait_until_checked(self, info_hash: str, download: Download) -> bool:
        """libtorrent ignores ``add_piece`` while it checks a new torrent's files."""
        checking = (
            lt.torrent_status.states.checking_files,
            lt.torrent_status.states.checking_resume_data,
            lt.torrent_status.states.queued_for_checking,
            lt.torrent_status.states.allocating,
        )
        for _ in range(2000):  # 10 s; a new torrent's (empty) file is checked in ms
            if self._feed_over(info_hash, download):
                return False
            if self._torrents[info_hash].handle.status(0).state not in checking:
                return True
            await asyncio.sleep(0.005)
        log.warning("swarm.origin_feed_skipped info_hash=%s reason=still_checking", info_hash)
        return False

    def _unsourced(self, info_hash: str, download: Download, pieces: range) -> list[int]:
        """Pieces among ``pieces`` this node lacks and no connected peer but an origin has.

        libtorrent's availability counts every connected peer that has a piece; what
        origins have (all of it, or in super-seed mode the few pieces they offered)
        is taken off, since those are the pieces to take from the origin over HTTP.
        """
        torrent = self._torrents.get(info_hash)
        if torrent is None:
            return []
        availability = torrent.handle.piece_availability()
        origin_id = ORIGIN_PEER_ID_PREFIX.encode()
        for peer in torrent.handle.get_peer_info():
            if peer.pid.to_bytes().startswith(origin_id):
                for index, has in enumerate(peer.pieces[: len(availability)]):
                    if has:
                        availability[index] -= 1
        return [
            index
            for index in pieces
            if not download._verified[index]
            and not download._fed[index]
            and (index >= len(availability) or availability[index] <= 0)
        ]

    async def _fetch_pieces(
        self,
        info_hash: str,
        download: Download,
        feed: OriginPieceFeed,
        wanted: list[int],
        pacer: _Pacer,
    ) -> None:
        """Fetch ``wanted`` (pieces no peer can give us, see ``_unsourced``) from the
        origin, into libtorrent.

        While they are on their way their priority is 0, so libtorrent does not also
        ask the origin's seed for them; each is put back to the default as soon as
        libtorrent has it (``add_piece`` marks its blocks as being written). Not when
        they are all that is left: libtorrent would call the torrent finished, drop
        its seeds and resume for every piece that then arrives.
        """
        torrent = self._torrents.get(info_hash)
        if not wanted or torrent is None:
            return
        handle = torrent.handle
        remaining = download._num_pieces - download._verified_count
        zeroed = len(wanted) < remaining
        if zeroed:
            handle.prioritize_pieces([(index, 0) for index in wanted])
        pending = set(wanted)
        try:
            for run in consecutive_runs(wanted):
                async for index, data in feed.pieces(run):
                    if self._feed_over(info_hash, download):
                        return
                    handle.add_piece(index, data, 0)
                    download._fed[index] = 1
                    self._origin_feed_bytes += len(data)
                    if zeroed:
                        handle.piece_priority(index, _DEFAULT_PRIORITY)
                    pending.discard(index)
                    await pacer.took(len(data))
        finally:
            if zeroed and pending and self._torrents.get(info_hash) is torrent:
                handle.prioritize_pieces([(index, _DEFAULT_PRIORITY) for index in pending])
                # Priority 0 also dropped any streaming deadlines on them: set again.
                download._deadlined_until = min(download._deadlined_until, min(pending))

    async def _fill_stalls(
        self, info_hash: str, download: Download, feed: OriginPieceFeed, pacer: _Pacer
    ) -> None:
        """While the download runs: after ``fill_after`` s without progress, fetch from
        the origin the missing pieces that no connected peer has, until none are left.

        Each node starts at a random one of them, so a stalled herd (a claimer died)
        does not fetch the same pieces from the origin all at once.
        """
        seen, since, filling = download._verified_count, time.monotonic(), False
        while True:
            if not filling:
                await asyncio.sleep(min(0.5, self.settings.fill_after))
            if self._feed_over(info_hash, download):
                return
            now = time.monotonic()
            if not filling and download._verified_count != seen:
                seen, since = download._verified_count, now
                continue
            if not filling and now - since < self.settings.fill_after:
                continue
            unsourced = self._unsourced(info_hash, download, range(download._num_pieces))
            filling = bool(unsourced)
            if not filling:
                # Stalled, yet every missing piece is with a peer or was fed: a fed
                # piece libtorrent dropped unchecked may be fetched again next time.
                download._forget_unverified_feed()
                seen, since = download._verified_count, now
                continue
            start = random.randrange(len(unsourced))
            batch = (unsourced[start:] + unsourced[:start])[:_FILL_BATCH_PIECES]
            log.info("swarm.origin_fill digest=%s pieces=%d", download.digest, len(batch))
            try:
                await self._fetch_pieces(info_hash, download, feed, batch, pacer)
            except PieceFeedError as exc:
                log.warning("swarm.origin_fill_failed digest=%s error=%s", download.digest, exc)
                filling = False  # wait for another stall before asking the origin again
                seen, since = download._verified_count, time.monotonic()

    def _prioritise(self, download: Download, offset: int) -> None:
        """Give the pieces just ahead of a streaming reader deadlines (soonest first)."""
        first = offset // download.piece_length
        last = min(download._num_pieces, first + self.settings.stream_window_pieces)
        start = max(first, download._deadlined_until)
        if start >= last:
            return
        torrent = self._torrents.get(download._info_hash)
        if torrent is None:
            return
        for index in range(start, last):
            if not download._verified[index]:
                torrent.handle.set_piece_deadline(index, 100 * (index - first))
        download._deadlined_until = last

    def _forget(self, download: Download) -> None:
        """Drop ``download`` from the single-flight table, but never a newer one."""
        if self._downloads.get(download.digest) is download:
            del self._downloads[download.digest]

    def _cancel(self, download: Download) -> None:
        info_hash = download._info_hash
        torrent = self._torrents.get(info_hash)
        self._forget(download)
        if torrent is not None and torrent.download is download:
            self._spawn(self._remove_and_clean(info_hash, download.partial_path.parent))

    async def _remove_and_clean(self, info_hash: str, torrent_dir: Path) -> None:
        await self._remove(info_hash)
        await asyncio.to_thread(shutil.rmtree, torrent_dir, True)

    async def _publish(self, info_hash: str) -> None:
        """libtorrent has every piece: verify the whole file, publish it, seed it from the store."""
        torrent = self._torrents.get(info_hash)
        if torrent is None or torrent.download is None:
            return
        download = torrent.download
        if download._publishing or download.done or self._stopping:
            return
        download._publishing = True  # past cancelling: every piece is here
        download._wake()  # the digest task stops waiting for more of the file
        await self._remove(info_hash)  # closes libtorrent's files before the move
        if download._digesting is not None:  # let it finish the stretch it is hashing
            await asyncio.wait({download._digesting})
        download.hashed_early = download._prefix_digest.offset
        try:
            await asyncio.to_thread(
                self.store.adopt_file,
                download.partial_path,
                download.digest,
                hashed=download._prefix_digest,
                durable=self.settings.durable_downloads,
            )
        except (DigestMismatchError, OSError) as exc:
            log.error("swarm.verify_failed digest=%s error=%s", download.digest, exc)
            download._fail(DownloadFailed(f"downloaded {download.digest} failed to verify: {exc}"))
            return
        finally:
            # Before the download is done: an engine stopped right after would
            # cancel this and leave the directory behind.
            self._forget(download)
            await asyncio.to_thread(shutil.rmtree, download.partial_path.parent, True)
        download._finish(self.store.path(download.digest))
        log.info(
            "swarm.download_done digest=%s size=%d hashed_early=%d",
            download.digest, download.size, download.hashed_early,
        )
        if not self._stopping:
            await self.seed(download.digest, torrent.metainfo)

    async def _remove(self, info_hash: str) -> None:
        future = self._begin_removal(info_hash)
        if future is not None:
            await self._await_removal(info_hash, future)

    def _begin_removal(self, info_hash: str) -> asyncio.Future[None] | None:
        """Take the torrent out of our table and ask libtorrent to drop it, at once.

        Synchronous, so nobody can find (and rely on) a torrent that is about to go.
        """
        torrent = self._torrents.pop(info_hash, None)
        if torrent is None or self._session is None:
            return None
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._removals[info_hash] = future
        self._session.remove_torrent(torrent.handle)
        self._hurry_pump.set()
        return future

    async def _await_removal(self, info_hash: str, future: asyncio.Future[None]) -> None:
        """Wait (at most 10 s) until libtorrent confirms the removal."""
        try:
            async with asyncio.timeout(10):
                await asyncio.shield(future)
        except TimeoutError:
            log.warning("swarm.remove_timeout info_hash=%s", info_hash)
        finally:
            if self._removals.get(info_hash) is future:
                del self._removals[info_hash]

    async def _wait_removed(self, info_hash: str) -> None:
        """libtorrent refuses to add a torrent it is still removing: wait for that first."""
        removing = self._removals.get(info_hash)
        if removing is not None and not removing.done():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await asyncio.shield(removing)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_log_failure)
        return task

    # ---- the alert pump ----

    async def _pump(self) -> None:
        session = self._require_session()
        bell = self._bell
        assert bell is not None
        next_tick = 0.0
        batch_start = 0.0
        while not self._stopping:
            # A busy download queues an alert per piece: wait a moment before the
            # next batch so it is one wake-up per _MIN_ALERT_BATCH_SECONDS, not one
            # per piece. Not while a removal is under way (a finished download's
            # publishing waits for that alert), nor while a download is down to its
            # last few pieces (the last one's alert starts its publishing).
            pause = batch_start + _MIN_ALERT_BATCH_SECONDS - time.monotonic()
            if pause > 0 and not self._removals and not self._a_download_nearly_done():
                await self._pause_unless_hurried(pause)
            readers = any(d._readers for d in self._downloads.values())
            await bell.wait(_ALERT_WAIT_READERS_SECONDS if readers else _ALERT_WAIT_SECONDS)
            batch_start = time.monotonic()
            for alert in session.pop_alerts():
                try:
                    self._dispatch(alert)
                except Exception:
                    log.exception("swarm.alert_error alert=%s", type(alert).__name__)
            now = time.monotonic()
            tick = now >= next_tick
            if tick:
                next_tick = now + _TICK_SECONDS
            try:
                self._housekeep(session, now, tick)
            except Exception:  # one bad handle must not stop the pump every download waits on
                log.exception("swarm.housekeeping_error")
        # Drain what is left so nothing waits on an alert that will never be read.
        for alert in session.pop_alerts():
            with contextlib.suppress(Exception):
                self._dispatch(alert)

    def _a_download_nearly_done(self) -> bool:
        recent = time.monotonic() - _NEARLY_DONE_PROGRESS_SECONDS
        return any(
            not d.done
            and d._num_pieces - d._verified_count <= _NEARLY_DONE_PIECES
            and d._last_progress >= recent
            for d in self._downloads.values()
        )

    async def _pause_unless_hurried(self, seconds: float) -> None:
        """The pump's pause between batches, cut short when a removal begins (a
        publishing download waits for that removal's alert; measured: every publish
        waited out a whole pause, ~25 ms, before this), when ``fetch_stats`` asks
        for counters, or when the engine stops."""
        if not self._hurry_pump.is_set() and not self._stopping:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await self._hurry_pump.wait()
        self._hurry_pump.clear()  # a hurry asked for during the batch counts too

    def _housekeep(self, session: lt.session, now: float, tick: bool) -> None:
        """Between alert batches: flushes for waiting readers; each tick, stats and expiry."""
        self._flush_for_readers()
        if tick:
            session.post_session_stats()
            session.post_torrent_updates()
            self._expire_idle_seeds(now)

    def _dispatch(self, alert: lt.alert) -> None:
        if isinstance(alert, lt.piece_finished_alert):
            torrent = self._torrent_of(alert)
            if torrent is not None and torrent.download is not None:
                torrent.download._on_piece(int(alert.piece_index))
                if torrent.download._all_verified:
                    self._spawn(self._publish(_alert_info_hash(alert)))
        elif isinstance(alert, lt.torrent_finished_alert):
            # "Finished" means every piece libtorrent *wants*: pieces the origin feed
            # is fetching have priority 0, so only a torrent with every piece counts.
            info_hash = _alert_info_hash(alert)
            torrent = self._torrents.get(info_hash)
            if (
                torrent is not None
                and torrent.download is not None
                and (torrent.download._all_verified or torrent.handle.status().is_seeding)
            ):
                self._spawn(self._publish(info_hash))
        elif isinstance(alert, lt.cache_flushed_alert):
            torrent = self._torrent_of(alert)
            if torrent is not None and torrent.download is not None:
                torrent.download._flushed()
        elif isinstance(alert, lt.torrent_removed_alert):
            future = self._removals.get(_alert_info_hash(alert))
            if future is not None and not future.done():
                future.set_result(None)
        elif isinstance(alert, lt.state_update_alert):
            self._note_activity(alert.status)
        elif isinstance(alert, lt.session_stats_alert):
            self._note_stats(alert.values)
        elif isinstance(alert, lt.hash_failed_alert):
            self._hash_failures += 1
            torrent = self._torrent_of(alert)
            if torrent is not None and torrent.download is not None:
                torrent.download._refeed(int(alert.piece_index))
            log.warning("swarm.hash_failed torrent=%s piece=%d",
                        alert.torrent_name, alert.piece_index)
        elif isinstance(alert, (lt.torrent_error_alert, lt.file_error_alert)):
            self._fail_torrent(alert)
        elif isinstance(alert, lt.tracker_reply_alert):
            self._announced(_alert_info_hash(alert))
        elif isinstance(alert, lt.tracker_error_alert):
            log.warning("swarm.tracker_error %s", alert.message())
            self._announced(_alert_info_hash(alert))
        elif isinstance(alert, lt.listen_failed_alert):
            log.error("swarm.listen_failed %s", alert.message())

    def _announced(self, info_hash: str) -> None:
        for future in self._announce_waiters.pop(info_hash, []):
            if not future.done():
                future.set_result(None)

    def _flush_for_readers(self) -> None:
        """Ask libtorrent to write out pieces a streaming reader or a digest task waits for."""
        now = time.monotonic()
        for torrent in self._torrents.values():
            download = torrent.download
            if download is not None and not download.done and download._wants_flush(now):
                download._flush_started(now)
                torrent.handle.flush_cache()

    def _torrent_of(self, alert: lt.torrent_alert) -> _Torrent | None:
        return self._torrents.get(_alert_info_hash(alert))

    def _fail_torrent(self, alert: lt.torrent_alert) -> None:
        log.error("swarm.torrent_error %s", alert.message())
        info_hash = _alert_info_hash(alert)
        torrent = self._torrents.get(info_hash)
        if torrent is None:
            return
        if torrent.download is not None:
            download = torrent.download
            download._fail(DownloadFailed(f"swarm download of {download.digest} failed: "
                                          f"{alert.message()}"))
            self._forget(download)
            self._spawn(self._remove_and_clean(info_hash, download.partial_path.parent))
        else:
            self._spawn(self._remove(info_hash))

    def _note_activity(self, statuses: list[lt.torrent_status]) -> None:
        now = time.monotonic()
        for status in statuses:
            torrent = self._torrents.get(str(status.info_hashes.v1))
            if torrent is None:
                continue
            if status.num_peers > 0:
                torrent.last_active = now
            self._adjust_super_seeding(torrent, status)

    def _note_stats(self, values: dict[str, int]) -> None:
        self._stats = SwarmStats(
            uploaded=int(values.get("net.sent_payload_bytes", 0)),
            downloaded=int(values.get("net.recv_payload_bytes", 0)),
            failed_pieces=self._hash_failures,
            torrents=len(self._torrents),
            origin_feed_bytes=self._origin_feed_bytes,
        )
        waiters, self._stats_waiters = self._stats_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(self._stats)

    def _expire_idle_seeds(self, now: float) -> None:
        for info_hash, torrent in list(self._torrents.items()):
            self._rearm_super_seeding(torrent, now)
            if torrent.download is None and now - torrent.last_active > self.settings.seed_ttl:
                log.info("swarm.seed_expired digest=%s", torrent.digest)
                future = self._begin_removal(info_hash)
                if future is not None:
                    self._spawn(self._await_removal(info_hash, future))

    def _require_session(self) -> lt.session:
        if self._session is None:
            raise RuntimeError("SwarmEngine is not running; use 'async with SwarmEngine(...)'")
        return self._session


def _log_failure(task: asyncio.Task[Any]) -> None:
    """A background task that died of an unexpected error says so in the log."""
    if not task.cancelled() and task.exception() is not None:
        log.error("swarm.task_failed task=%s", task.get_name(), exc_info=task.exception())


class _Pacer:
    """Holds one download's origin feed to ``download_rate_limit``.

    libtorrent's limit covers its peers only; the feed is held to the same rate on
    its own (so peers and feed together may reach twice it). TCP flow control
    passes the pause on to the origin.
    """

    def __init__(self, bytes_per_second: int, now: float | None = None) -> None:
        self._rate = bytes_per_second
        self._start = time.monotonic() if now is None else now
        self._bytes = 0

    async def took(self, count: int) -> None:
        """``count`` more bytes arrived: wait until the rate allows them."""
        ahead = self.ahead_after(count, time.monotonic())
        if ahead > 0:
            await asyncio.sleep(ahead)

    def ahead_after(self, count: int, now: float) -> float:
        """Seconds the feed is ahead of the rate at ``now`` once ``count`` more bytes
        are counted (0 when it is behind, or unlimited)."""
        if self._rate <= 0:
            return 0.0
        self._bytes += count
        return max(0.0, self._bytes / self._rate - (now - self._start))


def _torrent_info(metainfo: bytes, digest: Digest) -> tuple[str, lt.torrent_info]:
    try:
        check_metainfo(metainfo, digest)
        ti = lt.torrent_info(lt.bdecode(metainfo))
    except (MetainfoError, RuntimeError) as exc:
        raise DownloadFailed(f"unusable metainfo for {digest}: {exc}") from None
    return str(ti.info_hashes().v1), ti


def _alert_info_hash(alert: lt.torrent_alert) -> str:
    if isinstance(alert, lt.torrent_removed_alert):
        return str(alert.info_hashes.v1)
    return str(alert.handle.info_hashes().v1)

