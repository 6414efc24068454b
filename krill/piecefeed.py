"""A node's HTTP line to the origin: claim pieces nobody else was given, fetch them.

The origin side is ``origin.piececlaims`` (it says why). This is the client
the swarm engine uses: ``claim`` asks for the next chunk of pieces, and
``pieces`` streams a run of pieces with one ``Range`` request, piece by
piece, so each can be handed to libtorrent (which checks its hash and
offers it to the other nodes) as soon as it has arrived.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

import aiohttp

from krill.digests import Digest
from krill.endpoints import BLOBS, CLAIMS
from krill.metainfo import piece_count

# Per request, so any session will do (the agent passes its own): connecting and
# each read must be quick on a cluster network; a whole chunk may take long.
_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=5, sock_read=10)


class PieceFeedError(Exception):
    """The origin did not answer a claim or a piece request as it should.

    ``status`` is the HTTP status when it answered one it should not have (a
    404, say): the origin is up, unlike when it could not be reached.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class OriginPieceFeed:
    """Claims and piece ranges of one blob from one origin."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        origin_url: str,
        digest: Digest,
        size: int,
        piece_length: int,
    ) -> None:
        self._http = http
        self._origin = origin_url
        self.digest = digest
        self.size = size
        self.piece_length = piece_length
        self.num_pieces = piece_count(size, piece_length)

    async def claim(self) -> range | None:
        """The next pieces the origin gives this node, or None once all are handed out."""
        url = CLAIMS.url(self._origin, self.digest)
        try:
            # The torrent's piece length: an origin cuts its claims in it (an old torrent's too).
            params = {"piece_length": str(self.piece_length)}
            async with self._http.post(url, params=params, timeout=_TIMEOUT) as response:
                if response.status == 204:
                    return None
                if response.status != 200:
                    raise PieceFeedError(
                        f"claim for {self.digest} answered {response.status}", response.status
                    )
                answer = await response.json()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise PieceFeedError(f"claim for {self.digest} failed: {exc}") from exc
        return self._checked_claim(answer)

    def _checked_claim(self, answer: object) -> range:
        if not isinstance(answer, dict):
            raise PieceFeedError(f"claim for {self.digest}: not a JSON object")
        first, end, length = answer.get("first"), answer.get("end"), answer.get("piece_length")
        if length != self.piece_length:
            raise PieceFeedError(
                f"claim for {self.digest}: piece length {length} is not the torrent's "
                f"{self.piece_length} (origin and tracker disagree on the blob)"
            )
        if not (isinstance(first, int) and isinstance(end, int)):
            raise PieceFeedError(f"claim for {self.digest}: first/end are not integers")
        if not 0 <= first < end <= self.num_pieces:
            raise PieceFeedError(f"claim for {self.digest}: pieces {first}..{end} out of range")
        return range(first, end)

    async def pieces(self, run: range) -> AsyncIterator[tuple[int, bytes]]:
        """Pieces ``run.start .. run.stop-1`` (consecutive), each as soon as it has arrived."""
        start = run.start * self.piece_length
        stop = min(self.size, run.stop * self.piece_length)
        url = BLOBS.url(self._origin, self.digest)
        headers = {"Range": f"bytes={start}-{stop - 1}"}
        try:
            async with self._http.get(url, headers=headers, timeout=_TIMEOUT) as response:
                if response.status != 206:
                    raise PieceFeedError(
                        f"pieces of {self.digest} answered {response.status}, not 206",
                        response.status,
                    )
                expected = f"bytes {start}-{stop - 1}/{self.size}"
                if response.headers.get("Content-Range") != expected:
                    raise PieceFeedError(
                        f"pieces of {self.digest}: Content-Range "
                        f"{response.headers.get('Content-Range')!r}, expected {expected!r}"
                    )
                for index in run:
                    length = min(self.piece_length, self.size - index * self.piece_length)
                    yield index, await response.content.readexactly(length)
        except (aiohttp.ClientError, TimeoutError, EOFError) as exc:  # IncompleteReadError is EOF
            raise PieceFeedError(f"pieces of {self.digest} failed: {exc}") from exc


def consecutive_runs(indexes: Iterable[int]) -> list[range]:
    """Sorted piece indexes as runs of consecutive ones: one Range request each."""
    runs: list[range] = []
    for index in sorted(indexes):
        if runs and runs[-1].stop == index:
            runs[-1] = range(runs[-1].start, index + 1)
        else:
            runs.append(range(index, index + 1))
    return runs
