"""Pieces straight from the origin: claim chunks over HTTP, hand them to libtorrent.

With ``SwarmSettings.origin_urls`` every download also claims chunks of
pieces from the origin (``krill.piecefeed``, ``origin.piececlaims``) and
hands them to libtorrent (``add_piece``), which checks their hashes and
offers them to the other nodes: a herd's nodes each take different pieces
from the origin and trade the rest, so the origin sends each piece about
once (1.01-1.08x the blob in the herd benchmark, against 1.35-1.7x when
libtorrent's nodes fetched popular pieces from its seed; docs/swarm.md).
A download that stalls fills from the origin what no peer has.

With several origin replicas (``SwarmSettings.origin_ranking``) each blob's
claims go to its owner, the replica its ranking puts first, as the agent's
HTTP fallback does: a herd's claims for one blob meet in one claim book, and
the replicas share the egress blob by blob. A claim or piece request that
fails reports the replica failed (to the ranking both paths share; a 4xx
reports it up) and goes on with the next one (``ReplicaPieceFeed``); a run
of pieces resumes where it broke. The next replica starts its own round of claims, so the node walks
past the chunks it already has.

``Pacer`` holds the feed to ``download_rate_limit``, on the engine's clock.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import cast

import aiohttp
import libtorrent as lt

from krill.clock import Clock
from krill.digests import Digest
from krill.piecefeed import OriginPieceFeed, PieceFeedError, consecutive_runs
from krill.replicas import ReplicaRanking
from krill.swarm.download import Download
from krill.swarm.settings import ORIGIN_PEER_ID_PREFIX, SwarmSettings
from krill.swarm.stats import Counters
from krill.swarm.torrents import TorrentTable

__all__ = ["OriginFeeder", "Pacer", "ReplicaPieceFeed"]

log = logging.getLogger("krill.swarm")  # the engine's log lines keep one logger name

# libtorrent's default piece priority, restored on pieces the origin feed had set to 0.
_DEFAULT_PRIORITY = 4
# Most pieces one stall fill asks the origin for (then it watches progress again).
_FILL_BATCH_PIECES = 64
# libtorrent ignores ``add_piece`` while it checks a new torrent's files: how often and
# how many times the feed looks whether it is done (10 s; an empty file takes ms).
_CHECKED_POLL_SECONDS = 0.005
_CHECKED_POLLS = 2000
_CHECKING = (
    lt.torrent_status.states.checking_files,
    lt.torrent_status.states.checking_resume_data,
    lt.torrent_status.states.queued_for_checking,
    lt.torrent_status.states.allocating,
)


class Pacer:
    """Holds one download's origin feed to ``download_rate_limit``.

    libtorrent's limit covers its peers only; the feed is held to the same rate on
    its own (so peers and feed together may reach twice it). TCP flow control
    passes the pause on to the origin.
    """

    def __init__(self, bytes_per_second: int, clock: Clock) -> None:
        self._rate = bytes_per_second
        self._clock = clock
        self._start = clock.monotonic()
        self._bytes = 0

    async def took(self, count: int) -> None:
        """``count`` more bytes arrived: wait until the rate allows them."""
        ahead = self.ahead_after(count)
        if ahead > 0:
            await self._clock.sleep(ahead)

    def ahead_after(self, count: int) -> float:
        """Seconds the feed is ahead of the rate now, once ``count`` more bytes are
        counted (0 when it is behind, or unlimited)."""
        if self._rate <= 0:
            return 0.0
        self._bytes += count
        return max(0.0, self._bytes / self._rate - (self._clock.monotonic() - self._start))


class ReplicaPieceFeed:
    """One blob's claims and pieces from the first replica in its ranking that answers.

    Without a ranking (one origin) every request goes to ``origins[0]``, as
    ``OriginPieceFeed`` alone would. With one, each request asks the blob's
    ranking again, so a replica the agent's HTTP path found failing is
    skipped here too; an empty ranking (a Service not resolved yet) falls
    back to ``origins[0]``, its name.
    """

    def __init__(
        self,
        http: aiohttp.ClientSession,
        origins: tuple[str, ...],
        ranking: ReplicaRanking | None,
        digest: Digest,
        size: int,
        piece_length: int,
    ) -> None:
        self._http = http
        self._origins = origins
        self._ranking = ranking
        self.digest = digest
        self.size = size
        self.piece_length = piece_length
        self._feeds: dict[str, OriginPieceFeed] = {}

    async def _candidates(self) -> list[str]:
        if self._ranking is None:
            return [self._origins[0]]
        await self._ranking.refresh()
        return self._ranking.ranking(self.digest) or [self._origins[0]]

    def _feed(self, base: str) -> OriginPieceFeed:
        feed = self._feeds.get(base)
        if feed is None:
            feed = self._feeds[base] = OriginPieceFeed(
                self._http, base, self.digest, self.size, self.piece_length
            )
        return feed

    def _failed(self, base: str, exc: PieceFeedError) -> None:
        """A replica that could not be reached or answered a 5xx is failed for every
        path; one that answered otherwise (a 404: its cache lost the blob) is up."""
        if self._ranking is None:
            return
        log.warning(
            "swarm.origin_replica_failed digest=%s origin=%s error=%s", self.digest, base, exc
        )
        if exc.status is not None and exc.status < 500:
            self._ranking.answered(base)
        else:
            self._ranking.failed(base)

    def _answered(self, base: str) -> None:
        if self._ranking is not None:
            self._ranking.answered(base)

    async def claim(self) -> range | None:
        """The next pieces a replica gives this node, or None once all are handed out."""
        errors: list[PieceFeedError] = []
        for base in await self._candidates():
            try:
                claimed = await self._feed(base).claim()
            except PieceFeedError as exc:
                self._failed(base, exc)
                errors.append(exc)
                continue
            self._answered(base)
            return claimed
        raise _all_failed(errors)

    async def pieces(self, run: range) -> AsyncIterator[tuple[int, bytes]]:
        """Pieces of ``run`` in order; a run broken midway goes on from the next replica."""
        errors: list[PieceFeedError] = []
        start = run.start
        for base in await self._candidates():
            if start >= run.stop:  # the last piece came before the replica failed
                return
            try:
                # An async generator (typed as an iterator): closed here when the
                # caller stops early, not left to the garbage collector.
                stream = cast(
                    AsyncGenerator[tuple[int, bytes], None],
                    self._feed(base).pieces(range(start, run.stop)),
                )
                async with contextlib.aclosing(stream):
                    async for index, data in stream:
                        start = index + 1
                        yield index, data
            except PieceFeedError as exc:
                self._failed(base, exc)
                errors.append(exc)
                continue
            self._answered(base)
            return
        raise _all_failed(errors)


def _all_failed(errors: list[PieceFeedError]) -> PieceFeedError:
    if len(errors) == 1:
        return errors[0]
    return PieceFeedError("every origin replica failed: " + "; ".join(map(str, errors)))


class OriginFeeder:
    """Runs the origin feed of each download an engine starts (one ``run`` each)."""

    def __init__(
        self,
        settings: SwarmSettings,
        http: aiohttp.ClientSession,
        clock: Clock,
        torrents: TorrentTable,
        counters: Counters,
        stopping: Callable[[], bool],
    ) -> None:
        self._settings = settings
        self._http = http
        self._clock = clock
        self._torrents = torrents
        self._counters = counters
        self._stopping = stopping

    async def run(self, info_hash: str, download: Download) -> None:
        """Claim chunks from the origin and hand their pieces to libtorrent; then fill stalls."""
        feed = ReplicaPieceFeed(
            self._http, self._settings.origin_urls, self._settings.origin_ranking,
            download.digest, download.size, download.piece_length,
        )
        pacer = Pacer(self._settings.download_rate_limit, self._clock)
        if not await self._wait_until_checked(info_hash, download):
            return
        try:
            await self._claim_until_done(info_hash, download, feed, pacer)
        except PieceFeedError as exc:
            log.warning("swarm.origin_claims_failed digest=%s error=%s", download.digest, exc)
        await self._fill_stalls(info_hash, download, feed, pacer)

    async def _claim_until_done(
        self, info_hash: str, download: Download, feed: ReplicaPieceFeed, pacer: Pacer
    ) -> None:
        # A new round began while this node was still pulling: the origin hands out
        # chunks from the start again, and the node walks past the ones it has. At
        # most one such claim per piece, so a misbehaving origin cannot loop it.
        walked = 0
        while not self._over(info_hash, download):
            claimed = await feed.claim()
            if claimed is None:
                return
            if download.has_all(claimed):
                walked += 1
                if walked > download.num_pieces:
                    return
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
                return
            await self._fetch_pieces(info_hash, download, feed, wanted, pacer)

    def _over(self, info_hash: str, download: Download) -> bool:
        torrent = self._torrents.get(info_hash)
        return (
            download.done
            or download.publishing
            or self._stopping()
            or torrent is None
            or torrent.download is not download  # a newer download of the same blob
        )

    async def _wait_until_checked(self, info_hash: str, download: Download) -> bool:
        """libtorrent ignores ``add_piece`` while it checks a new torrent's files."""
        for _ in range(_CHECKED_POLLS):
            torrent = self._torrents.get(info_hash)
            if torrent is None or self._over(info_hash, download):
                return False
            if torrent.handle.status(0).state not in _CHECKING:
                return True
            await self._clock.sleep(_CHECKED_POLL_SECONDS)
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
            for index in download.needed(pieces)
            if index >= len(availability) or availability[index] <= 0
        ]

    async def _fetch_pieces(
        self,
        info_hash: str,
        download: Download,
        feed: ReplicaPieceFeed,
        wanted: list[int],
        pacer: Pacer,
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
        zeroed = len(wanted) < download.pieces_left
        if zeroed:
            handle.prioritize_pieces([(index, 0) for index in wanted])
        pending = set(wanted)
        try:
            for run in consecutive_runs(wanted):
                async for index, data in feed.pieces(run):
                    if self._over(info_hash, download):
                        return
                    handle.add_piece(index, data, 0)
                    download.fed(index)
                    self._counters.fed(len(data))
                    if zeroed:
                        handle.piece_priority(index, _DEFAULT_PRIORITY)
                    pending.discard(index)
                    await pacer.took(len(data))
        finally:
            if zeroed and pending and self._torrents.get(info_hash) is torrent:
                handle.prioritize_pieces([(index, _DEFAULT_PRIORITY) for index in pending])
                # Priority 0 also dropped any streaming deadlines on them: set again.
                download.deadlines_dropped(min(pending))

    async def _fill_stalls(
        self, info_hash: str, download: Download, feed: ReplicaPieceFeed, pacer: Pacer
    ) -> None:
        """While the download runs: after ``fill_after`` s without progress, fetch from
        the origin the missing pieces that no connected peer has, until none are left.

        Each node starts at a random one of them, so a stalled herd (a claimer died)
        does not fetch the same pieces from the origin all at once.
        """
        fill_after = self._settings.fill_after
        seen, since, filling = download.verified_pieces, self._clock.monotonic(), False
        while True:
            if not filling:
                await self._clock.sleep(min(0.5, fill_after))
            if self._over(info_hash, download):
                return
            now = self._clock.monotonic()
            if not filling and download.verified_pieces != seen:
                seen, since = download.verified_pieces, now
                continue
            if not filling and now - since < fill_after:
                continue
            unsourced = self._unsourced(info_hash, download, range(download.num_pieces))
            was_filling, filling = filling, bool(unsourced)
            if not filling:
                if not was_filling:
                    # Stalled, yet every missing piece is with a peer or was fed: a fed
                    # piece libtorrent dropped unchecked may be fetched again next time.
                    # Not right after a fill batch: its pieces were handed over a moment
                    # ago and are still being checked (forgetting them then fetched
                    # them twice whenever the check took over fill_after).
                    download.forget_unverified_feed()
                seen, since = download.verified_pieces, now
                continue
            start = random.randrange(len(unsourced))
            batch = (unsourced[start:] + unsourced[:start])[:_FILL_BATCH_PIECES]
            log.info("swarm.origin_fill digest=%s pieces=%d", download.digest, len(batch))
            try:
                await self._fetch_pieces(info_hash, download, feed, batch, pacer)
            except PieceFeedError as exc:
                log.warning("swarm.origin_fill_failed digest=%s error=%s", download.digest, exc)
                filling = False  # wait for another stall before asking the origin again
                seen, since = download.verified_pieces, self._clock.monotonic()
