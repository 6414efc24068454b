"""When a seeded torrent super-seeds (BEP 16), and how many peers it uploads to.

Static super-seeding (``SwarmSettings.super_seeding``, the origin service's
default) is set when seeding starts and never changes. Dynamic
super-seeding (``super_seed_min_peers`` > 0, opt-in) is switched by the
alert pump: libtorrent tells a peer which pieces a super-seed "has" only
when the peer connects; a peer that connected in normal mode knows every
piece, and a super-seed refuses its requests for pieces it did not offer
that peer. So the mode is switched on only while nobody is connected
(``seed`` and ``rearm``: armed for the next herd) and off as soon as fewer
than ``super_seed_min_peers`` downloaders are connected (a lone node then
gets the full bitfield and every piece at full speed). Off by default: with
libtorrent 2.1.1 it made the herd benchmark 2x slower (docs/swarm.md,
tuning record).
"""

from __future__ import annotations

import logging

import libtorrent as lt

from krill.swarm.settings import SwarmSettings
from krill.swarm.torrents import Torrent

__all__ = ["SuperSeeding"]

log = logging.getLogger("krill.swarm")  # the engine's log lines keep one logger name

# Dynamic super-seeding is armed again after a torrent has had no peers this long.
_SUPER_SEED_REARM_SECONDS = 10.0


class SuperSeeding:
    """The super-seeding policy of one engine's seeded torrents."""

    def __init__(self, settings: SwarmSettings) -> None:
        self._settings = settings

    @property
    def _dynamic(self) -> bool:
        return self._settings.super_seed_min_peers > 0 and not self._settings.super_seeding

    def when_seeding_starts(self) -> bool:
        """Whether a torrent starts in super-seed mode (static, or dynamic and armed)."""
        return self._settings.super_seeding or self._settings.super_seed_min_peers > 0

    def upload_slots(self, super_seeding: bool = False) -> int:
        """Peers a seeded torrent uploads to at once in that mode (-1: no own limit)."""
        chosen = (
            self._settings.super_seed_upload_slots
            if super_seeding
            else self._settings.seed_upload_slots
        )
        if chosen is None:
            return 2 if self._settings.origin else -1
        return chosen

    def adjust(self, torrent: Torrent, status: lt.torrent_status) -> None:
        """A state update: off for a lone node or the last few of a herd."""
        if not self._dynamic or torrent.download is not None:
            return
        downloading = int(status.num_peers) - int(status.num_seeds)
        if 0 < downloading < self._settings.super_seed_min_peers and torrent.super_seeding:
            self._switch(torrent, False, downloading)

    def rearm(self, torrent: Torrent, now: float) -> None:
        """Arm super-seeding again once a torrent has had no peers for a while (the
        pause in ``Torrent.set_super_seeding`` drops peers for a moment; they come back)."""
        if (
            self._dynamic
            and torrent.download is None
            and not torrent.super_seeding
            and now - torrent.last_active >= _SUPER_SEED_REARM_SECONDS
        ):
            self._switch(torrent, True, 0)

    def _switch(self, torrent: Torrent, wanted: bool, downloading: int) -> None:
        torrent.set_super_seeding(wanted, self.upload_slots(wanted))
        log.info("swarm.super_seeding digest=%s on=%s downloading_peers=%d",
                 torrent.digest, wanted, downloading)
