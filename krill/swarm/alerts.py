"""What each libtorrent alert changes: one handler per alert type, in one table.

The pump pops alerts in batches and looks each one's exact type up in
``AlertHandlers.table`` (as Kraken's scheduler applies each event type in
one place); a type not in the table is ignored. The alert mask
(``session_settings``) asks for exactly the categories these come from.
Handlers only decode an alert and apply it to the state's owner: the
``Download`` (pieces verified, cache flushed), the ``TorrentTable``
(removal confirmed), the ``Counters`` (stats, hash failures), the
``SuperSeeding`` policy (peer counts); work that outlives the alert
(publishing, removing a failed torrent) goes back to the engine through the
callbacks it passed in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar, cast

import libtorrent as lt

from krill.clock import Clock
from krill.swarm.reachability import ReachabilityWatch
from krill.swarm.stats import Counters
from krill.swarm.superseed import SuperSeeding
from krill.swarm.torrents import Torrent, TorrentTable

__all__ = ["AlertHandlers", "EngineCallbacks"]

log = logging.getLogger("krill.swarm")  # the engine's log lines keep one logger name

Handler = Callable[[lt.alert], None]
A = TypeVar("A", bound=lt.alert)


def _entry(kind: type[A], handler: Callable[[A], None]) -> tuple[type[lt.alert], Handler]:
    """A table row; the handler is checked against its own alert type here, and
    ``dispatch`` looks handlers up by the exact type, so the cast holds."""
    return kind, cast(Handler, handler)


# libtorrent's errors::announce_skipped: "skipping tracker announce (unreachable)".
_ANNOUNCE_SKIPPED = 180


def _announce_skipped(error: lt.error_code) -> bool:
    return bool(error.category().name() == "libtorrent" and error.value() == _ANNOUNCE_SKIPPED)


class EngineCallbacks:
    """The engine's work that an alert starts and that outlives it, by infohash."""

    def __init__(
        self,
        publish: Callable[[str], None],
        torrent_failed: Callable[[str, str], None],
        announced: Callable[[str], None],
    ) -> None:
        self.publish = publish  # every piece is here: verify, publish, seed
        self.torrent_failed = torrent_failed  # libtorrent gave up on it (with its message)
        self.announced = announced  # the tracker answered (or failed to) our announce


class AlertHandlers:
    """``table``: each alert type the engine reacts to, and the one handler applying it."""

    def __init__(
        self,
        torrents: TorrentTable,
        counters: Counters,
        super_seeding: SuperSeeding,
        clock: Clock,
        engine: EngineCallbacks,
        reachability: ReachabilityWatch,
    ) -> None:
        self._torrents = torrents
        self._reachability = reachability
        self._counters = counters
        self._super_seeding = super_seeding
        self._clock = clock
        self._engine = engine
        self.table: dict[type[lt.alert], Handler] = dict(
            [
                _entry(lt.piece_finished_alert, self._piece_finished),
                _entry(lt.torrent_finished_alert, self._torrent_finished),
                _entry(lt.cache_flushed_alert, self._cache_flushed),
                _entry(lt.torrent_removed_alert, self._torrent_removed),
                _entry(lt.state_update_alert, self._state_update),
                _entry(lt.session_stats_alert, self._session_stats),
                _entry(lt.hash_failed_alert, self._hash_failed),
                _entry(lt.torrent_error_alert, self._torrent_error),
                _entry(lt.file_error_alert, self._torrent_error),
                _entry(lt.tracker_reply_alert, self._tracker_reply),
                _entry(lt.tracker_error_alert, self._tracker_error),
                _entry(lt.listen_failed_alert, self._listen_failed),
            ]
        )

    def _torrent_of(self, alert: lt.torrent_alert) -> Torrent | None:
        """The alert's torrent, found by its name (see ``TorrentTable.info_hash_named``)."""
        info_hash = self._torrents.info_hash_named(alert.torrent_name)
        return None if info_hash is None else self._torrents.get(info_hash)

    def _piece_finished(self, alert: lt.piece_finished_alert) -> None:
        # One per piece of every download: the cheapest lookup (the name, not the handle).
        info_hash = self._torrents.info_hash_named(alert.torrent_name)
        if info_hash is None:
            return
        torrent = self._torrents.get(info_hash)
        if torrent is not None and torrent.download is not None:
            torrent.download.piece_verified(int(alert.piece_index))
            if torrent.download.all_verified:
                self._engine.publish(info_hash)

    def _torrent_finished(self, alert: lt.torrent_finished_alert) -> None:
        # "Finished" means every piece libtorrent *wants*: pieces the origin feed
        # is fetching have priority 0, so only a torrent with every piece counts.
        info_hash = str(alert.handle.info_hashes().v1)
        torrent = self._torrents.get(info_hash)
        if (
            torrent is not None
            and torrent.download is not None
            and (torrent.download.all_verified or torrent.handle.status().is_seeding)
        ):
            self._engine.publish(info_hash)

    def _cache_flushed(self, alert: lt.cache_flushed_alert) -> None:
        torrent = self._torrent_of(alert)
        if torrent is not None and torrent.download is not None:
            torrent.download.flushed()

    def _torrent_removed(self, alert: lt.torrent_removed_alert) -> None:
        # The handle of a removed torrent is no longer valid: its infohash is in the alert.
        info_hash = str(alert.info_hashes.v1)
        self._torrents.removed(info_hash)
        self._reachability.forget(info_hash)

    def _state_update(self, alert: lt.state_update_alert) -> None:
        now = self._clock.monotonic()
        for status in alert.status:
            info_hash = str(status.info_hashes.v1)
            torrent = self._torrents.get(info_hash)
            if torrent is None:
                continue
            if status.num_peers > 0:
                torrent.touch(now)
            self._super_seeding.adjust(torrent, status)
            if self._reachability.download_updated(info_hash, torrent, status, now):
                self._counters.unreachable_download()

    def _session_stats(self, alert: lt.session_stats_alert) -> None:
        self._counters.session_stats(alert.values, len(self._torrents))
        self._reachability.session_counted(self._counters.latest.incoming_connections)

    def _hash_failed(self, alert: lt.hash_failed_alert) -> None:
        self._counters.hash_failed()
        torrent = self._torrent_of(alert)
        if torrent is not None and torrent.download is not None:
            torrent.download.refeed(int(alert.piece_index))
        log.warning("swarm.hash_failed torrent=%s piece=%d",
                    alert.torrent_name, alert.piece_index)

    def _torrent_error(self, alert: lt.torrent_error_alert | lt.file_error_alert) -> None:
        log.error("swarm.torrent_error %s", alert.message())
        self._engine.torrent_failed(str(alert.handle.info_hashes().v1), alert.message())

    def _tracker_reply(self, alert: lt.tracker_reply_alert) -> None:
        self._counters.announce_answered()
        self._engine.announced(str(alert.handle.info_hashes().v1))

    def _tracker_error(self, alert: lt.tracker_error_alert) -> None:
        if _announce_skipped(alert.error):
            # Listening on 0.0.0.0, libtorrent has a socket per interface and announces
            # from each that can reach the tracker; the loopback one skips a tracker on
            # another host. Not an error, and the other sockets' answers still come.
            log.debug("swarm.announce_skipped %s", alert.message())
            return
        log.warning("swarm.tracker_error %s", alert.message())
        self._counters.announce_failed(str(alert.failure_reason()))
        self._engine.announced(str(alert.handle.info_hashes().v1))

    def _listen_failed(self, alert: lt.listen_failed_alert) -> None:
        log.error("swarm.listen_failed %s", alert.message())
