"""The swarm as a ``BlobSource``: metainfo from the tracker (or origin), bytes from peers.

``krill.swarm.SwarmEngine.download`` already returns an object with the
``Transfer`` shape (``available`` counts piece-hash-verified bytes from 0), so
this module only finds the metainfo and maps the engine's failures onto
``SourceUnavailable`` / ``TransferFailed``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp

from krill import bencode
from krill.agent.sources import SourceUnavailable, TransferFailed
from krill.digests import Digest
from krill.metainfo import MetainfoError
from krill.originclient import OriginClient

if TYPE_CHECKING:  # libtorrent is loaded only once the node starts an engine
    from krill.swarm import Download, SwarmEngine

__all__ = ["SwarmSource", "SwarmTransfer"]

log = logging.getLogger(__name__)

# A verified piece's bytes reach the file soon after libtorrent reports it; how
# many times a read re-checks before it gives up (with a growing pause).
PIECE_READ_ATTEMPTS = 60


class SwarmTransfer:
    """Adapts a ``krill.swarm.Download``: failures read as ``TransferFailed``, reads re-verified.

    Like the HTTP transfer, it holds back the blob's last byte until the engine
    has checked the whole file's sha256, so a client can never receive a
    complete body that then fails verification.

    libtorrent reports a piece as passed when its hash checks out, which can be
    before the piece's bytes have reached the file (libtorrent 2 hashes from its
    write buffer). So ``read`` checks each piece's SHA-1 against the metainfo as
    it reads it from the file, and waits briefly for the write when it does not
    match yet: a client never gets a byte that has not been verified on disk.
    """

    def __init__(
        self, download: Download, failure: type[BaseException], metainfo: bytes
    ) -> None:
        self._download = download
        self._failure = failure
        self.size: int = download.size
        info = bencode.decode(metainfo)[b"info"]
        self._piece_length: int = info[b"piece length"]
        self._hashes: bytes = info[b"pieces"]
        self._verified: set[int] = set()

    @property
    def partial_path(self) -> Path:
        return Path(self._download.partial_path)

    @property
    def available(self) -> int:
        """Verified bytes, less the last one until the whole file's sha256 has matched."""
        available = int(self._download.available)
        return available if self._download.done else min(available, self.size - 1)

    async def wait_available(self, offset: int) -> int:
        try:
            if offset >= self.size - 1:  # the last byte waits for the full-file check
                if self.size:
                    await self._download.wait_available(offset)  # keeps the piece prioritised
                await self._download.wait_done()
                return self.size
            await self._download.wait_available(offset)
            return self.available
        except self._failure as exc:
            raise TransferFailed(f"swarm download failed: {exc}") from exc

    async def wait_done(self) -> Path:
        try:
            return Path(await self._download.wait_done())
        except self._failure as exc:
            raise TransferFailed(f"swarm download failed: {exc}") from exc

    def cancel(self) -> None:
        self._download.cancel()

    async def read(self, fd: int, offset: int, limit: int) -> bytes:
        """Bytes from ``offset`` (before ``limit``, within ``available``), each piece verified.

        A piece is hashed once (in a worker thread: up to 16 MiB of SHA-1); reads
        inside an already verified piece read only the range asked for.
        """
        if self._download.done:  # the whole file passed sha256 before it was published
            return await asyncio.to_thread(os.pread, fd, limit - offset, offset)
        piece = offset // self._piece_length
        start = piece * self._piece_length
        end = min(self.size, start + self._piece_length)
        if piece in self._verified:
            return await asyncio.to_thread(os.pread, fd, min(limit, end) - offset, offset)
        for attempt in range(PIECE_READ_ATTEMPTS):
            data = await asyncio.to_thread(self._read_piece_if_on_disk, fd, piece, start, end)
            if data is not None:
                self._verified.add(piece)
                return data[offset - start : min(limit, end) - start]
            if self._download.done:
                return await asyncio.to_thread(os.pread, fd, limit - offset, offset)
            log.debug(
                "swarm_read.piece_not_on_disk digest=%s piece=%d", self._download.digest, piece
            )
            await asyncio.sleep(0.01 * (attempt + 1))
        raise TransferFailed(f"piece {piece} of {self._download.digest} never reached the disk")

    def _read_piece_if_on_disk(self, fd: int, piece: int, start: int, end: int) -> bytes | None:
        """The piece's bytes if they match its SHA-1 already, else None. Blocking."""
        data = os.pread(fd, end - start, start)
        expected = self._hashes[20 * piece : 20 * piece + 20]
        return data if hashlib.sha1(data).digest() == expected else None


class SwarmSource:
    """Starts swarm downloads through one ``SwarmEngine``."""

    name = "swarm"

    def __init__(self, engine: SwarmEngine, metainfo_servers: list[OriginClient]) -> None:
        from krill.swarm import DownloadFailed

        self._engine = engine
        self._servers = [s for s in metainfo_servers if s.configured]
        self._failure = DownloadFailed

    async def start(self, digest: Digest, repository: str | None) -> SwarmTransfer:
        metainfo = await self.metainfo(digest)
        try:
            download = await self._engine.download(digest, metainfo)
        except self._failure as exc:
            raise SourceUnavailable(f"swarm cannot start {digest}: {exc}") from exc
        return SwarmTransfer(download, self._failure, metainfo)

    async def metainfo(self, digest: Digest) -> bytes:
        """The blob's torrent, from the first server (tracker, then origin) that has it."""
        errors = []
        for server in self._servers:
            try:
                return await server.metainfo(digest)
            except (MetainfoError, aiohttp.ClientError, OSError) as exc:
                errors.append(str(exc))
        raise SourceUnavailable("no metainfo: " + "; ".join(errors or ["no tracker or origin"]))
