"""The torrents an engine's libtorrent session runs, and the ones it is removing.

libtorrent refuses to add a torrent it is still removing, and confirms a
removal only with an alert. ``TorrentTable`` takes a torrent out of the
table at once when its removal begins (synchronously, so nobody can find,
and rely on, a torrent that is about to go) and keeps a future per removal
that the ``torrent_removed_alert`` resolves; whoever re-adds the torrent
waits for it first. Each ``Torrent`` is the engine's record of one: its
handle, the blob, the ``Download`` it feeds (None when seeding a stored
blob) and its super-seeding state, changed only through its own methods.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator

import libtorrent as lt

from krill.clock import Clock, timeout
from krill.digests import Digest
from krill.metainfo import MetainfoError, check_metainfo
from krill.swarm.download import Download, DownloadFailed

__all__ = ["Torrent", "TorrentLink", "TorrentTable", "torrent_info"]

log = logging.getLogger("krill.swarm")  # the engine's log lines keep one logger name

# How long libtorrent gets to confirm a removal before the engine stops waiting.
_REMOVAL_TIMEOUT = 10.0


class Torrent:
    """One torrent in the session: what it serves, and its super-seeding state."""

    def __init__(
        self,
        handle: lt.torrent_handle,
        digest: Digest,
        metainfo: bytes,
        download: Download | None,  # None when seeding a stored blob
        now: float,
        super_seeding: bool = False,
    ) -> None:
        self.handle = handle
        self.digest = digest
        self.metainfo = metainfo
        self.download = download
        self.added = now  # when it joined the session
        self.last_active = now  # when it last had peers (or was asked for)
        self.super_seeding = super_seeding  # BEP 16 mode is on for this torrent right now
        self.super_seed_toggles = 0  # how often dynamic super-seeding switched (tests, logs)

    def touch(self, now: float) -> None:
        """It has peers, or someone asked for it: not idle."""
        self.last_active = now

    def set_super_seeding(self, wanted: bool, upload_slots: int) -> None:
        """Switch BEP 16 super-seeding on or off, with the upload slots for that mode."""
        if wanted:
            self.handle.set_flags(lt.torrent_flags.super_seeding)
        else:
            self.handle.unset_flags(lt.torrent_flags.super_seeding)
            # libtorrent 2.1 sends the full bitfield on leaving super-seed mode only to
            # peers it has offered a piece, and its first offer to a new connection is
            # lost (sent during the handshake), so a peer may know of nothing. A pause
            # drops the connections; on resume they are made again, with every piece.
            self.handle.pause()
            self.handle.resume()
        self.handle.set_max_uploads(upload_slots)
        self.super_seeding = wanted
        self.super_seed_toggles += 1


class TorrentTable:
    """Torrents by hex infohash, and the removals libtorrent has yet to confirm."""

    def __init__(self, clock: Clock, removal_begun: Callable[[], None]) -> None:
        """``removal_begun`` is called as each removal begins (the pump hurries: a
        publishing download waits for the removal's alert)."""
        self.session: lt.session | None = None
        self._clock = clock
        self._removal_begun = removal_begun
        self._torrents: dict[str, Torrent] = {}
        # Infohash by torrent name: every Krill torrent is named after its blob's hex
        # digest (``check_metainfo``), and an alert carries the name as a plain string
        # (``alert.torrent_name``, ~3 us) where the infohash takes a handle, its hashes
        # and a hex conversion (~16 us): a piece alert per piece, so per byte.
        self._names: dict[str, str] = {}
        self._removals: dict[str, asyncio.Future[None]] = {}
        # The torrent with this infohash, if any: the dict's own ``get`` (no Python
        # frame), since every piece alert and every fed piece looks its torrent up.
        self.get: Callable[[str], Torrent | None] = self._torrents.get
        # The infohash of the torrent with this name (a blob's hex digest), if any.
        self.info_hash_named: Callable[[str], str | None] = self._names.get

    def __len__(self) -> int:
        return len(self._torrents)

    def __iter__(self) -> Iterator[Torrent]:
        return iter(self._torrents.values())

    def __contains__(self, info_hash: str) -> bool:
        return info_hash in self._torrents

    def items(self) -> list[tuple[str, Torrent]]:
        """A snapshot: removals may begin while the caller walks it."""
        return list(self._torrents.items())

    def add(self, info_hash: str, torrent: Torrent) -> None:
        self._torrents[info_hash] = torrent
        self._names[torrent.digest.hex] = info_hash

    def seeded(self, digest: Digest) -> Torrent | None:
        """The torrent seeding ``digest`` from the store, if any."""
        for torrent in self._torrents.values():
            if torrent.digest == digest and torrent.download is None:
                return torrent
        return None

    @property
    def removing(self) -> bool:
        """A removal is under way (someone may be waiting for its alert)."""
        return bool(self._removals)

    def removal_of(self, info_hash: str) -> asyncio.Future[None] | None:
        """The pending removal of ``info_hash``, if one is under way."""
        removing = self._removals.get(info_hash)
        return removing if removing is not None and not removing.done() else None

    def removed(self, info_hash: str) -> None:
        """libtorrent confirmed a removal (``torrent_removed_alert``)."""
        future = self._removals.get(info_hash)
        if future is not None and not future.done():
            future.set_result(None)

    async def remove(self, info_hash: str) -> None:
        await self.remove_confirmed(info_hash)

    async def remove_confirmed(self, info_hash: str) -> bool:
        """Remove a torrent; True once libtorrent confirmed it (its files are closed)."""
        future = self.begin_removal(info_hash)
        if future is None:
            return False
        return await self._confirmed(info_hash, future)

    def begin_removal(self, info_hash: str) -> asyncio.Future[None] | None:
        """Take the torrent out of the table and ask libtorrent to drop it, at once.

        Synchronous, so nobody can find (and rely on) a torrent that is about to go.
        """
        torrent = self._torrents.pop(info_hash, None)
        if torrent is not None and self._names.get(torrent.digest.hex) == info_hash:
            del self._names[torrent.digest.hex]
        if torrent is None or self.session is None:
            return None
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._removals[info_hash] = future
        self.session.remove_torrent(torrent.handle)
        self._removal_begun()
        return future

    async def await_removal(self, info_hash: str, future: asyncio.Future[None]) -> None:
        """Wait (at most 10 s) until libtorrent confirms the removal."""
        await self._confirmed(info_hash, future)

    async def _confirmed(self, info_hash: str, future: asyncio.Future[None]) -> bool:
        """``await_removal``; False if libtorrent did not confirm in time."""
        try:
            async with timeout(self._clock, _REMOVAL_TIMEOUT):
                await asyncio.shield(future)
            return True
        except TimeoutError:
            log.warning("swarm.remove_timeout info_hash=%s", info_hash)
            return False
        finally:
            if self._removals.get(info_hash) is future:
                del self._removals[info_hash]

    async def wait_removed(self, info_hash: str) -> None:
        """libtorrent refuses to add a torrent it is still removing: wait for that first."""
        removing = self.removal_of(info_hash)
        if removing is not None:
            with contextlib.suppress(TimeoutError):
                async with timeout(self._clock, _REMOVAL_TIMEOUT):
                    await asyncio.shield(removing)

    def drop_all(self) -> None:
        """The engine is stopping: ask libtorrent to drop every torrent, without waiting."""
        if self.session is not None:
            for torrent in self._torrents.values():
                # A handle libtorrent has already let go of (its removal finished) raises
                # "invalid torrent handle"; the rest must still be dropped.
                with contextlib.suppress(RuntimeError):
                    self.session.remove_torrent(torrent.handle)
        self._torrents.clear()
        self._names.clear()


class TorrentLink:
    """A download's line back to its engine (``DownloadControl``): deadlines go to its
    torrent's handle while it is in the table, a cancellation to the engine."""

    def __init__(
        self,
        torrents: TorrentTable,
        info_hash: str,
        cancel: Callable[[Download, str], None],
    ) -> None:
        self._torrents = torrents
        self._info_hash = info_hash
        self._cancel = cancel

    def set_deadlines(self, deadlines: list[tuple[int, int]]) -> bool:
        torrent = self._torrents.get(self._info_hash)
        if torrent is None:
            return False
        for index, milliseconds in deadlines:
            torrent.handle.set_piece_deadline(index, milliseconds)
        return True

    def cancelled(self, download: Download) -> None:
        self._cancel(download, self._info_hash)


def torrent_info(metainfo: bytes, digest: Digest) -> tuple[str, lt.torrent_info]:
    """The infohash and libtorrent's view of ``metainfo``, which must describe ``digest``."""
    try:
        check_metainfo(metainfo, digest)
        ti = lt.torrent_info(metainfo)  # libtorrent parses the bencoded bytes itself
    except (MetainfoError, RuntimeError) as exc:
        raise DownloadFailed(f"unusable metainfo for {digest}: {exc}") from None
    return str(ti.info_hashes().v1), ti
