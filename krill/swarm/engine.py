"""``SwarmEngine``: one libtorrent session per process, seeding and downloading blobs.

The engine wires the pieces together and owns the lifecycle: the session (made and
checked in ``session``) and its alert pump (``pump``, handlers in ``alerts``), the
torrent table (``torrents``), single flight of downloads (``download``), the origin
feed (``feed``), super-seeding (``superseed``) and the counters (``stats``). It seeds
(``seed``), starts downloads, and publishes a finished download into the store; the
package docstring (``krill.swarm``) states the guarantees.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import aiohttp
import libtorrent as lt

from krill.alertbell import AlertBell
from krill.blobstore import BlobStore, DigestMismatchError
from krill.clock import SYSTEM_CLOCK, Clock, timeout
from krill.digests import Digest
from krill.swarm.alerts import AlertHandlers, EngineCallbacks
from krill.swarm.download import Download, DownloadFailed
from krill.swarm.feed import OriginFeeder
from krill.swarm.pump import AlertPump
from krill.swarm.reachability import PeerReachability, ReachabilityWatch
from krill.swarm.session import check_listening, new_session
from krill.swarm.settings import SwarmSettings, listen_interface
from krill.swarm.stats import Counters, SwarmStats
from krill.swarm.superseed import SuperSeeding
from krill.swarm.torrents import Torrent, TorrentLink, TorrentTable, torrent_info

__all__ = ["SwarmEngine"]

log = logging.getLogger("krill.swarm")  # the engine's log lines keep one logger name

# A download this close to done makes the pump skip its pause: its last piece's
# alert starts publishing, and a pause held it back (12 ms on average). Only while
# pieces keep coming: one stuck near its end must not end batching for all.
_NEARLY_DONE_PIECES = 8
_NEARLY_DONE_PROGRESS_SECONDS = 0.5
_STATS_TIMEOUT = 10.0  # how long fetch_stats waits for libtorrent's answer


class SwarmEngine:
    """One libtorrent session, its alert pump, and the torrents it seeds or downloads."""

    def __init__(
        self,
        settings: SwarmSettings,
        store: BlobStore,
        http: aiohttp.ClientSession | None = None,
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        """``http``: the session for the origin piece feed (``settings.origin_urls``),
        e.g. the agent's own; without one the engine opens (and closes) its own.
        ``clock``: the time every pause, expiry and timeout of the engine is measured on."""
        self.settings = settings
        self.store = store
        self._clock = clock
        self._given_http = http
        self._session: lt.session | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._downloads: dict[Digest, Download] = {}
        self._announce_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._counters = Counters()
        self._super_seeding = SuperSeeding(settings)
        self._torrents = TorrentTable(clock, removal_begun=self._hurry_pump)
        self._reachability = ReachabilityWatch(settings.unreachable_after)
        alerts = AlertHandlers(
            self._torrents, self._counters, self._super_seeding, clock,
            EngineCallbacks(self._start_publishing, self._fail_torrent, self._announced),
            self._reachability,
        )
        self._pump = AlertPump(
            clock, alerts.table, self._housekeep, self._pump_urgent, self._readers_waiting
        )
        self._background: set[asyncio.Task[None]] = set()
        self._bell: AlertBell | None = None
        self._feeder: OriginFeeder | None = None  # origin piece feed, if configured
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> SwarmEngine:
        session = await asyncio.to_thread(new_session, self.settings)
        check_listening(session, self.settings)  # or stop here (krill.swarm.session)
        self._session = self._torrents.session = session
        self._bell = AlertBell(self._session)
        try:
            self._stopping = False
            self._pump_task = asyncio.create_task(
                self._pump.run(self._session, self._bell), name="swarm-alert-pump"
            )
            if self.settings.origin_urls:
                self._http = self._given_http or aiohttp.ClientSession()
                self._feeder = OriginFeeder(
                    self.settings, self._http, self._clock, self._torrents, self._counters,
                    lambda: self._stopping,
                )
        except BaseException:
            if self._pump_task is not None:
                self._pump_task.cancel()
            self._close_bell()
            raise
        settings = self.settings
        log.info(
            "swarm.started listen=%s:%d tracker=%s origin=%s",
            settings.listen_host, self.peer_port, settings.tracker_url, settings.origin,
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
            self._torrents.drop_all()
            # Destroying the session joins libtorrent's threads: drop the last
            # reference in a worker thread, not on the event loop.
            holder = [self._session]
            self._session = self._torrents.session = None
            await asyncio.to_thread(holder.clear)
        if self._http is not None and self._http is not self._given_http:
            await self._http.close()
        self._http = self._feeder = None
        for torrent_dir in {d.partial_path.parent for d in self._downloads.values()}:
            shutil.rmtree(torrent_dir, ignore_errors=True)
        self._downloads.clear()
        stats = self._counters.latest
        log.info(
            "swarm.stopped uploaded=%d downloaded=%d origin_feed_bytes=%d",
            stats.uploaded, stats.downloaded, self._counters.origin_feed_bytes,
        )

    async def _stop_downloads_and_pump(self) -> None:
        for download in list(self._downloads.values()):
            download.fail(DownloadFailed(f"swarm engine stopped before {download.digest}"))
        background = list(self._background)
        for task in background:
            task.cancel()
        self._stopping = True
        self._pump.stop()  # the pump sees it now, not after its pause or its wait
        # Let them unwind (origin feeds restore piece priorities, removals stop) while
        # the session still exists; what they leave in incoming/ goes at the next start.
        await asyncio.gather(*background, return_exceptions=True)
        if self._pump_task is not None:
            await self._pump_task  # exits at once (stopped above); never cancelled mid-batch

    def _close_bell(self) -> None:
        if self._bell is not None:
            self._bell.close()
            self._bell = None

    @property
    def peer_port(self) -> int:
        return int(self._require_session().listen_port())

    def reachability(self) -> PeerReachability:
        """Whether peers have reached this node's peer port (as of the last pump tick):
        ``REACHED`` once any connected in, ``SUSPECT`` after a download was warned about
        (``krill.swarm.reachability``). For health and readiness pages."""
        watch = self._reachability
        return PeerReachability(
            watch.state,
            watch.incoming_connections,
            watch.suspect_downloads,
            listen_interface(self.settings.listen_host, self.peer_port),
        )

    def stats(self) -> SwarmStats:
        """The session counters as of the last pump tick (at most ~1 s old)."""
        return self._counters.latest

    async def fetch_stats(self) -> SwarmStats:
        """Ask libtorrent for fresh session counters."""
        future = self._counters.next_stats()
        self._require_session().post_session_stats()
        self._pump.hurry()  # the answer is an alert: not after the pump's pause
        async with timeout(self._clock, _STATS_TIMEOUT):
            return await future

    # ---- seeding ----

    async def seed(self, digest: Digest, metainfo: bytes) -> None:
        """Seed a committed blob from its store file in place (no copy, no re-hash)."""
        info_hash, ti = torrent_info(metainfo, digest)
        await self._torrents.wait_removed(info_hash)  # an expired seed may be on its way out
        existing = self._torrents.get(info_hash)
        if existing is not None:
            existing.touch(self._clock.monotonic())
            return
        path = self.store.path(digest)
        if not path.is_file():
            raise FileNotFoundError(f"cannot seed {digest}: it is not in the store at {path}")
        params = self._torrent_params(ti, path.parent)
        # seed_mode: trust the store's verification instead of re-reading the file.
        params.flags |= lt.torrent_flags.seed_mode
        super_seed = self._super_seeding.when_seeding_starts()
        if super_seed:
            params.flags |= lt.torrent_flags.super_seeding
        params.max_uploads = self._super_seeding.upload_slots(super_seed)
        handle = self._require_session().add_torrent(params)
        self._torrents.add(info_hash, Torrent(
            handle, digest, metainfo, None, self._clock.monotonic(), super_seeding=super_seed
        ))
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
        wait = self.settings.first_announce_timeout
        if wait <= 0 or not self.settings.origin or self.settings.super_seeding:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._announce_waiters.setdefault(info_hash, []).append(future)
        try:
            async with timeout(self._clock, wait):
                await future
        except TimeoutError:
            log.warning("swarm.first_announce_slow info_hash=%s waited=%.1fs", info_hash, wait)
        finally:
            waiters = self._announce_waiters.get(info_hash, [])
            if future in waiters:
                waiters.remove(future)
            if not waiters:
                self._announce_waiters.pop(info_hash, None)

    def _announced(self, info_hash: str) -> None:
        for future in self._announce_waiters.pop(info_hash, []):
            if not future.done():
                future.set_result(None)

    def super_seeding(self, digest: Digest) -> bool | None:
        """Whether the torrent seeding ``digest`` is in super-seed mode (None: not seeded)."""
        torrent = self._torrents.seeded(digest)
        return None if torrent is None else torrent.super_seeding

    def super_seed_toggles(self, digest: Digest) -> int:
        """How often dynamic super-seeding switched the torrent seeding ``digest``."""
        torrent = self._torrents.seeded(digest)
        return 0 if torrent is None else torrent.super_seed_toggles

    # ---- downloading ----

    async def download(self, digest: Digest, metainfo: bytes) -> Download:
        """Start (or join) fetching ``digest`` through the swarm; returns at once."""
        info_hash, ti = torrent_info(metainfo, digest)
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
                await self._torrents.remove(info_hash)
                continue
            if self._torrents.removal_of(info_hash) is None:
                break
            await self._torrents.wait_removed(info_hash)  # libtorrent must drop it first
        else:
            raise DownloadFailed(f"the swarm is still removing an old download of {digest}")
        return self._start_download(info_hash, ti, digest, metainfo)

    def _start_download(
        self, info_hash: str, ti: lt.torrent_info, digest: Digest, metainfo: bytes
    ) -> Download:
        torrent_dir = self.store.incoming_path()
        torrent_dir.mkdir()
        download = Download(
            digest, int(ti.total_size()), int(ti.piece_length()), torrent_dir / digest.hex,
            clock=self._clock,
            stream_window=self.settings.stream_window_pieces,
            control=TorrentLink(self._torrents, info_hash, self._cancelled),
        )
        handle = self._require_session().add_torrent(self._torrent_params(ti, torrent_dir))
        # Create the (sparse) file now, without truncating, so a reader can open it
        # before libtorrent writes the first piece; libtorrent opens the same inode.
        download.partial_path.touch(exist_ok=True)
        self._torrents.add(
            info_hash, Torrent(handle, digest, metainfo, download, self._clock.monotonic())
        )
        self._downloads[digest] = download
        log.info(
            "swarm.download_started digest=%s info_hash=%s size=%d piece_length=%d",
            digest, info_hash, download.size, download.piece_length,
        )
        if download.size == 0:
            self._spawn(self._publish(info_hash))
        elif self._feeder is not None:
            self._spawn(self._feeder.run(info_hash, download))
        download.start_digest(self._spawn, write_back=self.settings.durable_downloads)
        return download

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

    def _forget(self, download: Download) -> None:
        """Drop ``download`` from the single-flight table, but never a newer one."""
        if self._downloads.get(download.digest) is download:
            del self._downloads[download.digest]

    def _cancelled(self, download: Download, info_hash: str) -> None:
        """``Download.cancel`` (through its ``TorrentLink``): remove its torrent and data."""
        torrent = self._torrents.get(info_hash)
        self._forget(download)
        if torrent is not None and torrent.download is download:
            self._spawn(self._remove_and_clean(info_hash, download.partial_path.parent))

    def _fail_torrent(self, info_hash: str, message: str) -> None:
        """libtorrent gave up on a torrent (``torrent_error``, ``file_error``)."""
        torrent = self._torrents.get(info_hash)
        if torrent is None:
            return
        download = torrent.download
        if download is None:
            self._spawn(self._torrents.remove(info_hash))
            return
        download.fail(DownloadFailed(f"swarm download of {download.digest} failed: {message}"))
        self._forget(download)
        self._spawn(self._remove_and_clean(info_hash, download.partial_path.parent))

    async def _remove_and_clean(self, info_hash: str, torrent_dir: Path) -> None:
        await self._torrents.remove(info_hash)
        await asyncio.to_thread(shutil.rmtree, torrent_dir, True)

    # ---- publishing ----

    def _start_publishing(self, info_hash: str) -> None:
        self._spawn(self._publish(info_hash))

    async def _publish(self, info_hash: str) -> None:
        """libtorrent has every piece: verify the whole file, publish it, seed it from the store."""
        torrent = self._torrents.get(info_hash)
        if torrent is None or torrent.download is None or self._stopping:
            return
        download = torrent.download
        if not download.begin_publishing():  # past cancelling: every piece is here
            return
        # Closes libtorrent's files before the move: every piece is then in the file,
        # and streaming readers may have the tail while it is hashed (they lagged by up
        # to 40 of 64 MiB in the 16-node real-agent herd, docs/benchmarks.md).
        if await self._torrents.remove_confirmed(info_hash):
            download.written_out()
        hashed = await download.hashed_prefix()  # the digest task ends its stretch first
        try:
            await asyncio.to_thread(
                self.store.adopt_file,
                download.partial_path,
                download.digest,
                hashed=hashed,
                durable=self.settings.durable_downloads,
            )
        except (DigestMismatchError, OSError) as exc:
            log.error("swarm.verify_failed digest=%s error=%s", download.digest, exc)
            download.fail(DownloadFailed(f"downloaded {download.digest} failed to verify: {exc}"))
            return
        finally:
            # Before the download is done: an engine stopped right after would
            # cancel this and leave the directory behind.
            self._forget(download)
            await asyncio.to_thread(shutil.rmtree, download.partial_path.parent, True)
        download.finish(self.store.path(download.digest))
        log.info(
            "swarm.download_done digest=%s size=%d hashed_early=%d",
            download.digest, download.size, download.hashed_early,
        )
        if not self._stopping:
            await self.seed(download.digest, torrent.metainfo)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_log_failure)
        return task

    # ---- what the pump asks between batches ----

    def _hurry_pump(self) -> None:
        self._pump.hurry()

    def _pump_urgent(self) -> bool:
        """Don't pause: a removal's or a stats alert is awaited (a hurry covers one pause;
        a test's still clock never ended a second), a reader waits for a download's first
        bytes (its first piece's alert, then the flush's), or its last pieces arrive."""
        if self._torrents.removing or self._counters.awaited:
            return True
        recent = self._clock.monotonic() - _NEARLY_DONE_PROGRESS_SECONDS
        return any(
            not d.done
            and (
                (d.has_readers and d.available == 0)
                or (d.pieces_left <= _NEARLY_DONE_PIECES and d.last_progress >= recent)
            )
            for d in self._downloads.values()
        )

    def _readers_waiting(self) -> bool:
        return any(d.has_readers for d in self._downloads.values())

    def _housekeep(self, now: float, tick: bool) -> None:
        """Between alert batches: flushes for waiting readers; each tick, stats and expiry."""
        self._flush_for_readers(now)
        if tick:
            session = self._require_session()
            session.post_session_stats()
            session.post_torrent_updates()
            self._expire_idle_seeds(now)

    def _flush_for_readers(self, now: float) -> None:
        """Flushes a streaming reader or a digest task waits for; deadlines if one starves."""
        for torrent in self._torrents:
            download = torrent.download
            if download is not None and not download.done:
                download.steer_if_starved(now)
                if download.wants_flush(now):
                    download.flush_started(now)
                    torrent.handle.flush_cache()

    def _expire_idle_seeds(self, now: float) -> None:
        for info_hash, torrent in self._torrents.items():
            self._super_seeding.rearm(torrent, now)
            if torrent.download is None and now - torrent.last_active > self.settings.seed_ttl:
                log.info("swarm.seed_expired digest=%s", torrent.digest)
                future = self._torrents.begin_removal(info_hash)
                if future is not None:
                    self._spawn(self._torrents.await_removal(info_hash, future))

    def _require_session(self) -> lt.session:
        if self._session is None:
            raise RuntimeError("SwarmEngine is not running; use 'async with SwarmEngine(...)'")
        return self._session


def _log_failure(task: asyncio.Task[None]) -> None:
    """A background task that died of an unexpected error says so in the log."""
    if not task.cancelled() and task.exception() is not None:
        log.error("swarm.task_failed task=%s", task.get_name(), exc_info=task.exception())
