"""The swarm as a ``BlobSource``: metainfo from the tracker (or origin), bytes from peers.

``krill.swarm.SwarmEngine.download`` already returns an object with the
``Transfer`` shape (``available`` counts piece-hash-verified bytes from 0), so
this module only finds the metainfo and maps the engine's failures onto
``SourceUnavailable`` / ``TransferFailed``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import aiohttp

from agent.sources import SourceUnavailable, TransferFailed
from krill.digests import Digest

log = logging.getLogger(__name__)


class SwarmTransfer:
    """Adapts a ``krill.swarm.Download`` so its failures read as ``TransferFailed``."""

    def __init__(self, download: Any, failure: type[BaseException]) -> None:
        self._download = download
        self._failure = failure
        self.size: int = download.size

    @property
    def partial_path(self) -> Path:
        return Path(self._download.partial_path)

    @property
    def available(self) -> int:
        return int(self._download.available)

    async def wait_available(self, offset: int) -> int:
        try:
            return int(await self._download.wait_available(offset))
        except self._failure as exc:
            raise TransferFailed(f"swarm download failed: {exc}") from exc

    async def wait_done(self) -> Path:
        try:
            return Path(await self._download.wait_done())
        except self._failure as exc:
            raise TransferFailed(f"swarm download failed: {exc}") from exc

    def cancel(self) -> None:
        self._download.cancel()


class SwarmSource:
    """Starts swarm downloads through one ``SwarmEngine``."""

    name = "swarm"

    def __init__(
        self, engine: Any, session: aiohttp.ClientSession, metainfo_servers: list[str]
    ) -> None:
        from krill import swarm

        self._engine = engine
        self._session = session
        self._servers = [s for s in metainfo_servers if s]
        self._failure = swarm.DownloadFailed

    async def start(self, digest: Digest, repository: str | None) -> SwarmTransfer:
        metainfo = await self.metainfo(digest)
        try:
            download = await self._engine.download(digest, metainfo)
        except self._failure as exc:
            raise SourceUnavailable(f"swarm cannot start {digest}: {exc}") from exc
        return SwarmTransfer(download, self._failure)

    async def metainfo(self, digest: Digest) -> bytes:
        """The blob's torrent, from the first server (tracker, then origin) that has it."""
        from krill.metainfo import MetainfoError, fetch_metainfo

        errors = []
        for server in self._servers:
            try:
                return await fetch_metainfo(self._session, server, digest)
            except (MetainfoError, aiohttp.ClientError, OSError) as exc:
                errors.append(str(exc))
        raise SourceUnavailable("no metainfo: " + "; ".join(errors or ["no tracker or origin"]))

    def stats(self) -> Any:
        return self._engine.stats()
